"""Span-level calibration of entity confidences: does a span's confidence equal the chance that it is exactly right?

    python scripts/span_calibration.py "IID member=OUT1" "IID ensemble=OUT2" ... --png docs/figures/span-calibration.png

Each OUT is a folder written by `ensemble-distill predict ... --tag-col -1` on a file with gold tags (without
--min-confidence): its entities.jsonl gives the predicted spans and their confidences (spans.py: the probability
that exactly that span carries that type, right boundary included), its predictions.npz the gold tags and the
per-word distributions. A span is correct when a gold span has the same sentence, start, end and type
(spans.span_events). Printed, one Markdown row per system: spans, precision, span ECE (10 equal-mass bins,
calibration.metrics.ece, on the data, no bootstrap), mean confidence minus precision, and the ECE a perfectly
calibrated confidence would show at that many spans (the mean over 20 draws of correct ~ Bernoulli(confidence):
the sampling noise floor); then the same for the old confidence, the product over the span's words of the
predicted label's probability in predictions.npz (for an ensemble, of the mean distribution), which leaves out the
right boundary. The PNG holds one reliability diagram per system (10 equal-width bins): bars the accuracy of the
exact confidence, grey circles the old confidence's bins.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ensemble_distill.calibration.metrics import ece
from ensemble_distill.calibration.plots import reliability_bins
from ensemble_distill.errors import UserError, located
from ensemble_distill.io_utils import atomic_path
from ensemble_distill.predictions import load_predictions, predicted_labels
from ensemble_distill.spans import SpanLabels, Spans, decode_spans, span_events

N_BINS = 10
FLOOR_DRAWS = 20


def read_entities(path: Path, labels: SpanLabels) -> tuple[Spans, np.ndarray]:
    """The spans of entities.jsonl (sorted by sentence, start) and their confidences float64 [N]."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise located(path, None, f"cannot read it ({err})") from None
    for line_no, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            found = [(record["sentence"], e["start"], e["end"], e["type"], e["confidence"])
                     for e in record["entities"]]
        except (ValueError, KeyError, TypeError) as err:
            raise located(path, line_no, f"not an entities.jsonl line ({err!r})") from None
        for sentence, start, end, kind, confidence in found:
            if kind not in labels.types or not isinstance(confidence, (int, float)):
                raise located(path, line_no, f"entity type {kind!r} (known: {', '.join(labels.types)}) or "
                                             f"confidence {confidence!r} not usable")
            rows.append((sentence, start, end, labels.types.index(kind), confidence))
    columns = np.array(rows, dtype=np.float64).reshape(-1, 5)
    order = np.lexsort((columns[:, 1], columns[:, 0]))
    columns = columns[order]
    return Spans(*columns[:, :4].astype(np.int64).T), columns[:, 4]


def old_confidence(probs, offsets, spans: Spans) -> np.ndarray:
    """Product over each span's words of its predicted label's probability, float64 [N] (no right boundary)."""
    word_conf = probs.max(1).astype(np.float64)
    lengths = spans.end - spans.start
    starts = np.cumsum(lengths) - lengths
    words = np.repeat(offsets[spans.sentence] + spans.start - starts, lengths) + np.arange(lengths.sum())
    return np.multiply.reduceat(word_conf[words], starts) if len(spans) else np.zeros(0)


def system_events(folder: Path):
    """(exact confidence, old confidence, correct) float64/float64/bool [N] of the predicted spans in `folder`."""
    preds = load_predictions(folder / "predictions.npz")
    labels = SpanLabels.from_names(preds.label_names)
    offsets = preds.sentence_offsets
    predicted = decode_spans(predicted_labels(preds.probs, preds.label_names), offsets, labels)
    spans, confidence = read_entities(folder / "entities.jsonl", labels)
    same = len(spans) == len(predicted) and all(
        np.array_equal(getattr(spans, c), getattr(predicted, c)) for c in ("sentence", "start", "end", "type"))
    if not same:  # the old confidence and the gold need the very spans entities.jsonl reports
        raise located(folder / "entities.jsonl", None, f"its {len(spans)} spans are not the {len(predicted)} spans of "
                      "predictions.npz's most probable labels (written with --min-confidence, or another run?)")
    gold = decode_spans(preds.gold, offsets, labels)
    conf, correct = span_events(spans, confidence, gold)
    return conf, old_confidence(preds.probs, offsets, spans), correct


