"""Evaluation of a predictions file: every task and calibration metric with a sentence-bootstrap 95% interval.

    metrics = evaluate(load_predictions("dev.npz"), out_dir="dev-eval")   # {name: {value, ci_low, ci_high}}
    print(format_table(metrics))

Values are raw: fractions, except BLEU (sacrebleu's 0-100). The paper prints calibration metrics and F1 as
percentages (x100, see its Table 1 and Table 2); `PAPER_SCALE` gives the factor per metric.

Intervals: the percentile interval, except for the ECE-type metrics (`DEBIASED`), which are biased upward on
resamples: their value is bias-corrected and their interval is the basic one, so that the value always lies in
its interval (calibration/bootstrap.py says how); `estimate` keeps each metric as computed on the data.
Tagging files also get each entity type's conlleval precision, recall and F1 (`f1_conlleval:PER`, ...: seqeval's
classification_report, with intervals), and the number of gold spans of each type (settings.entity_support).
A metric undefined on the data is NaN here and null in metrics.json: BS+, B-ECE, B-BS and PR-AUC without a gold
entity; span precision without a predicted entity, recall without a gold one, F1 without either (F1 is
2 * correct / (gold + predicted), 0 when there are entities but none is found). A bootstrap replicate where a
metric is undefined (a draw of empty sentences only, or of sentences without entities) is left out of its
interval, and the interval is NaN (null) when no replicate defines it.

Ties between classes (calibration/metrics.py, "Class ties"): the top-1 and top-k events (ECE-1, ECE-k,
conf_gap's accuracy) count each of m classes tied at a place as correct at 1/m; the labels F1 and token_accuracy
score break ties by name ("O" first, then the smallest name; predictions.predicted_labels). No metric depends on
the order of the labels in the file.

Empty sentences (equal neighbouring sentence_offsets, which the format allows) hold no events: the metrics are
those of the other sentences, and a replicate that draws only empty sentences is undefined for the per-position
metrics.
"""

import importlib.metadata
from pathlib import Path

import numpy as np

from .. import __version__
from ..io_utils import atomic_write_json
from ..predictions import Predictions, label_rule, validate_predictions
from .bootstrap import bootstrap
from .metrics import (
    balanced_calibration,
    brier,
    dense_topk_events,
    ece,
    entity_type_confidences,
    gold_entity_types,
    stratified_brier,
    topk_events,
)
from .plots import EventRanking, PRCurve, pr_curve_plot, precision_recall_curve, reliability_diagram
from .task_metrics import (
    TYPE_SEPARATOR,
    bleu_from_stats,
    bleu_stats,
    label_span_counts,
    label_span_type_counts,
    span_metrics,
    type_span_metrics,
)

ALPHA = 0.05
ECE_BINS = 10  # ECE-1 / ECE-k: quantile bins
BALANCED_BINS = 20  # B-ECE: quantile bins per entity type (the authors' released code; §4.2 says "adaptively binned")
TOP_K = (1, 5)  # ECE-k of translation, as the paper's ECE-1 and ECE-5

DESCRIPTIONS = {
    "f1": "entity span F1 (seqeval strict IOB2, micro; an I-X opening a span is no span)",
    "precision": "entity span precision (strict)",
    "recall": "entity span recall (strict)",
    "f1_conlleval": "entity span F1 (conlleval = seqeval default mode: an I-X opens a span), the paper's",
    "precision_conlleval": "entity span precision (conlleval)",
    "recall_conlleval": "entity span recall (conlleval)",
    "token_accuracy": "token accuracy of predicted labels",
    "bleu": "corpus BLEU (sacrebleu)",
    "ece_1": "ECE of top-1 predictions",
    "ece_1_paper": "ECE-1, paper's reference binning",
    "ece_5": "ECE of pooled top-5 predictions",
    "ece_5_paper": "ECE-5, paper's reference binning",
    "conf_gap": "mean top-1 confidence - top-1 accuracy (> 0 over-, < 0 under-confident)",
    "brier": "Brier score (sum over classes)",
    "bs_plus": "BS+ (gold events)",
    "bs_minus": "BS- (non-gold entity-type events)",
    "b_bs": "balanced Brier score",
    "b_ece": "balanced ECE",
    "b_ece_paper": "B-ECE, paper's reference binning (a type with under 20 kept events is left out; null if all are)",
    "pr_auc": "area under entity-type PR curve (AP)",
}
PAPER_SCALE = {name: 1 if name == "bleu" else 100 for name in DESCRIPTIONS}
DEBIASED = ("ece_1", "ece_1_paper", "ece_5", "ece_5_paper", "b_ece", "b_ece_paper")
DEBIASED_NOTE = ("* bias-corrected: an ECE measured on a sample reads high, by about as much as its bootstrap "
                 "replicates read above it, so the value is 2 × the ECE of these sentences − the median of the "
                 "replicates, and the interval is the basic bootstrap one (2 × ECE − their 97.5th and 2.5th "
                 "percentiles), clipped at 0. The paper prints the ECE of the sentences: `estimate` in each "
                 "system's metrics.json.")


