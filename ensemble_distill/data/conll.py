"""CoNLL column files: one token a line, its tag in a column, blank lines between sentences.

    sentences = read_conll("eng.train", scheme="iob1")           # tags come back as IOB2
    labels = label_vocab(sentences)                               # ["O", "B-LOC", "I-LOC", ...]
    train = tag_corpus("eng.train", sentences, labels)
    test = tag_corpus("eng.testb", read_conll("eng.testb"), labels)   # unseen tags: error by default

Layouts met in this project (all work with the defaults token_col=0, tag_col=-1, sep=None):
CoNLL-2003 `token POS chunk NER`, space-separated, IOB1; WNUT-17 `token tag`, TAB-separated, IOB2;
Europarl German `token lemma POS chunk NER`, TAB-separated, IOB1.
`-DOCSTART-` lines are document markers, not sentences. Every problem is a UserError naming file:line.
"""

import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError, located
from .tags import OUTSIDE, TagError, iob1_to_iob2, iob2_labels, split_tag, validate_iob2

SCHEMES = ("iob1", "iob2")
UNKNOWN_TAG_POLICIES = ("error", "O")
DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class Sentence:
    """One sentence: its tokens, their IOB2 tags, and the file line of its first token (for messages)."""

    tokens: list[str]
    tags: list[str]
    line: int


@dataclass(frozen=True)
class TaggedCorpus:
    """The sentences of one file with their tags as ids into a label vocabulary shared with training."""

    path: Path
    sentences: list[Sentence]
    labels: list[str]
    tag_ids: list[np.ndarray]


def read_conll(path, token_col: int = 0, tag_col: int = -1, scheme: str = "iob1", sep: str | None = None) -> list[Sentence]:
    """Read a CoNLL column file into sentences with IOB2 tags.

    sep=None splits on TABs when the first line holds one (tokens may then contain spaces), else on runs of
    spaces. Every token line must have as many columns as the file's first one. IOB1 tags are converted to IOB2;
    IOB2 tags are checked.
    """
    path = Path(path)
    if scheme not in SCHEMES:
        raise UserError(f"scheme: {scheme!r} is not one of {', '.join(SCHEMES)}")
    lines = _decoded_lines(path)
    split_columns = _column_splitter(lines, sep)
    sentences = [_checked_sentence(path, tokens, tags, first_line, scheme)
                 for first_line, tokens, tags in _raw_sentences(path, lines, split_columns, token_col, tag_col)]
    if not sentences:
        raise located(path, None, "no sentences (the file is empty or holds only blank and -DOCSTART- lines)")
    return sentences


def label_vocab(train_sentences: list[Sentence]) -> list[str]:
    """The label vocabulary of a training set: "O", then B-/I- of every entity type seen, types sorted.

    Both B-X and I-X are included once type X is seen, so the vocabulary is the same whatever span lengths the
    training data happens to contain.
    """
    types = {split_tag(tag)[1] for sentence in train_sentences for tag in sentence.tags} - {""}
    return iob2_labels(types)


def tag_corpus(path, sentences: list[Sentence], labels: list[str], unknown_tag: str = "error") -> TaggedCorpus:
    """Map tags to ids in `labels` (the training vocabulary).

    A tag never seen in training is an error by default, naming the first such line: a model cannot predict it,
    and silently scoring it as O would understate errors on the test set. unknown_tag="O" maps such tags to O
    instead, with one warning that counts them per tag.
    """
    if unknown_tag not in UNKNOWN_TAG_POLICIES:
        raise UserError(f"unknown_tag: {unknown_tag!r} is not one of {', '.join(UNKNOWN_TAG_POLICIES)}")
    index = {label: i for i, label in enumerate(labels)}
    unseen = Counter()
    tag_ids = []
    for sentence in sentences:
        for position, tag in enumerate(sentence.tags):
            if tag not in index:
                if unknown_tag == "error":
                    raise located(path, sentence.line + position,
                                  f"tag {tag!r} never occurs in the training data (labels: {' '.join(labels)})")
                unseen[tag] += 1
        tag_ids.append(np.array([index.get(tag, index[OUTSIDE]) for tag in sentence.tags], dtype=np.int64))
    if unseen:
        counts = ", ".join(f"{tag} x{count}" for tag, count in sorted(unseen.items()))
        warnings.warn(f"{path}: {sum(unseen.values())} tags never seen in training were mapped to O: {counts}")
    return TaggedCorpus(Path(path), sentences, list(labels), tag_ids)


def _decoded_lines(path: Path) -> list[str]:
    """The file's lines as UTF-8 text. Split on "\\n" only: str.splitlines would also break inside tokens
    that contain characters such as U+2028 or U+0085."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise located(path, None, "no such file") from None
    except OSError as error:
        raise located(path, None, f"cannot read: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise located(path, line, f"not UTF-8: byte {data[error.start]:#04x} cannot be decoded") from None
    lines = text.removeprefix("\ufeff").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _column_splitter(lines: list[str], sep: str | None):
    if sep is None:
        first = next((line for line in lines if line.strip(" \t\r")), "")
        sep = "\t" if "\t" in first else None
    if sep is None:
        spaces = re.compile(" +")
        return lambda line: spaces.split(line.strip(" "))
    return lambda line: line.split(sep)


def _raw_sentences(path, lines, split_columns, token_col, tag_col):
    """Yield (first line number, tokens, tags) per sentence; blank and -DOCSTART- lines end a sentence."""
    tokens, tags, first_line, n_columns = [], [], 0, None
    for line_number, line in enumerate(lines, start=1):
        if not line.strip(" \t\r") or line.startswith(DOCSTART):
            if tokens:
                yield first_line, tokens, tags
            tokens, tags = [], []
            continue
        columns = split_columns(line.rstrip("\r"))
        if n_columns is None:
            n_columns = len(columns)
            _check_column_indices(path, line_number, n_columns, token_col, tag_col)
        if len(columns) != n_columns:
            raise located(path, line_number,
                          f"{len(columns)} columns, but the file's first token line has {n_columns}")
        if not tokens:
            first_line = line_number
        tokens.append(columns[token_col])
        tags.append(columns[tag_col].strip())
    if tokens:
        yield first_line, tokens, tags


def _check_column_indices(path, line_number, n_columns, token_col, tag_col):
    for name, col in (("token_col", token_col), ("tag_col", tag_col)):
        if not -n_columns <= col < n_columns:
            raise located(path, line_number, f"{name}={col} is outside the line's {n_columns} columns")


def _checked_sentence(path, tokens, tags, first_line, scheme) -> Sentence:
    try:
        if scheme == "iob1":
            tags = iob1_to_iob2(tags)
        else:
            validate_iob2(tags)
    except TagError as error:
        raise located(path, first_line + error.index, str(error)) from None
    return Sentence(tokens, tags, first_line)
