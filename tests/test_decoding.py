"""The decoding rule (decoding.py): "iob2" is the most probable valid IOB2 path, checked by hand and against every
path enumerated; its labels score the same under conlleval and strict IOB2; the command-line --decode of
evaluate, compare and predict."""

import itertools
import json

import numpy as np
import pytest
from seqeval.metrics import f1_score
from seqeval.scheme import IOB2

from ensemble_distill.cli import main
from ensemble_distill.decoding import decode, iob2_labels
from ensemble_distill.errors import UserError
from ensemble_distill.predictions import Predictions, load_predictions, predicted_labels, save_predictions

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def valid(path: list[str]) -> bool:
    previous = "O"
    for tag in path:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def best_valid_path_by_enumeration(probs: np.ndarray) -> list[int]:
    paths = (p for p in itertools.product(range(len(LABELS)), repeat=len(probs)) if valid([LABELS[i] for i in p]))
    return list(max(paths, key=lambda p: np.prod(probs[np.arange(len(p)), p])))


def random_sentences(rng, lengths):
    probs = rng.dirichlet(np.full(len(LABELS), 0.5), size=sum(lengths))
    return probs, np.concatenate([[0], np.cumsum(lengths)])


def test_an_inside_tag_after_o_becomes_the_best_valid_path_by_hand():
    # argmax: O I-PER (I-PER opens a span under conlleval, none under strict IOB2). The valid paths' products:
    # O O .6 x .25 = .150, B-PER I-PER .3 x .65 = .195, O B-PER .06, B-PER O .075, B-PER B-PER .03 -> B-PER I-PER
    probs = np.array([[.6, .3, .1, 0, 0], [.25, .1, .65, 0, 0]])
    assert [LABELS[i] for i in predicted_labels(probs, LABELS)] == ["O", "I-PER"]
    assert [LABELS[i] for i in iob2_labels(probs, [0, 2], LABELS)] == ["B-PER", "I-PER"]


def test_iob2_labels_are_the_best_valid_path_of_every_sentence_by_enumeration():
    rng = np.random.default_rng(0)
    lengths = [1, 2, 3, 4, 5, 4, 3]
    probs, offsets = random_sentences(rng, lengths)
    labels = iob2_labels(probs, offsets, LABELS)
    for s in range(len(lengths)):
        rows = slice(offsets[s], offsets[s + 1])
        assert labels[rows].tolist() == best_valid_path_by_enumeration(probs[rows])


def test_zero_probabilities_still_give_a_valid_path():
    # the first word is I-LOC with certainty: no valid path has a nonzero product, the decoder still returns one
    probs = np.array([[0, 0, 0, 0, 1.0], [0, 0, 0, .2, .8], [1.0, 0, 0, 0, 0]])
    labels = [LABELS[i] for i in iob2_labels(probs, [0, 3], LABELS)]
    assert valid(labels) and labels == ["B-LOC", "I-LOC", "O"]


def test_a_zero_probability_loses_to_any_positive_product():
    # word 0: O 1e-40 or B-PER 0 (I-PER cannot open); after it I-PER ~1 but only after B-PER. The valid paths are
    # O O ... O (12 x 1e-40 = 1e-480 > 0) and B-PER I-PER ... (a zero): the first, though 1e-480 is below float64
    probs = np.tile([1e-40, 0.0, 1 - 1e-40], (12, 1))
    labels = iob2_labels(probs, [0, 12], ["O", "B-PER", "I-PER"])
    assert labels.tolist() == [0] * 12


def test_ties_go_as_the_argmax_breaks_them_whatever_the_column_order():
    names = ["B-PER", "I-PER", "O"]
    probs = np.array([[0.5, 0.0, 0.5], [0.2, 0.4, 0.4]])  # O or B-PER, then O or I-PER (after B-PER: .2 vs .2)
    assert iob2_labels(probs, [0, 2], names).tolist() == predicted_labels(probs, names).tolist() == [2, 2]


@pytest.mark.parametrize("offsets", [[1, 3], [0, 2, 1, 3], [0, 2]])
def test_offsets_that_do_not_cover_the_positions_are_refused(offsets):
    with pytest.raises(ValueError, match="offsets must rise from 0 to N = 3"):
        iob2_labels(np.full((3, len(LABELS)), 0.2), offsets, LABELS)


