import numpy as np
import pytest
import sacrebleu
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from ensemble_distill.calibration.task_metrics import bleu_from_stats, bleu_stats, span_counts, span_scores


def seqeval_scores(gold, pred):
    kw = dict(mode="strict", scheme=IOB2)
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


def test_span_scores_match_seqeval_on_random_sequences_and_resamples():
    rng = np.random.default_rng(0)
    labels = np.array(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"])
    lengths = rng.integers(1, 12, size=60)
    gold = [labels[rng.integers(0, 7, n)].tolist() for n in lengths]
    pred = [[g if rng.random() < 0.7 else labels[rng.integers(0, 7)] for g in seq] for seq in gold]
    counts = span_counts(gold, pred)
    np.testing.assert_allclose(list(span_scores(counts).values()), list(seqeval_scores(gold, pred).values()))
    draw = rng.integers(0, 60, size=60)
    resampled = seqeval_scores([gold[i] for i in draw], [pred[i] for i in draw])
    np.testing.assert_allclose(list(span_scores(counts[draw]).values()), list(resampled.values()))


def test_span_scores_are_zero_without_predictions():
    counts = span_counts([["B-PER"]], [["O"]])
    assert span_scores(counts) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


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