def evaluate(preds: Predictions, out_dir=None, n_boot=1000, seed=0) -> dict[str, dict[str, float]]:
    """All metrics of `preds` as {name: {value, ci_low, ci_high, estimate}}; with `out_dir`, also metrics.json and
    PNGs. `preds` are checked as a predictions file is (UserError)."""
    validate_predictions(preds)
    if preds.task == "tagging":
        metrics_fn, settings = tagging_metrics(preds)
    else:
        metrics_fn, settings = translation_metrics(preds)
    intervals = bootstrap(metrics_fn, preds.sentence_offsets, n_boot=n_boot, alpha=ALPHA, seed=seed,
                          debiased=DEBIASED)
    metrics = {name: intervals[name].as_dict() for name in reported(intervals)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        debiased = [name for name in metrics if name in DEBIASED]
        settings |= {"n_boot": n_boot, "seed": seed, "alpha": ALPHA, "resampling": "sentences",
                     "interval": {name: "bias-corrected value, basic interval, clipped at 0" if name in debiased
                                  else "percentile" for name in metrics}}
        write_metrics_json(out_dir / "metrics.json", preds, metrics, settings)
        write_plots(out_dir, preds)
    return metrics


def reported(names) -> list[str]:
    """The report's metrics among `names`, in DESCRIPTIONS' order, then the per-entity-type ones as they come."""
    names = list(names)
    return [n for n in DESCRIPTIONS if n in names] + [n for n in names if TYPE_SEPARATOR in n]


def describe(name: str) -> str:
    """What a metric of the report is: DESCRIPTIONS', and the entity type of a per-type one (f1_conlleval:PER)."""
    base, _, entity_type = name.partition(TYPE_SEPARATOR)
    return DESCRIPTIONS[base] + (f", entity type {entity_type}" if entity_type else "")


def paper_scale(name: str) -> float:
    """The factor to the paper's units of a report metric (per-type ones as their metric)."""
    return PAPER_SCALE[name.partition(TYPE_SEPARATOR)[0]]


def span_scorer(preds: Predictions):
    """The span metrics of a tagging file's sentences, from per-sentence span counts taken once: a function
    (sentence indices int [s]) -> {SPAN_METRICS and the per-type ones (type_span_metrics): value}, and each entity
    type's gold spans on the whole file {type: count}."""
    gold, pred, offsets, names = preds.gold, preds.predicted(), preds.sentence_offsets, preds.label_names
    strict = label_span_counts(gold, pred, offsets, names, "strict")
    by_type, types = label_span_type_counts(gold, pred, offsets, names, "conlleval")

    def scores(sent):
        return span_metrics(strict[sent], by_type[sent].sum(axis=1)) | type_span_metrics(by_type[sent], types)

    return scores, dict(zip(types, by_type[:, :, 0].sum(axis=0).tolist()))


def gold_summary(path) -> str:
    """One line on a predictions file with gold: a tagging file's span F1 (conlleval, the paper's; strict), a
    translation file's corpus BLEU, over its sentences, and the command that gives every metric with intervals.
    Raises UserError for a bad file."""
    from ..predictions import load_predictions

    preds = load_predictions(path)
    every = f"every metric with intervals: ensemble-distill evaluate {path}"
    if preds.task == "translation":
        stats, _ = bleu_stats(preds.hypotheses, preds.references)
        return f"against the references: BLEU {bleu_from_stats(stats):.2f} over {preds.n_sentences} sentences; {every}"
    scores, support = span_scorer(preds)
    f1 = scores(np.arange(preds.n_sentences))
    return (f"against the gold tags: F1 {100 * f1['f1_conlleval']:.2f} (conlleval), {100 * f1['f1']:.2f} (strict) "
            f"over {preds.n_sentences} sentences and {sum(support.values())} gold entities; {every}")


PRED_RULES = {"iob2": "most probable valid IOB2 path of the distributions (--decode iob2, decoding.iob2_labels)",
              "stored path": "stored pred", "argmax": "most probable label; ties: O, then the smallest name"}


def tagging_metrics(preds: Predictions):
    """The metrics function of a tagging file (positions, sentences) -> {name: value}, and its settings."""
    probs, gold, pred = preds.probs, preds.gold, preds.predicted()
    top1_conf, top1_correct = top1_events(preds)
    span_scores_of, support = span_scorer(preds)
    type_conf, type_names = entity_type_confidences(probs, preds.label_names)
    gold_type = gold_entity_types(gold, preds.label_names, type_names)
    ranking = EventRanking(type_conf, gold_type)
    per_position = ("token_accuracy", "ece_1", "conf_gap", "brier", "bs_plus", "bs_minus")
    balanced_names = ("b_bs", "b_ece", "b_ece_paper", "pr_auc")

    def metrics(pos, sent):
        out = span_scores_of(sent)
        if not pos.size:  # only empty sentences drawn: no event
            return out | dict.fromkeys(per_position + balanced_names, float("nan"))
        conf, gold_t = type_conf[pos], gold_type[pos]
        bs_plus, bs_minus = stratified_brier(conf, gold_t)
        out |= {
            "token_accuracy": float(np.mean(pred[pos] == gold[pos])),
            "ece_1": ece(top1_conf[pos], top1_correct[pos], n_bins=ECE_BINS),
            "conf_gap": confidence_gap(top1_conf[pos], top1_correct[pos]),
            "brier": brier(probs[pos], gold[pos]),
            "bs_plus": bs_plus,
            "bs_minus": bs_minus,
        }
        if not np.any(gold_t >= 0):  # no gold entity: the balanced metrics are undefined
            return out | dict.fromkeys(balanced_names, float("nan"))
        balanced = balanced_calibration(conf, gold_t, n_bins=BALANCED_BINS)
        paper = balanced_calibration(conf, gold_t, n_bins=BALANCED_BINS, paper_compatible=True)
        pr_auc = ranking.curve(np.bincount(pos, minlength=len(gold))).average_precision
        return out | {"b_bs": balanced.b_bs, "b_ece": balanced.b_ece, "b_ece_paper": paper.b_ece, "pr_auc": pr_auc}

    settings = {
        "task": "tagging",
        "entity_types": type_names,
        "span_f1": "f1: seqeval mode=strict, scheme=IOB2; f1_conlleval: seqeval default mode (conlleval); micro",
        "per_type": f"<metric>_conlleval{TYPE_SEPARATOR}<type>: conlleval precision, recall, F1 of one entity type",
        "entity_support": support,
        "ece_bins": ECE_BINS,
        "balanced_bins": BALANCED_BINS,
        "pred": PRED_RULES[label_rule(preds)],  # how the labels F1 scores were made
        "class_ties": "top-1 events of m tied classes each correct at 1/m",
    }
    return metrics, settings


def translation_metrics(preds: Predictions):
    """The metrics function of a translation file (positions, sentences) -> {name: value}, and its settings."""
    gold_prob, sum_sq = preds.gold_prob.astype(np.float64), preds.sum_sq.astype(np.float64)
    stats, signature = bleu_stats(preds.hypotheses, preds.references)
    ks = [k for k in TOP_K if k <= preds.top_ids.shape[1]]
    # Each k's events once, [N, k] (a position's events stay together when positions are resampled).
    events = {k: tuple(x.reshape(-1, k) for x in _compact_topk_events(preds, k)) for k in ks}
    top1_conf, top1_correct = (x[:, 0] for x in events[1])
    per_position = ("conf_gap", *(f"ece_{k}{suffix}" for k in ks for suffix in ("", "_paper")), "bs_plus", "brier")

    def metrics(pos, sent):
        out = {"bleu": bleu_from_stats(stats[sent])}
        if not pos.size:  # only empty sentences drawn: no event
            return out | dict.fromkeys(per_position, float("nan"))
        out["conf_gap"] = confidence_gap(top1_conf[pos], top1_correct[pos])
        for k, (conf_k, correct_k) in events.items():
            conf, correct = conf_k[pos].reshape(-1), correct_k[pos].reshape(-1)
            out[f"ece_{k}"] = ece(conf, correct, n_bins=ECE_BINS)
            out[f"ece_{k}_paper"] = ece(conf, correct, n_bins=ECE_BINS, paper_compatible=True)
        out["bs_plus"] = float(np.mean(np.square(1 - gold_prob[pos])))
        out["brier"] = float(np.mean(sum_sq[pos] - 2 * gold_prob[pos] + 1))
        return out

    settings = {
        "task": "translation",
        "bleu_signature": signature,
        "ece_bins": ECE_BINS,
        "ece_k": ks,
        "top_k_stored": int(preds.top_ids.shape[1]),
        "class_ties": "of m tokens tied at a place, each event correct at 1/m"
                      + ("" if preds.tied_beyond is not None else " (no tied_beyond: ties past the stored top-k "
                                                                  "unknown, counted as none)"),
    }
    return metrics, settings


def top1_events(preds: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Per position: the highest probability, and whether its label is the gold one (the events of ECE-1): bool,
    or float64 where m classes tie for the top and one is gold (each correct at 1/m)."""
    if preds.task == "tagging":
        return dense_topk_events(preds.probs, preds.gold, 1)
    return _compact_topk_events(preds, 1)


def _compact_topk_events(preds: Predictions, k: int):
    tied_beyond = preds.tied_beyond if preds.tied_beyond is not None else 0
    return topk_events(preds.top_probs, preds.gold_prob, k, tied_beyond)


def confidence_gap(confidence: np.ndarray, correct: np.ndarray) -> float:
    """The sign ECE lacks: mean confidence minus accuracy of the same events."""
    return float(np.mean(confidence, dtype=np.float64) - np.mean(correct))


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table: metric, value, 95% CI, unit and what the metric is."""
    rows = [("metric", "value", f"{100 * (1 - ALPHA):.0f}% CI", "unit", "")]
    for name, m in metrics.items():
        unit = "0-100" if paper_scale(name) == 1 else "fraction"
        ci = f"[{_number(m['ci_low'])}, {_number(m['ci_high'])}]"
        about = describe(name)
        if name in DEBIASED and "estimate" in m:
            about += f" (bias-corrected*; on the data {m['estimate']:.4f})"
        rows.append((name, _number(m["value"]), ci, unit, about))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("Fractions are raw; the paper prints them x100 (percent). BLEU is on sacrebleu's 0-100 scale.")
    if any(name in DEBIASED for name in metrics):
        lines.append(DEBIASED_NOTE)
    return "\n".join(line.rstrip() for line in lines)


def _number(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.4f}"  # undefined (null in metrics.json)


def write_metrics_json(path, preds: Predictions, metrics, settings) -> None:
    versions = {pkg: importlib.metadata.version(pkg) for pkg in ("numpy", "scikit-learn", "seqeval", "sacrebleu")}
    atomic_write_json(
        path,
        {
            "metrics": metrics,
            "paper_scale": {name: paper_scale(name) for name in metrics},
            "settings": settings | {"n_sentences": preds.n_sentences, "n_positions": preds.n_positions},
            "versions": versions | {"ensemble_distill": __version__},
            "predictions_meta": preds.meta,
        },
    )


def write_plots(out_dir: Path, preds: Predictions) -> None:
    """reliability_top1.png for every task; pr_curve.png for tagging."""
    confidence, correct = top1_events(preds)
    name = "/".join(Path(str(preds.meta.get("model", preds.task))).parts[-2:])  # the model's folder and its parent
    reliability_diagram(confidence, correct, out_dir / "reliability_top1.png", title=f"Top-1 reliability ({name})")
    if preds.task == "tagging":
        pr_curve_plot({name: pr_curve(preds)}, out_dir / "pr_curve.png")


def pr_curve(preds: Predictions) -> PRCurve:
    """The precision-recall curve of a tagging file's entity-type events (plots.py, the paper's appendix B)."""
    type_conf, type_names = entity_type_confidences(preds.probs, preds.label_names)
    return precision_recall_curve(type_conf, gold_entity_types(preds.gold, preds.label_names, type_names))
