import numpy as np
import pytest
import sacrebleu
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from ensemble_distill.calibration.task_metrics import (
    OperatingPoint,
    bleu_from_stats,
    bleu_stats,
    label_span_counts,
    label_span_type_counts,
    precision_recall_at,
    span_counts,
    span_metrics,
    span_scores,
    threshold_for_precision,
    type_span_metrics,
)


def seqeval_scores(gold, pred, mode="strict"):
    kw = dict(mode="strict", scheme=IOB2) if mode == "strict" else {}  # seqeval's default mode: conlleval's reading
    return {
        "precision": precision_score(gold, pred, **kw),
        "recall": recall_score(gold, pred, **kw),
        "f1": f1_score(gold, pred, **kw),
    }


def test_span_scores_on_a_hand_example():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "I-ORG", "O", "O"]]
    # Strict IOB2: I-LOC without B-LOC is no entity; ORG ends one token early. Correct: PER only.
    counts = span_counts(gold, pred)
    np.testing.assert_array_equal(counts, [[2, 1, 1], [1, 1, 0]])
    scores = span_scores(counts)
    assert scores == {"precision": 0.5, "recall": 1 / 3, "f1": 0.4}
    assert scores == seqeval_scores(gold, pred)


@pytest.mark.parametrize("mode", ["strict", "conlleval"])
def test_span_scores_match_seqeval_on_random_sequences_and_resamples(mode):
    rng = np.random.default_rng(0)
    labels = np.array(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"])
    for _ in range(5):
        lengths = rng.integers(0, 12, size=60)  # empty sentences included
        gold = [labels[rng.integers(0, 7, n)].tolist() for n in lengths]  # stray I-X in gold too
        pred = [[g if rng.random() < 0.7 else labels[rng.integers(0, 7)] for g in seq] for seq in gold]
        counts = span_counts(gold, pred, mode)
        np.testing.assert_allclose(list(span_scores(counts).values()), list(seqeval_scores(gold, pred, mode).values()))
        draw = rng.integers(0, 60, size=60)
        resampled = seqeval_scores([gold[i] for i in draw], [pred[i] for i in draw], mode)
        np.testing.assert_allclose(list(span_scores(counts[draw]).values()), list(resampled.values()))


def test_an_inside_tag_opening_a_span_counts_for_conlleval_not_for_strict():
    gold, pred = [["B-PER", "I-PER", "O", "B-LOC"]], [["I-PER", "I-PER", "O", "B-LOC"]]  # the example
    assert span_scores(span_counts(gold, pred, "conlleval"))["f1"] == 1.0
    assert seqeval_scores(gold, pred, "conlleval")["f1"] == 1.0
    assert span_scores(span_counts(gold, pred, "strict"))["f1"] == pytest.approx(2 / 3)  # P 1/1, R 1/2
    assert seqeval_scores(gold, pred)["f1"] == pytest.approx(2 / 3)
    metrics = span_metrics(span_counts(gold, pred, "strict"), span_counts(gold, pred, "conlleval"))
    assert metrics == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                       "precision_conlleval": 1.0, "recall_conlleval": 1.0, "f1_conlleval": 1.0}


def test_label_span_counts_read_ids_in_any_label_order_and_without_an_inside_label():
    names = ["B-LOC", "I-PER", "O", "B-PER"]  # no I-LOC
    gold = np.array([3, 1, 2, 0, 0, 2])  # B-PER I-PER O B-LOC | B-LOC O
    pred = np.array([1, 1, 2, 0, 3, 1])  # I-PER I-PER O B-LOC | B-PER I-PER
    offsets = [0, 4, 6]
    seqs = [[names[i] for i in x[:4]] for x in (gold, pred)], [[names[i] for i in x[4:]] for x in (gold, pred)]
    for mode in ("strict", "conlleval"):
        expected = [span_counts([g], [p], mode)[0] for g, p in seqs]
        np.testing.assert_array_equal(label_span_counts(gold, pred, offsets, names, mode), expected)
    np.testing.assert_array_equal(label_span_counts(gold, pred, offsets, names, "conlleval"), [[2, 2, 2], [1, 1, 0]])


def test_span_counts_misuse_is_refused():
    with pytest.raises(ValueError, match="mode"):
        span_counts([["O"]], [["O"]], mode="lenient")
    with pytest.raises(ValueError, match="1 gold sequences but 2"):
        span_counts([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="sentence 1 has 1 gold labels but 2"):
        span_counts([["O"], ["O"]], [["O"], ["O", "O"]])
    with pytest.raises(ValueError, match=r"label ids must lie in \[0, 3\)"):
        label_span_counts([0, 3], [0, 0], [0, 2], ["O", "B-X", "I-X"])


def _same(a, b):
    return a.keys() == b.keys() and all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in a)


