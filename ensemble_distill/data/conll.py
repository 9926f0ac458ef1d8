"""CoNLL column files: one token a line, its tag in a column, blank lines between sentences.

    sentences = read_conll("eng.train", scheme="iob1")           # tags come back as IOB2
    labels = label_vocab(sentences)                               # ["O", "B-LOC", "I-LOC", ...]
    train = tag_corpus("eng.train", sentences, labels)
    test = tag_corpus("eng.testb", read_conll("eng.testb"), labels)   # unseen tags: error by default

Layouts met in this project (all work with the defaults token_col=0, tag_col=-1, sep=None):
CoNLL-2003 `token POS chunk NER`, space-separated, IOB1; WNUT-17 `token tag`, TAB-separated, IOB2;
Europarl German `token lemma POS chunk NER`, TAB-separated, IOB1.
`-DOCSTART-` lines are document markers, not sentences. Every problem is a UserError naming file:line.

Dialects, each with a setting (config `data.*`, `read_conll` keywords): other encodings (`encoding = "latin-1"`),
comment lines (`comment_prefix`, "#" by default, safe for `#` tokens: see `read_conll`), a language prefix on
every token (`token_prefix = "[a-z]+:"` for WikiANN's `en:John`), stray I- tags in IOB2 files (`scheme = "iob1"`
reads them, see `tags.py`). Line breaks and byte-order marks: `text.py`. Messages name each setting as the user
gave it (`SettingNames`): the config's `data.token_prefix`, or a command's `--token-prefix` (predict).
"""

import json
import re
import shlex
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError, located
from .tags import OUTSIDE, TagError, entity_types, iob1_to_iob2, iob2_labels, split_tag, validate_iob2
from .text import read_text_lines

SCHEMES = ("iob1", "iob2")
UNKNOWN_TAG_POLICIES = ("error", "O")
DOCSTART = "-DOCSTART-"
_SPACES = re.compile(" +")
_LANGUAGE_PREFIX = re.compile(r"[a-z]{2,3}(?:-[a-z]+)?:(?=.)")  # `en:`, `zh-yue:` before a non-empty token


@dataclass(frozen=True)
class SettingNames:
    """How messages name the reader's settings: as the config's `data.` keys (`flags` False), or as the flags of a
    command that takes them on its command line (predict's --token-prefix), so that an error names what the user
    typed."""

    flags: bool = False

    def __call__(self, key: str, value=None) -> str:
        """Setting `key` ("token_prefix"); with `value`, how to give it that value: `data.token_prefix = "en:"`
        (a TOML line) or `--token-prefix en:` (shell words)."""
        if self.flags:
            flag = "--" + key.replace("_", "-")
            return flag if value is None else f"{flag} {shlex.quote(str(value))}"
        return f"data.{key}" if value is None else f"data.{key} = {json.dumps(value)}"


CONFIG_KEYS, FLAGS = SettingNames(), SettingNames(flags=True)


@dataclass(frozen=True)
class Sentence:
    """One sentence: its tokens, their IOB2 tags, the file line of its first token, and (for messages) the tags as
    the file writes them when the scheme converted them (IOB1), else None: the same as `tags`."""

    tokens: list[str]
    tags: list[str]
    line: int
    written: list[str] | None = None

    def written_tag(self, position: int) -> str:
        """The tag at `position` as the file writes it."""
        return (self.written or self.tags)[position]


@dataclass(frozen=True)
class TaggedCorpus:
    """The sentences of one file with their tags as ids into a label vocabulary shared with training."""

    path: Path
    sentences: list[Sentence]
    labels: list[str]
    tag_ids: list[np.ndarray]


def read_conll(path, token_col: int = 0, tag_col: int = -1, scheme: str = "iob1", sep: str | None = None, *,
               encoding: str = "utf-8", comment_prefix: str = "#", token_prefix: str = "",
               lines: list[str] | None = None, names: SettingNames = CONFIG_KEYS) -> list[Sentence]:
    """Read a CoNLL column file into sentences with IOB2 tags.

    sep=None splits on TABs when the first token line holds one (tokens may then contain spaces), else on runs
    of spaces; whitespace at the end of a line (a trailing TAB: an empty last column) is not a column. Every
    token line must have as many columns as the file's first one. IOB1 tags are converted to IOB2; IOB2 tags
    are checked. Lines are read by `text.read_text_lines` (LF, CRLF or CR breaks; byte-order marks dropped) in
    `encoding`.

    comment_prefix ("" for none): a line that starts with it, before a sentence's first token, and is not a token
    line (the file's column count and a tag in the tag column) is a comment and skipped. So `#<TAB>O` is the token
    "#", while `# sent_id = 1` (CoNLL-U) and `#<TAB>http://... [date]` (GermEval) are comments. Inside a sentence
    every line is a token line.
    token_prefix: a regular expression every token must start with, removed from it: "[a-z]+:" reads
    `en:John` as "John" (WikiANN/PAN-X). Without it, a file whose every token starts with the same `xx:` gets a
    warning.
    lines: the file's lines when already read (`text.read_text_lines`; standard input can be read only once).
    names: how messages name these settings (SettingNames: the config's keys, or predict's flags).
    """
    path = Path(path)
    if scheme not in SCHEMES:
        raise UserError(f"{names('scheme')}: {scheme!r} is not one of {', '.join(SCHEMES)}")
    prefix = _token_prefix_pattern(token_prefix, names)
    if lines is None:
        lines = read_text_lines(path, encoding, setting=names("encoding"))
    layout = _Layout.of(path, lines, sep, token_col, tag_col, comment_prefix, names)
    sentences = [_checked_sentence(path, tokens, tags, first_line, scheme, prefix, names)
                 for first_line, tokens, tags in _raw_sentences(path, lines, layout)]
    if not sentences:
        raise located(path, None, "no sentences (the file is empty or holds only blank, comment and -DOCSTART- lines)")
    if prefix is None:
        _warn_if_every_token_is_prefixed(path, sentences, names)
    return sentences


