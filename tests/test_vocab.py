import random

import pytest

from ensemble_distill.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SubwordVocab, joint_sentences, train_vocab
from ensemble_distill.errors import UserError

GERMAN = "ein zwei Hund Hunde Mann Männer läuft laufen über die Straße spielt im Park".split()
ENGLISH = "a two dog dogs man men runs run across the street plays in park".split()


def synthetic_pairs(n=300, seed=0):
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = rng.sample(range(len(GERMAN)), rng.randint(3, 7))
        pairs.append((" ".join(GERMAN[i] for i in words) + ".", " ".join(ENGLISH[i] for i in words) + "."))
    return pairs


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "joint.model"
    return train_vocab(joint_sentences(synthetic_pairs()), path, vocab_size=120)


def test_joint_sentences_interleaves_both_sides():
    assert list(joint_sentences([("a", "b"), ("c", "d")])) == ["a", "b", "c", "d"]


def test_trained_vocab_has_the_requested_size_and_fixed_special_ids(vocab):
    assert len(vocab) == 120
    pieces = [vocab.processor.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)]
    assert pieces == ["<pad>", "<unk>", "<s>", "</s>"]


def test_encode_decode_round_trips_text_of_both_languages(vocab):
    texts = ["zwei Männer laufen über die Straße.", "a dog plays in the park."]
    ids = vocab.encode(texts)
    assert all(UNK_ID not in seq and BOS_ID not in seq and EOS_ID not in seq for seq in ids)
    assert vocab.decode(ids) == texts
    # Frequent words are single pieces; both languages share one id space.
    assert "▁Straße" in vocab.pieces("die Straße") and "▁park" in vocab.pieces("the park")


def test_decode_drops_special_ids(vocab):
    [ids] = vocab.encode(["the dog runs"])
    assert vocab.decode([[BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]]) == ["the dog runs"]


def test_unseen_characters_become_unk(vocab):
    assert UNK_ID in vocab.encode(["dog ψ"])[0]


def test_model_file_is_written_atomically_and_deterministically(tmp_path, vocab):
    again = train_vocab(joint_sentences(synthetic_pairs()), tmp_path / "again.model", vocab_size=120)
    assert [p.name for p in tmp_path.iterdir()] == ["again.model"]  # no temporary file left beside it
    assert again.path.read_bytes() == vocab.path.read_bytes()
    assert SubwordVocab(again.path).encode(["men run"]) == vocab.encode(["men run"])


def test_impossible_vocab_size_and_bad_model_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"^vocab_size = 5000: more pieces than the training text allows; set "
                                        r"vocab_size to at most \d+$"):
        train_vocab(["ein Hund", "a dog"], tmp_path / "big.model", vocab_size=5000)
    assert not (tmp_path / "big.model").exists()
    not_a_model = tmp_path / "x.model"
    not_a_model.write_text("hello")
    with pytest.raises(UserError, match=rf"^{not_a_model}: not a sentencepiece model"):
        SubwordVocab(not_a_model)
