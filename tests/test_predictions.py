import numpy as np
import pytest
from seqeval.scheme import IOB2, Entities

from ensemble_distill.calibration.metrics import ece
from ensemble_distill.errors import UserError
from ensemble_distill.predictions import (
    PROB_TOLERANCE,
    Predictions,
    _to_arrays,
    compact_distributions,
    load_predictions,
    predicted_labels,
    save_predictions,
    validate_arrays,
)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
GOLD = [0, 1, 2, 0, 3, 1, 2, 2, 0]  # O B-PER I-PER O | B-LOC | B-PER I-PER I-PER O


def tagging_preds(seed=0):
    rng = np.random.default_rng(seed)
    offsets = [0, 4, 5, 9]
    probs = rng.dirichlet(np.ones(len(LABELS)), size=9)
    return Predictions.tagging(probs, GOLD, offsets, LABELS, meta={"model": "test", "seeds": [1, 2]})


def translation_preds(seed=0, vocab=50, k=5):
    rng = np.random.default_rng(seed)
    offsets = [0, 3, 7]
    probs = rng.dirichlet(np.full(vocab, 0.3), size=7)
    gold = rng.integers(0, vocab, size=7)
    names = [f"tok{i}" for i in range(vocab)]
    preds = Predictions.translation(probs, gold, offsets, names, ["a b c", "d e"], ["a b c", "d f"], k=k)
    return preds, probs


def test_tagging_round_trip(tmp_path):
    preds = tagging_preds()
    preds.pred = preds.probs.argmin(axis=1)
    save_predictions(tmp_path / "p.npz", preds)
    back = load_predictions(tmp_path / "p.npz")
    assert back.task == "tagging" and back.meta == {"model": "test", "seeds": [1, 2]}
    assert back.label_names.tolist() == LABELS
    np.testing.assert_array_equal(back.probs, preds.probs)
    np.testing.assert_array_equal(back.predicted(), preds.pred)
    assert back.sentence_labels(back.gold)[1] == [LABELS[back.gold[4]]]
    assert [len(s) for s in back.sentence_labels(back.gold)] == [4, 1, 4]


def test_predicted_defaults_to_argmax():
    preds = tagging_preds()
    np.testing.assert_array_equal(preds.predicted(), preds.probs.argmax(axis=1))


def test_tied_labels_go_to_o_then_to_the_smallest_name():
    names = ["I-PER", "B-PER", "O", "B-LOC"]
    probs = np.array([[0.5, 0.5, 0.0, 0.0],   # I-PER, B-PER: B-PER
                      [0.4, 0.0, 0.4, 0.2],   # I-PER, O: O
                      [0.3, 0.3, 0.0, 0.3],   # I-PER, B-PER, B-LOC: B-LOC
                      [0.1, 0.7, 0.1, 0.1],   # no tie at the top: B-PER
                      [0.25] * 4])            # all: O
    assert [names[i] for i in predicted_labels(probs, names)] == ["B-PER", "O", "B-LOC", "B-PER", "O"]
    preds = Predictions.tagging(probs, [1, 2, 3, 1, 2], [0, 5], names)
    assert [names[i] for i in preds.predicted()] == ["B-PER", "O", "B-LOC", "B-PER", "O"]
    with pytest.raises(ValueError, match=r"probs must be \[N, 4\]"):
        predicted_labels(probs[:, :3], names)


def test_predicted_labels_do_not_depend_on_the_order_of_the_labels():
    rng = np.random.default_rng(4)
    names = np.array(LABELS)
    probs = (rng.multinomial(4, np.full(5, 0.2), size=300) / 4).astype(np.float32)  # quarters: ties everywhere
    expected = names[predicted_labels(probs, names)]
    for _ in range(10):
        perm = rng.permutation(5)
        np.testing.assert_array_equal(names[perm][predicted_labels(probs[:, perm], names[perm])], expected)