def label_vocab(train_sentences: list[Sentence]) -> list[str]:
    """The label vocabulary of a training set: "O", then B-/I- of every entity type seen, types sorted.

    Both B-X and I-X are included once type X is seen, so the vocabulary is the same whatever span lengths the
    training data happens to contain.
    """
    types = {split_tag(tag)[1] for sentence in train_sentences for tag in sentence.tags} - {""}
    return iob2_labels(types)


def tag_corpus(path, sentences: list[Sentence], labels: list[str], unknown_tag: str = "error",
               names: SettingNames = CONFIG_KEYS, training: str = "the training data") -> TaggedCorpus:
    """Map tags to ids in `labels` (the training vocabulary).

    A tag never seen in training (`training` says what the labels were read from) is an error by default, naming
    the first such line, the tag as the file writes it, and how to map it (the config's `data.unknown_tag = "O"`,
    or predict's `--unknown-tag O`: `names`): a model cannot predict it, and silently scoring it as O would
    understate errors on the test set.
    unknown_tag="O" maps such tags to O instead. One warning says when the file's entity types differ from the
    labels' (a type missing here, or tags mapped to O), with the entity count of each type.
    """
    if unknown_tag not in UNKNOWN_TAG_POLICIES:
        raise UserError(f"{names('unknown_tag')}: {unknown_tag!r} is not one of {', '.join(UNKNOWN_TAG_POLICIES)}")
    index = {label: i for i, label in enumerate(labels)}
    unseen = Counter()
    tag_ids = []
    for sentence in sentences:
        for position, tag in enumerate(sentence.tags):
            if tag not in index:
                written = sentence.written_tag(position)
                if unknown_tag == "error":
                    raise located(path, sentence.line + position,
                                  f"tag {written!r} never occurs in {training} (labels: {' '.join(labels)}); "
                                  f"{names('unknown_tag', 'O')} maps such tags to O, or, if this column is not "
                                  f"the gold tags, {names('tag_col')} picks the column that is")
                unseen[written] += 1
        tag_ids.append(np.array([index.get(tag, index[OUTSIDE]) for tag in sentence.tags], dtype=np.int64))
    _warn_if_types_differ(path, sentences, labels, unseen)
    return TaggedCorpus(Path(path), sentences, list(labels), tag_ids)


def _warn_if_types_differ(path, sentences: list[Sentence], labels: list[str], unseen: Counter) -> None:
    """One warning when the file's entity types are not the training labels' types: a type absent here (a corpus
    without MISC) scores differently from one the model can confuse, and unseen tags were mapped to O."""
    known = set(entity_types(labels))
    here = Counter(tag[2:] for sentence in sentences for tag in sentence.tags if tag.startswith("B-"))
    if set(here) == known:
        return
    problems = []
    if missing := sorted(known - set(here)):
        problems.append(f"no {', '.join(missing)} entities here")
    if unseen:
        counts = ", ".join(f"{tag} x{count}" for tag, count in sorted(unseen.items()))
        problems.append(f"{sum(unseen.values())} tags never seen in training were mapped to O: {counts}")
    per_type = ", ".join(f"{name} {here[name]}" for name in sorted(known | set(here)))
    warnings.warn(f"{path}: entity types differ from the training data's ({', '.join(sorted(known))}): "
                  f"{'; '.join(problems)}. Entities per type here: {per_type}")


@dataclass(frozen=True)
class _Layout:
    """How the file's token lines split into columns, fixed by its first token line."""

    sep: str | None  # None: runs of spaces
    n_columns: int
    first_line: int  # the line that fixed it
    token_col: int
    tag_col: int
    comment_prefix: str
    names: SettingNames

    @classmethod
    def of(cls, path, lines, sep, token_col, tag_col, comment_prefix, names) -> "_Layout | None":
        """From the first line that is neither blank, -DOCSTART- nor starting with the comment prefix (or, when
        every line starts with it, the first such line); None for a file without such lines."""
        first_line = _first_token_line(lines, comment_prefix)
        if first_line is None:
            return None
        first = lines[first_line - 1]
        if sep is None:
            sep = "\t" if "\t" in first.rstrip(" \t") else None
        n_columns = len(_split(first, sep))
        for name, col in (("token_col", token_col), ("tag_col", tag_col)):
            if not -n_columns <= col < n_columns:
                raise located(path, first_line, f"{names(name, col)} is outside the line's {n_columns} columns")
        return cls(sep, n_columns, first_line, token_col, tag_col, comment_prefix, names)

    def split(self, line: str) -> list[str]:
        return _split(line, self.sep)

    def is_comment(self, line: str, columns: list[str]) -> bool:
        """A line that starts with the comment prefix and does not read as a token line."""
        if not _starts_comment(line, self.comment_prefix):
            return False
        if len(columns) != self.n_columns:
            return True
        try:
            split_tag(columns[self.tag_col].strip())
        except TagError:
            return True
        return False