def test_decoded_labels_read_the_same_under_conlleval_and_strict_iob2():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 30, size=700)  # more sentences than one decoding batch
    probs, offsets = random_sentences(rng, lengths)
    gold_ids = rng.integers(0, len(LABELS), size=len(probs))
    to_names = lambda ids: [[LABELS[i] for i in ids[a:b]] for a, b in zip(offsets[:-1], offsets[1:])]  # noqa: E731
    gold = [[t if valid(s[:k] + [t]) else "B" + t[1:] for k, t in enumerate(s)] for s in to_names(gold_ids)]
    argmax, iob2 = to_names(predicted_labels(probs, LABELS)), to_names(iob2_labels(probs, offsets, LABELS))
    assert all(valid(s) for s in iob2) and not all(valid(s) for s in argmax)
    assert f1_score(gold, iob2) == f1_score(gold, iob2, mode="strict", scheme=IOB2)
    assert f1_score(gold, argmax) != f1_score(gold, argmax, mode="strict", scheme=IOB2)


def tagging_file(path, pred=None) -> Predictions:
    probs = np.array([[.6, .3, .1, 0, 0], [.25, .1, .65, 0, 0], [.1, .1, .1, .6, .1]], dtype=np.float32)
    predictions = Predictions("tagging", np.array(LABELS), np.array([0, 2, 3]), np.array([1, 2, 3]), probs=probs,
                              pred=pred)
    save_predictions(path, predictions)
    return predictions


def test_decode_keeps_a_stored_path_and_refuses_translation(tmp_path):
    argmax = tagging_file(tmp_path / "a.npz")
    assert decode(argmax, "argmax") is argmax
    assert decode(argmax, "iob2").pred.tolist() == [1, 2, 3] and decode(argmax, "iob2").meta["decode"] == "iob2"
    viterbi = tagging_file(tmp_path / "v.npz", pred=np.array([0, 0, 3]))
    assert decode(viterbi, "iob2").pred.tolist() == [0, 0, 3]
    translation = Predictions("translation", np.array(["a"]), np.array([0, 1]), np.array([0]))
    with pytest.raises(UserError, match="mt.npz: --decode iob2 decodes tagging predictions"):
        decode(translation, "iob2", "mt.npz")


def f1_row(capsys) -> list[str]:
    """A and B of compare's F1 row."""
    (row,) = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("f1 ")]
    return [cell for cell in row if cell[:1].isdigit()][:2]


def test_evaluate_and_compare_score_the_decoded_labels(tmp_path, capsys):
    tagging_file(tmp_path / "a.npz")
    assert main(["evaluate", str(tmp_path / "a.npz"), "--decode", "iob2", "--n-boot", "5",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["metrics"]["f1"]["value"] == report["metrics"]["f1_conlleval"]["value"] == 1.0  # gold: B I B
    assert "valid IOB2 path" in report["settings"]["pred"]
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--metrics", "f1", "--n-boot", "5",
                 "--decode", "iob2"]) == 0
    assert f1_row(capsys) == ["1.0000", "1.0000"]
    assert main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--metrics", "f1", "--n-boot",
                 "5"]) == 0  # argmax: O I-PER B-LOC, strict IOB2 finds B-LOC only: P 1, R 1/2
    assert f1_row(capsys) == ["0.6667", "0.6667"]


def test_a_file_decoded_by_predict_says_so_and_argmax_brings_back_the_argmax(tmp_path, capsys):
    decoded = decode(tagging_file(tmp_path / "a.npz"), "iob2")
    save_predictions(tmp_path / "d.npz", decoded)
    assert decode(load_predictions(tmp_path / "d.npz"), "argmax").pred is None
    assert main(["compare", str(tmp_path / "d.npz"), str(tmp_path / "a.npz"), "--metrics", "f1", "--n-boot",
                 "5"]) == 0
    out = capsys.readouterr().out
    assert "Labels scored by F1: A iob2, B argmax" in out
    assert main(["compare", str(tmp_path / "d.npz"), str(tmp_path / "a.npz"), "--metrics", "f1", "--n-boot", "5",
                 "--decode", "argmax"]) == 0
    assert f1_row(capsys) == ["0.6667", "0.6667"]


def test_a_runs_evaluation_refuses_decode(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path), "--decode", "iob2"]) == 2
    assert "--decode: rescores a predictions file" in capsys.readouterr().err


def test_loaded_predictions_round_trip_the_decoded_labels(tmp_path):
    decoded = decode(tagging_file(tmp_path / "a.npz"), "iob2")
    save_predictions(tmp_path / "d.npz", decoded)
    again = load_predictions(tmp_path / "d.npz")
    assert again.pred.tolist() == [1, 2, 3] and again.meta["decode"] == "iob2"