@pytest.mark.parametrize("gold, pred, expected", [
    # no predicted span: precision 0/0; recall 0/1; F1 = 2 * 0 / (1 + 0) = 0 (seqeval: 0, 0, 0)
    ([["B-PER"]], [["O"]], (np.nan, 0.0, 0.0)),
    # no gold span: recall 0/0; precision 0/1; F1 = 0 / (0 + 1) = 0
    ([["O"]], [["B-PER"]], (0.0, np.nan, 0.0)),
    # neither: all three 0/0 (seqeval writes 0 for each, with a warning)
    ([["O", "O"], []], [["O", "O"], []], (np.nan, np.nan, np.nan)),
    # 1 correct of 3 predicted and 2 gold: P 1/3, R 1/2, F1 2 * 1 / (2 + 3) = 0.4
    ([["B-PER", "O", "B-LOC"]], [["B-PER", "B-LOC", "B-ORG"]], (1 / 3, 1 / 2, 0.4)),
])
def test_span_scores_are_null_where_a_ratio_is_0_over_0(gold, pred, expected):
    scores = span_scores(span_counts(gold, pred))
    assert _same(scores, dict(zip(("precision", "recall", "f1"), expected)))
    assert _same(span_metrics(span_counts(gold, pred), span_counts(gold, pred, "conlleval")),
                 scores | {f"{name}_conlleval": value for name, value in scores.items()})


HYPS = ["The cat sat on the mat.", "A dog barked loudly at night.", "Hello world", "It is raining today."]
REFS = ["The cat sat on a mat.", "The dog barked loudly at night.", "Hello there, world", "It rains today."]


def test_bleu_from_statistics_equals_sacrebleu_corpus_bleu():
    stats, signature = bleu_stats(HYPS, REFS)
    assert stats.shape == (4, 10)
    assert bleu_from_stats(stats) == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert "tok:13a" in signature and "nrefs:1" in signature
    draw = [3, 0, 0, 2]
    expected = sacrebleu.corpus_bleu([HYPS[i] for i in draw], [[REFS[i] for i in draw]]).score
    assert bleu_from_stats(stats[draw]) == expected


def test_bleu_of_identical_text_is_100():
    stats, _ = bleu_stats(REFS, REFS)
    assert bleu_from_stats(stats) == pytest.approx(100.0)


@pytest.mark.parametrize("bad", ["S-PER", "PER", "b-per", "o", "B-"])
def test_span_counts_name_a_label_that_is_not_iob2(bad):
    with pytest.raises(ValueError, match=f"tag {bad!r} is not O, B-TYPE or I-TYPE"):
        span_counts([["O", bad]], [["O", "O"]])
    with pytest.raises(ValueError, match=f"tag {bad!r}"):
        span_counts([["O", "O"]], [["O", bad]])


# --- confidence thresholds ----------------------------------------------------------------------------------------


def brute_force_point(threshold, confidence, correct, n_gold):
    kept = [c for x, c in zip(confidence, correct) if x >= threshold]
    return (sum(kept) / len(kept) if kept else float("nan"), sum(kept) / n_gold if n_gold else float("nan"),
            len(kept))


def brute_force_threshold(confidence, correct, n_gold, q):
    """Every candidate threshold (each confidence value) tried; the smallest whose precision reaches q."""
    reaching = [t for t in set(confidence) if len([x for x in confidence if x >= t])
                and brute_force_point(t, confidence, correct, n_gold)[0] >= q]
    return min(reaching) if reaching else None


def test_threshold_for_precision_equals_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(0, 25))
        confidence = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9, 1.0], size=n) if trial % 2 else rng.random(n)  # ties
        correct = rng.random(n) < confidence
        n_gold = int(correct.sum() + rng.integers(0, 5))
        q = float(rng.choice([0.5, 0.8, 0.9, 1.0, rng.random()]))
        expected = brute_force_threshold(confidence.tolist(), correct.tolist(), n_gold, q)
        point = threshold_for_precision(confidence, correct, n_gold, q)
        if expected is None:
            assert point is None
            continue
        precision, recall, n_kept = brute_force_point(expected, confidence, correct, n_gold)
        assert point.threshold == expected and point.n_kept == n_kept and point.precision >= q
        assert point.precision == precision
        assert point.recall == recall or (np.isnan(recall) and np.isnan(point.recall))