def _first_token_line(lines, comment_prefix) -> int | None:
    fallback = None
    for number, line in enumerate(lines, start=1):
        if _is_break(line):
            continue
        if not _starts_comment(line, comment_prefix):
            return number
        fallback = fallback or number
    return fallback


def _split(line: str, sep: str | None) -> list[str]:
    """A line's columns; trailing whitespace (a trailing TAB too) is not a column."""
    line = line.rstrip(" \t")
    return _SPACES.split(line.lstrip(" ")) if sep is None else line.split(sep)


def _is_break(line: str) -> bool:
    return not line.strip(" \t") or line.startswith(DOCSTART)


def _starts_comment(line: str, comment_prefix: str) -> bool:
    return bool(comment_prefix) and line.startswith(comment_prefix)


def _raw_sentences(path, lines, layout):
    """Yield (first line number, tokens, tags) per sentence; blank and -DOCSTART- lines end a sentence, comment
    lines before a sentence are skipped."""
    tokens, tags, first_line = [], [], 0
    for line_number, line in enumerate(lines, start=1):
        if _is_break(line):
            if tokens:
                yield first_line, tokens, tags
            tokens, tags = [], []
            continue
        columns = layout.split(line)
        if not tokens and layout.is_comment(line, columns):
            continue
        if len(columns) != layout.n_columns:
            raise located(path, line_number, f"{len(columns)} columns, but the file's first token line (line "
                                             f"{layout.first_line}) has {layout.n_columns}"
                                             + _comment_hint(line, lines, layout))
        if not tokens:
            first_line = line_number
        tokens.append(columns[layout.token_col])
        tags.append(columns[layout.tag_col].strip())
    if tokens:
        yield first_line, tokens, tags


def _comment_hint(line, lines, layout) -> str:
    """Why a column count may differ: a comment line taken for the first token line, or a comment-like line
    inside a sentence."""
    if not layout.comment_prefix and lines[layout.first_line - 1].startswith("#"):
        return (f"; line {layout.first_line} starts with '#': if it is a comment line, "
                f"{layout.names('comment_prefix', '#')} skips comments")
    if _starts_comment(line, layout.comment_prefix):
        return (f" (a line starting with {layout.comment_prefix!r} is a comment only before a sentence's first "
                "token and when it does not read as a token line)")
    return ""


def _token_prefix_pattern(token_prefix: str, names: SettingNames) -> "re.Pattern | None":
    if not token_prefix:
        return None
    try:
        return re.compile(token_prefix)
    except re.error as error:
        raise UserError(f"{names('token_prefix')}: {token_prefix!r} is not a regular expression: {error}") from None


def _warn_if_every_token_is_prefixed(path, sentences, names: SettingNames) -> None:
    """A language prefix such as `en:` on every token (WikiANN) reaches the encoder as part of every word and
    costs most of the F1; warn, naming the setting that removes it."""
    match = _LANGUAGE_PREFIX.match(sentences[0].tokens[0])
    if match and all(token.startswith(match[0]) for sentence in sentences for token in sentence.tokens):
        warnings.warn(f"{path}: every token starts with {match[0]!r} (a language prefix?); the encoder will read it "
                      f"as part of each word: {names('token_prefix', match[0])} removes it")


def _checked_sentence(path, tokens, tags, first_line, scheme, prefix, names) -> Sentence:
    if prefix is not None:
        tokens = _without_prefix(path, tokens, first_line, prefix, names)
    written = tags
    try:
        if scheme == "iob1":
            tags = iob1_to_iob2(tags)
        else:
            validate_iob2(tags, f"{names('scheme', 'iob1')} reads it")
    except TagError as error:
        # a word where a tag should be is most often the wrong column, not another tag scheme
        hint = f"; if the tags are in another column, set {names('tag_col')}" if "unknown tag" in str(error) else ""
        raise located(path, first_line + error.index, f"{error}{hint}") from None
    return Sentence(tokens, tags, first_line, written if written != tags else None)


def _without_prefix(path, tokens, first_line, prefix, names: SettingNames) -> list[str]:
    stripped = []
    for index, token in enumerate(tokens):
        match = prefix.match(token)
        if not match:
            raise located(path, first_line + index,
                          f"token {token!r} does not start with {names('token_prefix')} {prefix.pattern!r}")
        stripped.append(token[match.end():])
    return stripped