def test_translation_compact_form_matches_dense(tmp_path):
    preds, probs = translation_preds()
    save_predictions(tmp_path / "t.npz", preds)
    back = load_predictions(tmp_path / "t.npz")
    rows = np.arange(7)[:, None]
    expected_ids = np.argsort(-probs, axis=1)[:, :5]
    np.testing.assert_array_equal(back.top_ids, expected_ids)
    np.testing.assert_allclose(back.top_probs, probs[rows, expected_ids], rtol=1e-6)
    np.testing.assert_allclose(back.gold_prob, probs[np.arange(7), back.gold], rtol=1e-6)
    # Brier score of each position, from the compact fields and from the dense distribution.
    dense_brier = ((probs - np.eye(50)[back.gold]) ** 2).sum(axis=1)
    np.testing.assert_allclose(back.sum_sq - 2 * back.gold_prob + 1, dense_brier, rtol=1e-5)
    assert back.hypotheses.tolist() == ["a b c", "d e"]
    np.testing.assert_array_equal(back.tied_beyond, np.zeros(7))  # Dirichlet draws: no ties


def test_compaction_counts_the_tokens_tied_with_the_last_stored_one(tmp_path):
    probs = np.array([[0.3, 0.2, 0.2, 0.2, 0.1],     # two of three .2 stored with k = 3: one beyond
                      [0.1, 0.1, 0.1, 0.1, 0.6],     # three of four .1 stored (after .6): one beyond
                      [0.5, 0.25, 0.25, 0.0, 0.0]])  # the tie fits: none beyond
    _, top_probs, gold_prob, _, tied_beyond = compact_distributions(probs, np.array([3, 0, 4]), k=3)
    np.testing.assert_array_equal(top_probs, np.float32([[0.3, 0.2, 0.2], [0.6, 0.1, 0.1], [0.5, 0.25, 0.25]]))
    np.testing.assert_array_equal(tied_beyond, [1, 2, 0])
    np.testing.assert_array_equal(gold_prob, np.float32([0.2, 0.1, 0.0]))
    preds = Predictions.translation(probs, [3, 0, 4], [0, 3], [f"t{i}" for i in range(5)], ["x"], ["x"], k=3)
    save_predictions(tmp_path / "t.npz", preds)
    np.testing.assert_array_equal(load_predictions(tmp_path / "t.npz").tied_beyond, [1, 2, 0])


def test_empty_sentences_are_allowed(tmp_path):
    preds = tagging_preds()
    preds.sentence_offsets = np.array([0, 0, 4, 5, 5, 9, 9])
    save_predictions(tmp_path / "p.npz", preds)
    assert [len(s) for s in load_predictions(tmp_path / "p.npz").sentence_labels(preds.gold)] == [0, 4, 1, 0, 4, 0]


def test_compaction_is_the_same_in_small_chunks():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(30), size=11).astype(np.float32)
    gold = rng.integers(0, 30, size=11)
    whole = compact_distributions(probs, gold, k=4)
    chunked = compact_distributions(probs, gold, k=4, chunk_rows=3)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    save_predictions(tmp_path / "p.npz", tagging_preds(0))
    bad = tagging_preds(1)
    bad.probs[0, 0] = np.nan
    with pytest.raises(UserError):
        save_predictions(tmp_path / "p.npz", bad)
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]
    np.testing.assert_array_equal(load_predictions(tmp_path / "p.npz").probs, tagging_preds(0).probs)