def test_threshold_by_hand():
    confidence = [0.95, 0.9, 0.9, 0.8, 0.6, 0.5]
    correct = [True, True, False, True, True, False]
    # precision at each distinct confidence: 0.95: 1/1, 0.9: 2/3 (both 0.9 spans together), 0.8: 3/4, 0.6: 4/5,
    # 0.5: 4/6. Not monotone: 0.75 is first reached at 0.8, and again, with more recall, at 0.6.
    assert threshold_for_precision(confidence, correct, 8, 0.75) == OperatingPoint(0.6, 0.8, 0.5, 5)
    assert threshold_for_precision(confidence, correct, 8, 0.9) == OperatingPoint(0.95, 1.0, 0.125, 1)
    assert threshold_for_precision(confidence, correct, 8, 0.6).threshold == 0.5
    assert threshold_for_precision([0.9, 0.8], [False, True], 1, 0.9) is None  # precisions 0 and 1/2
    assert threshold_for_precision([], [], 3, 0.5) is None


def test_precision_recall_at_a_dev_threshold_on_test():
    confidence, correct = np.array([0.2, 0.7, 0.7, 0.9]), np.array([False, True, False, True])
    assert precision_recall_at(0.7, confidence, correct, 4) == OperatingPoint(0.7, 2 / 3, 0.5, 3)
    assert precision_recall_at(0.71, confidence, correct, 4) == OperatingPoint(0.71, 1.0, 0.25, 1)
    none_kept = precision_recall_at(np.inf, confidence, correct, 4)
    assert np.isnan(none_kept.precision) and none_kept.recall == 0 and none_kept.n_kept == 0
    assert np.isnan(precision_recall_at(0.5, [0.6], [False], 0).recall)  # no gold span: recall undefined


def test_threshold_misuse_is_refused():
    with pytest.raises(ValueError, match="q"):
        threshold_for_precision([0.5], [True], 1, 0.0)
    with pytest.raises(ValueError, match="q"):
        threshold_for_precision([0.5], [True], 1, 1.5)
    with pytest.raises(ValueError, match="shapes"):
        threshold_for_precision([0.5, 0.6], [True], 1, 0.5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        precision_recall_at(0.5, [np.nan], [True], 1)
    with pytest.raises(ValueError, match="below the 2 correct"):
        precision_recall_at(0.5, [0.5, 0.6], [True, True], 1)
    with pytest.raises(ValueError, match="bools"):
        precision_recall_at(0.5, [0.5], [2], 1)
    with pytest.raises(ValueError, match="NaN"):
        precision_recall_at(np.nan, [0.5], [True], 1)


@pytest.mark.parametrize("mode", ["strict", "conlleval"])
def test_counts_per_entity_type_give_seqevals_classification_report(mode):
    rng = np.random.default_rng(1)
    names = ["I-MISC", "O", "B-PER", "I-PER", "B-LOC", "B-MISC", "I-LOC", "B-ORG"]  # any order; ORG has no I-
    lengths = rng.integers(0, 10, size=80)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    gold = rng.integers(0, len(names), offsets[-1])
    pred = np.where(rng.random(offsets[-1]) < 0.6, gold, rng.integers(0, len(names), offsets[-1]))
    counts, types = label_span_type_counts(gold, pred, offsets, names, mode)
    assert types == ["LOC", "MISC", "ORG", "PER"] and counts.shape == (80, 4, 3)
    np.testing.assert_array_equal(counts.sum(axis=1), label_span_counts(gold, pred, offsets, names, mode))
    seqs = [[[names[i] for i in tags[a:b]] for a, b in zip(offsets[:-1], offsets[1:])] for tags in (gold, pred)]
    kw = dict(mode="strict", scheme=IOB2) if mode == "strict" else {}
    report = classification_report(*seqs, output_dict=True, zero_division=0, **kw)
    for t, entity_type in enumerate(types):
        ours = span_scores(counts[:, t])
        assert counts[:, t, 0].sum() == report[entity_type]["support"]
        for key in ("precision", "recall", "f1-score"):
            assert ours[key.removesuffix("-score")] == pytest.approx(report[entity_type][key]), (entity_type, key)


def test_type_span_metrics_on_a_hand_example():
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    # gold: B-PER I-PER O B-LOC | B-LOC ; pred: I-PER I-PER O O | B-PER
    gold, pred, offsets = np.array([1, 2, 0, 3, 3]), np.array([2, 2, 0, 0, 1]), [0, 4, 5]
    counts, types = label_span_type_counts(gold, pred, offsets, names, "conlleval")
    np.testing.assert_array_equal(counts, [[[1, 0, 0], [1, 1, 1]], [[1, 0, 0], [0, 1, 0]]])
    metrics = type_span_metrics(counts, types)
    assert metrics["f1_conlleval:PER"] == pytest.approx(2 / 3)  # 1 correct of 1 gold and 2 predicted
    assert (metrics["precision_conlleval:PER"], metrics["recall_conlleval:PER"]) == (0.5, 1.0)
    assert metrics["f1_conlleval:LOC"] == 0.0 and np.isnan(metrics["precision_conlleval:LOC"])  # none predicted
    assert list(metrics) == [f"{m}_conlleval:{t}" for t in ("LOC", "PER") for m in ("precision", "recall", "f1")]
