"""Benchmark: one bootstrap replicate of the evaluation report, against the direct ways of computing the same thing.

    python bench/bench_bootstrap.py              # a CoNLL-2003-test-sized tagging file: 3,450 sentences, ~47k tokens
    python bench/bench_bootstrap.py --scale 0.1

Each line times our way and a baseline on the same resample, same process, and prints the ratio:
- positions of the drawn sentences: offsets + np.repeat/cumsum vs a Python loop concatenating per-sentence ranges;
- span F1: summing per-sentence seqeval counts vs seqeval's f1_score on the resampled label lists;
- per-sentence span counts, strict and conlleval, from label ids (once per file) vs seqeval's own span readers;
- PR area: cumulative sums over events sorted once (positions weighted by draw counts) vs re-sorting, and
  scikit-learn's average_precision_score;
- the whole tagging report for one replicate, and the projected time for 1,000 replicates;
- a paired comparison of two systems on F1 (200 replicates): from span counts alone vs both full reports.
Timings are the best of --repeats runs; on a shared machine they are noisy, so the load average is printed.
"""

import argparse
import os

import numpy as np
from seqeval.metrics import f1_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Entities
from sklearn.metrics import average_precision_score

from ensemble_distill.calibration.bootstrap import paired_bootstrap, sentence_positions
from ensemble_distill.calibration.comparison import compare as compare_systems
from ensemble_distill.calibration.metrics import entity_type_confidences, gold_entity_types
from ensemble_distill.calibration.plots import EventRanking, precision_recall_curve
from ensemble_distill.calibration.report import tagging_metrics
from ensemble_distill.calibration.task_metrics import label_span_counts, span_counts, span_scores
from ensemble_distill.predictions import Predictions

from common import best_time

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def make_predictions(n_sentences, seed=0) -> Predictions:
    """Sentences of 3-24 tokens, ~10% entity starts, and a model that favours the gold label."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(3, 25, n_sentences))])
    n = offsets[-1]
    gold = np.zeros(n, dtype=np.int64)
    starts = np.flatnonzero(rng.random(n) < 0.1)
    gold[starts] = 1 + 2 * rng.integers(0, 4, len(starts))
    inside = starts[starts + 1 < n] + 1
    inside = inside[(gold[inside] == 0) & (rng.random(len(inside)) < 0.5)]
    gold[inside] = gold[inside - 1] + 1
    gold[offsets[:-1]] = np.where(gold[offsets[:-1]] % 2 == 0, 0, gold[offsets[:-1]])
    logits = rng.normal(size=(n, len(LABELS)))
    logits[np.arange(n), gold] += 3.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions.tagging(probs, gold, offsets, LABELS)


def compare(name, ours, baseline, repeats):
    t_ours, t_base = best_time(ours, repeats), best_time(baseline, repeats)
    print(f"{name:44s} ours {1e3 * t_ours:9.2f} ms   baseline {1e3 * t_base:9.2f} ms   x{t_base / t_ours:7.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    preds = make_predictions(max(10, int(3450 * args.scale)))
    offsets, gold = preds.sentence_offsets, preds.gold
    draw = np.random.default_rng(1).integers(0, preds.n_sentences, preds.n_sentences)
    pos = sentence_positions(offsets, draw)
    print(f"{preds.n_sentences} sentences, {preds.n_positions} positions; load average {os.getloadavg()[0]:.1f}")

    compare(
        "positions of drawn sentences (loop)",
        lambda: sentence_positions(offsets, draw),
        lambda: np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in draw]),
        args.repeats,
    )

    gold_seqs, pred_seqs = preds.sentence_labels(gold), preds.sentence_labels(preds.predicted())
    counts = span_counts(gold_seqs, pred_seqs)
    compare(
        "span F1 (seqeval on resampled lists)",
        lambda: span_scores(counts[draw]),
        lambda: f1_score([gold_seqs[s] for s in draw], [pred_seqs[s] for s in draw], mode="strict", scheme=IOB2),
        args.repeats,
    )

    def seqeval_readers():  # strict entities and conlleval's, as seqeval reads them
        Entities(gold_seqs, IOB2), Entities(pred_seqs, IOB2)
        [(get_entities(g), get_entities(p)) for g, p in zip(gold_seqs, pred_seqs)]

    compare(
        "span counts, both modes (seqeval readers)",
        lambda: [label_span_counts(gold, preds.predicted(), offsets, LABELS, mode) for mode in ("strict", "conlleval")],
        seqeval_readers,
        args.repeats,
    )

    type_conf, types = entity_type_confidences(preds.probs, LABELS)
    gold_type = gold_entity_types(gold, LABELS, types)
    ranking = EventRanking(type_conf, gold_type)
    weights = lambda: np.bincount(pos, minlength=len(gold))  # noqa: E731
    compare(
        "PR area (re-sort per replicate)",
        lambda: ranking.curve(weights()).average_precision,
        lambda: precision_recall_curve(type_conf[pos], gold_type[pos]).average_precision,
        args.repeats,
    )
    y = (gold_type[pos][:, None] == np.arange(len(types))).ravel()
    compare(
        "PR area (sklearn average_precision_score)",
        lambda: ranking.curve(weights()).average_precision,
        lambda: average_precision_score(y, type_conf[pos].ravel()),
        args.repeats,
    )

    metrics_fn, _ = tagging_metrics(preds)
    t = best_time(lambda: metrics_fn(sentence_positions(offsets, draw), draw), args.repeats)
    print(f"{'whole tagging report, one replicate':44s} ours {1e3 * t:9.2f} ms   1,000 replicates ~ {1e3 * t:.0f} s")

    other = make_predictions(preds.n_sentences, seed=0)
    other.probs = np.roll(other.probs, 1, axis=0)  # the same sentences, a different (worse) system
    other_fn, _ = tagging_metrics(other)
    compare(
        "paired F1, 200 replicates (full reports)",
        lambda: compare_systems(preds, other, ["f1"], n_boot=200, progress=False),
        lambda: paired_bootstrap(metrics_fn, other_fn, offsets, n_boot=200, progress=False),
        1,
    )


if __name__ == "__main__":
    main()