def write_raw(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def without(key):
    return lambda a: a.pop(key)


def setter(key, value):
    return lambda a: a.__setitem__(key, value(a) if callable(value) else value)


def set_cell(key, index, value):
    def mutate(a):
        a[key] = a[key].copy()
        a[key][index] = value

    return mutate


TAGGING_CASES = {
    "missing common key": (without("gold"), "missing keys ['gold']"),
    "missing task key": (without("probs"), "missing keys ['probs'] for task 'tagging'"),
    "bad task": (setter("task", np.array("parsing")), "task 'parsing'"),
    "bad version": (setter("format_version", np.array(7)), "format_version 7"),
    "probs shape": (setter("probs", lambda a: a["probs"][:, :3]), "probs has shape [9, 3], expected [9, 5]"),
    "gold shape": (setter("gold", lambda a: a["gold"][:8]), "sentence_offsets must start at 0 and end at N=8"),
    "nan": (set_cell("probs", (2, 1), np.nan), "probs contains NaN at position 2"),
    "negative": (set_cell("probs", (3, 0), -0.2), "probs has the value -0.2 at position 3: probabilities must lie"),
    "above one": (set_cell("probs", (4, 2), 1.5), "probs has the value 1.5 at position 4"),
    "row sum": (setter("probs", lambda a: a["probs"] * 0.9), "probs row 0 sums to 0.9"),
    "gold outside": (set_cell("gold", 6, 5), "gold label 5 at position 6 (sentence 2) is outside the 5 labels"),
    "gold negative": (set_cell("gold", 4, -1), "gold label -1 at position 4 (sentence 1)"),
    "gold floats": (setter("gold", lambda a: a["gold"].astype(float)), "gold must be integers"),
    "empty": (
        lambda a: a.update(gold=np.zeros(0, np.int64), probs=np.zeros((0, 5), np.float32),
                           sentence_offsets=np.array([0])),
        "empty input",
    ),  # fmt: skip
    "offsets not monotone": (setter("sentence_offsets", np.array([0, 5, 4, 9])), "not monotone: offsets[1]=5"),
    "offsets short": (setter("sentence_offsets", np.array([0, 4, 8])), "end at N=9, got 0..8"),
    "offsets start": (setter("sentence_offsets", np.array([1, 4, 9])), "start at 0"),
    "pred outside": (setter("pred", np.full(9, 9)), "pred has label ids outside"),
    "meta": (setter("meta", np.array("{not json")), "meta is not a JSON string"),
}


@pytest.mark.parametrize("case", TAGGING_CASES)
def test_bad_tagging_files_raise_one_line_naming_the_file(tmp_path, case):
    mutate, message = TAGGING_CASES[case]
    arrays = _to_arrays(tagging_preds())
    mutate(arrays)
    path = write_raw(tmp_path / "bad.npz", arrays)
    with pytest.raises(UserError) as err:
        load_predictions(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


TRANSLATION_CASES = {
    "missing": (without("sum_sq"), "missing keys ['sum_sq'] for task 'translation'"),
    "top sum": (set_cell("top_probs", (1, 0), 0.999), "top_probs row 1 sums to"),
    "unsorted": (setter("top_probs", lambda a: a["top_probs"][:, ::-1].copy()), "not sorted in descending order"),
    "top ids": (set_cell("top_ids", (0, 0), 50), "top_ids has token ids outside the 50 labels"),
    "hypotheses": (setter("hypotheses", np.array(["only one"])), "hypotheses has shape [1], expected [2]"),
    "gold prob nan": (set_cell("gold_prob", 5, np.nan), "gold_prob contains NaN at position 5"),
    "sum_sq": (set_cell("sum_sq", 0, 1.5), "sum_sq has the value 1.5 at position 0"),
    "gold prob not stored value": (lambda a: a.update(gold=np.where(np.arange(7) == 2, a["top_ids"][:, 1], a["gold"])),
                                   "gold_prob at position 2 differs from top_probs where top_ids holds the gold id"),
    "gold prob above": (lambda a: a.update(gold_prob=np.where(np.arange(7) == 3, a["top_probs"][:, 0], a["gold_prob"])),
                        "gold_prob at position 3 exceeds the last top_probs, but the gold id is not in top_ids"),
    "gold tie not counted": (lambda a: a.update(gold_prob=np.where(np.arange(7) == 4, a["top_probs"][:, -1],
                                                                   a["gold_prob"])),
                             "gold_prob at position 4 equals the last top_probs with the gold id not in top_ids, "
                             "but tied_beyond says no token"),
    "tied_beyond negative": (set_cell("tied_beyond", 1, -1), "tied_beyond must lie in [0, 45]"),
    "tied_beyond shape": (setter("tied_beyond", lambda a: a["tied_beyond"][:3]), "tied_beyond has shape [3]"),
}


@pytest.mark.parametrize("case", TRANSLATION_CASES)
def test_bad_translation_files_raise_one_line_naming_the_file(tmp_path, case):
    mutate, message = TRANSLATION_CASES[case]
    arrays = _to_arrays(translation_preds()[0])
    mutate(arrays)
    path = write_raw(tmp_path / "bad.npz", arrays)
    with pytest.raises(UserError) as err:
        load_predictions(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_save_validates_too(tmp_path):
    preds = tagging_preds()
    preds.gold[3] = 17
    with pytest.raises(UserError, match=r"out\.npz: gold label 17 at position 3 \(sentence 0\)"):
        save_predictions(tmp_path / "out.npz", preds)
    assert not any(tmp_path.iterdir())


def test_missing_and_non_npz_files(tmp_path):
    with pytest.raises(UserError, match="nope.npz: no such predictions file"):
        load_predictions(tmp_path / "nope.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello\n")
    with pytest.raises(UserError, match="text.npz: not a predictions .npz file") as err:
        load_predictions(text)
    assert "pickle" not in str(err.value)  # numpy's own message would tell the user to load it unsafely
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(UserError, match="single.npz: not a predictions .npz file"):
        load_predictions(single)


def test_compaction_rejects_gold_outside_the_vocabulary():
    with pytest.raises(UserError, match=r"gold must be 2 token ids in \[0, 3\)"):
        compact_distributions(np.full((2, 3), 1 / 3), np.array([0, 3]), k=2)


# --------------------------------------------------------------------------------- tagging labels must be IOB2


@pytest.mark.parametrize("labels, bad", [
    (["O", "S-PER", "E-PER"], "S-PER"),  # IOBES
    (["O", "U-PER", "L-PER"], "U-PER"),  # BILOU
    (["O", "PER", "LOC"], "PER"),  # bare types
    (["O", "b-per", "i-per"], "b-per"),  # lower case
    (["o", "B-PER", "I-PER"], "o"),
    (["O", "B-", "I-PER"], "B-"),
    (["O", " B-PER", "I-PER"], " B-PER"),
    (["O ", "B-PER", "I-PER"], "O "),
])
def test_labels_other_than_iob2_are_refused_naming_the_file_and_label(tmp_path, labels, bad):
    arrays = _to_arrays(Predictions.tagging(np.full((2, 3), 1 / 3), [0, 0], [0, 2], ["O", "B-PER", "I-PER"]))
    arrays["label_names"] = np.array(labels)
    path = write_raw(tmp_path / "other.npz", arrays)
    with pytest.raises(UserError) as err:
        load_predictions(path)
    text = str(err.value)
    assert text.startswith(f"{path}: label {bad!r} (label_names[{labels.index(bad)}]) is not an IOB2 label")
    assert "\n" not in text


@pytest.mark.parametrize("labels, bad", [
    (["O", "B-PER ", "I-PER"], "B-PER "),  # a trailing space: another type than PER
    (["O", "B-PER", "I- PER"], "I- PER"),
    (["O", "B-PER\t", "I-PER"], "B-PER\t"),
    (["O", "B-P ER", "I-PER"], "B-P ER"),
    (["O", "B-PER", "I-PER\u200b"], "I-PER\u200b"),  # a zero-width space, unprintable
])
def test_labels_with_whitespace_are_refused_naming_the_file_and_label(tmp_path, labels, bad):
    arrays = _to_arrays(Predictions.tagging(np.full((2, 3), 1 / 3), [0, 0], [0, 2], ["O", "B-PER", "I-PER"]))
    arrays["label_names"] = np.array(labels)
    path = write_raw(tmp_path / "space.npz", arrays)
    with pytest.raises(UserError) as err:
        load_predictions(path)
    text = str(err.value)
    assert text.startswith(f"{path}: label {bad!r} (label_names[{labels.index(bad)}]) has the entity type")
    assert "whitespace" in text and "\n" not in text


def test_a_label_named_twice_is_refused(tmp_path):
    arrays = _to_arrays(tagging_preds())
    arrays["label_names"] = np.array(["O", "B-PER", "I-PER", "B-PER", "I-LOC"])
    with pytest.raises(UserError, match="label 'B-PER' appears twice"):
        load_predictions(write_raw(tmp_path / "twice.npz", arrays))


@pytest.mark.parametrize("gold, message", [
    ([2, 0, 0, 0, 3, 0, 0, 0, 0], "gold label 'I-PER' at position 0 (sentence 0) opening its sentence is not IOB2"),
    ([0, 1, 4, 0, 3, 0, 0, 0, 0], "gold label 'I-LOC' at position 2 (sentence 0) after 'B-PER' is not IOB2"),
    ([0, 0, 0, 1, 2, 0, 0, 0, 0], "gold label 'I-PER' at position 4 (sentence 1) opening its sentence"),
    ([0, 0, 0, 0, 0, 0, 0, 4, 0], "gold label 'I-LOC' at position 7 (sentence 2) after 'O'"),
])
def test_gold_that_is_not_iob2_is_refused(tmp_path, gold, message):
    arrays = _to_arrays(tagging_preds())
    arrays["gold"] = np.array(gold)
    with pytest.raises(UserError) as err:
        load_predictions(write_raw(tmp_path / "iob1.npz", arrays))
    assert message in str(err.value) and 'scheme = "iob1"' in str(err.value)


def test_gold_check_agrees_with_seqeval_strict_iob2():
    # A sentence is valid IOB2 exactly when seqeval's strict IOB2 spans cover all of its non-O labels.
    rng = np.random.default_rng(3)
    for _ in range(300):
        gold = rng.choice(5, size=rng.integers(1, 7), p=[0.4, 0.2, 0.15, 0.15, 0.1])
        names = [LABELS[g] for g in gold]
        spans = Entities([names], IOB2).entities[0]
        valid = sum(e.end - e.start for e in spans) == np.count_nonzero(gold)
        arrays = _to_arrays(Predictions.tagging(np.full((len(gold), 5), 0.2), gold, [0, len(gold)], LABELS))
        try:
            validate_arrays(arrays, "x.npz")
            accepted = True
        except UserError:
            accepted = False
        assert accepted == valid, names


def test_predictions_of_any_labels_are_accepted():
    preds = tagging_preds()
    preds.pred = np.array([2, 4, 4, 0, 2, 0, 0, 0, 0])  # stray I-: a model's output, scored by seqeval as it is
    validate_arrays(_to_arrays(preds), "x.npz")


# ------------------------------------------------------------------------ one tolerance for probabilities


def _f32(x):
    return np.float32(x)


def test_probabilities_within_the_tolerance_are_accepted_and_clipped(tmp_path):
    above, below = np.nextafter(_f32(1), _f32(2)), _f32(-1e-7)  # one float32 step above 1, and rounding below 0
    probs = np.array([[above, 0, 0], [below, 1, 0], [0.2, 0.3, 0.5]], dtype=np.float32)
    preds = Predictions.tagging(probs, [0, 1, 0], [0, 2, 3], ["O", "B-PER", "I-PER"])
    assert preds.probs.min() == 0 and preds.probs.max() == 1  # clipped when built
    raw = _to_arrays(preds)
    raw["probs"] = probs  # as another tool writes them
    back = load_predictions(write_raw(tmp_path / "p.npz", raw))
    np.testing.assert_array_equal(back.probs, np.clip(probs, 0, 1))
    assert ece(probs[:, 0], [1, 0, 1]) == ece(np.clip(probs[:, 0], 0, 1), [1, 0, 1])


def _file_accepts(tmp_path, value):
    raw = _to_arrays(Predictions.tagging(np.array([[1.0, 0, 0]]), [0], [0, 1], ["O", "B-PER", "I-PER"]))
    raw["probs"] = np.array([[value, (1 - value) / 2, (1 - value) / 2]], dtype=np.float32)  # sums to ~1
    try:
        load_predictions(write_raw(tmp_path / "edge.npz", raw))
        return True
    except UserError:
        return False


def _metrics_accept(value):
    try:
        ece(np.array([value], dtype=np.float32), [1])
        return True
    except UserError:
        return False


def test_the_file_check_and_the_metrics_accept_the_same_values(tmp_path):
    edge_up, edge_down = _f32(1 + PROB_TOLERANCE), _f32(-PROB_TOLERANCE)
    cases = {edge_up: True, np.nextafter(edge_up, _f32(2)): False, edge_down: True,
             np.nextafter(edge_down, _f32(-1)): False, _f32(1): True, _f32(0): True, _f32(1.5): False}
    for value, accepted in cases.items():
        assert _file_accepts(tmp_path, value) == _metrics_accept(value) == accepted, value