def noise_floor(conf, rng) -> float:
    """Mean ECE of events drawn correct with probability `conf`: what a calibrated confidence shows at this size."""
    return float(np.mean([ece(conf, rng.random(len(conf)) < conf, N_BINS) for _ in range(FLOOR_DRAWS)]))


def table(results: dict) -> str:
    """Markdown table, values x100."""
    head = ("| system | spans | precision | span ECE | conf − acc | ECE floor | old ECE | old conf − acc |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for label, (conf, old, correct) in results.items():
        rng = np.random.default_rng(0)
        acc = correct.mean()
        rows.append(f"| {label} | {len(conf)} | {100 * acc:.1f} | {100 * ece(conf, correct, N_BINS):.2f} | "
                    f"{100 * (conf.mean() - acc):+.2f} | {100 * noise_floor(conf, rng):.2f} | "
                    f"{100 * ece(old, correct, N_BINS):.2f} | {100 * (old.mean() - acc):+.2f} |")
    return head + "\n".join(rows) + "\n"


def figure(results: dict, path, columns: int) -> None:
    """One reliability diagram per system, `columns` a row."""
    rows = -(-len(results) // columns)
    fig = Figure(figsize=(3.2 * columns, 3.3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)).ravel()
    left = np.arange(N_BINS) / N_BINS
    for ax, (label, (conf, old, correct)) in zip(axes, results.items()):
        counts, accuracy, mean_conf = reliability_bins(conf, correct, N_BINS)
        _, old_acc, old_conf = reliability_bins(old, correct, N_BINS)
        ax.bar(left, np.nan_to_num(accuracy), width=1 / N_BINS, align="edge", edgecolor="black", alpha=0.8,
               label="exact span conf.")
        for x, y, n in zip(left + 0.5 / N_BINS, np.nan_to_num(accuracy), counts):
            ax.annotate(f"{n}", (x, y), ha="center", va="bottom", fontsize=5)
        ax.plot(mean_conf, accuracy, "o", color="tab:red", markersize=3)
        ax.plot(old_conf, old_acc, "o", mfc="none", color="dimgray", markersize=4, label="old (no right boundary)")
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1.05))
        ax.set_title(f"{label}\nECE {100 * ece(conf, correct, N_BINS):.2f}  "
                     f"(old {100 * ece(old, correct, N_BINS):.2f})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(results):]:
        ax.set_visible(False)
    axes[0].legend(loc="upper left", fontsize=6, framealpha=0.8)
    for ax in axes[::columns]:
        ax.set_ylabel("span accuracy", fontsize=8)
    for ax in axes[-columns:]:
        ax.set_xlabel("span confidence", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("systems", nargs="+", metavar="LABEL=FOLDER", help="a predict output folder with gold")
    parser.add_argument("--png", help="write the reliability diagrams here")
    parser.add_argument("--columns", type=int, default=3, help="diagrams a row (default 3)")
    args = parser.parse_args(argv)
    try:
        systems = {}
        for item in args.systems:
            label, sep, folder = item.rpartition("=")
            if not sep or not label:
                raise UserError(f"{item}: give LABEL=FOLDER")
            systems[label] = Path(folder)
        results = {label: system_events(folder) for label, folder in systems.items()}
        print(table(results), end="")
        if args.png:
            figure(results, args.png, max(1, min(args.columns, len(results))))
    except UserError as err:
        print(f"span_calibration: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
