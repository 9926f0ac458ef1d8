"""Two systems on the same sentences: metric(A) - metric(B), its paired sentence-bootstrap interval and p-value.

    rows = compare("runs/student/test.npz", "runs/baseline/test.npz", ["f1_conlleval", "B-ECE"], n_boot=1000)
    print(format_comparison(rows, "student", "baseline"))

Each replicate draws sentences once and scores both systems on them, so the sentences' difficulty cancels out of
the difference; the interval (basic bootstrap) and the two-sided p-value (shift-to-null, Berg-Kirkpatrick et al.
2012) are defined in calibration/bootstrap.py. With the same seed, each system's replicates are those of its own
`evaluate` report. Metrics are the report's (report.DESCRIPTIONS), named as there or as the tables spell them
(F1, B-ECE, ECE-1, BS+, BS-, BLEU). Span F1 and BLEU come from per-sentence statistics alone, so comparing only
them costs milliseconds; any other metric runs the report's metrics function of both systems on each replicate.
"""

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..predictions import Predictions, label_rule, load_predictions, validate_predictions
from .bootstrap import Difference, paired_bootstrap
from .report import ALPHA, DEBIASED, DESCRIPTIONS, span_scorer, tagging_metrics, translation_metrics
from .task_metrics import SPAN_METRICS, TYPE_SEPARATOR, bleu_from_stats, bleu_stats

TYPED = ("precision_conlleval", "recall_conlleval", "f1_conlleval")  # the metrics reported per entity type
# How a span metric reads an I-X that opens a span (task_metrics): said beside its name, since "F1" names both
SPAN_READINGS = {name: " (conlleval)" if name.endswith("_conlleval") else " (strict)" for name in SPAN_METRICS}


def compare(pred_a, pred_b, metrics, n_boot=1000, seed=0, alpha=ALPHA, progress=True,
            decode: str | None = None) -> list[dict]:
    """One table row per metric: A's and B's values on the data, and the paired difference A - B.

    pred_a, pred_b: predictions files (paths) or Predictions of the same sentences; metrics: names (see
    `metric_key`). Row keys: metric (the report's name), a, b (each system's value as its own report gives it with
    the same n_boot and seed, in metrics.json and results.md: bias-corrected for the ECE-type metrics,
    report.DEBIASED), a_estimate, b_estimate (each system's metric on the data), difference (bias-corrected for the
    ECE-type metrics, else a - b), ci_low, ci_high (its 1 - alpha basic interval), estimate (a_estimate -
    b_estimate), p_value (two-sided), significant (p_value < alpha; False when undefined). Values are the report's
    raw ones: fractions, BLEU on 0-100. A metric undefined on the data is NaN. `decode`: the rule that labels both
    systems for F1 (decoding.decode; None: each as its file has it); tagging rows also say how each system's
    labels were made (labels_a, labels_b: predictions.label_rule).

    Raises:
        UserError: a file that is not a valid predictions file; the two not holding the same sentences; "iob2" for
            translation; an unknown metric or one the task does not report; no metric; n_boot < 1, alpha outside
            (0, 1).
    """
    (a, name_a), (b, name_b) = _load(pred_a, "A"), _load(pred_b, "B")
    if decode is not None:
        from ..decoding import decode as decoded  # torch (its Viterbi) only when asked

        a, b = decoded(a, decode, name_a), decoded(b, decode, name_b)
    check_same_sentences(a, b, name_a, name_b)
    names = list(dict.fromkeys(metric_key(name) for name in metrics))
    if not names:
        raise UserError("compare: name at least one metric")
    fn_a, fn_b = metrics_function(a, names, name_a), metrics_function(b, names, name_b)
    everything_a, everything_b = np.arange(a.n_positions), np.arange(b.n_positions)
    sentences = np.arange(a.n_sentences)
    values_a, values_b = fn_a(everything_a, sentences), fn_b(everything_b, sentences)
    differences = paired_bootstrap(fn_a, fn_b, a.sentence_offsets, b.sentence_offsets, n_boot=n_boot, alpha=alpha,
                                   seed=seed, progress=progress, debiased=DEBIASED)
    rules = {"labels_a": label_rule(a), "labels_b": label_rule(b)} if a.task == "tagging" else {}
    return [{"metric": name, "a": differences[name].value_a, "b": differences[name].value_b,
             "a_estimate": values_a[name], "b_estimate": values_b[name]} | _row(differences[name], alpha) | rules
            for name in names]


def metric_key(name: str) -> str:
    """The report's name of a metric: `b_ece` as is, or as a table spells it: B-ECE -> b_ece, ECE-1 -> ece_1,
    BS+ -> bs_plus, BS- -> bs_minus, F1 and F1 strict -> f1 (case-insensitive; seqeval's strict F1, metrics.json's
    `f1`: the paper's and reproduce's F1 is f1_conlleval); one entity type's: f1_conlleval:PER.

    Raises:
        UserError: not one of the report's metrics (the message lists them).
    """
    metric, separator, entity_type = name.partition(TYPE_SEPARATOR)
    key = metric.strip().lower().removesuffix(" strict")  # results.md's "F1 strict"
    key = key[:-1] + "_plus" if key.endswith("+") else key[:-1] + "_minus" if key.endswith("-") else key
    key = key.replace("-", "_")
    if key not in DESCRIPTIONS:
        raise UserError(f"unknown metric {name!r}; the report's metrics: {', '.join(DESCRIPTIONS)}, and "
                        f"{', '.join(TYPED)} of one entity type ({TYPED[-1]}{TYPE_SEPARATOR}PER)")
    if separator and (key not in TYPED or not entity_type.strip()):
        raise UserError(f"{name!r}: of one entity type there are {', '.join(TYPED)} (as {TYPED[-1]}"
                        f"{TYPE_SEPARATOR}PER)")
    return key + (f"{TYPE_SEPARATOR}{entity_type.strip()}" if separator else "")


def check_same_sentences(a: Predictions, b: Predictions, name_a="A", name_b="B") -> None:
    """Refuse two predictions that do not score the same sentences: same task and number of sentences; tagging:
    the same words and gold labels (by name: the label order may differ); translation: the same references (the
    target tokenisations may differ, each system's positions are its own).

    Raises:
        UserError: one line naming both and the first difference.
    """

    def fail(problem):
        raise UserError(f"{name_a} and {name_b} do not hold the same sentences: {problem}")

    if a.task != b.task:
        fail(f"{name_a} holds {a.task} predictions, {name_b} {b.task} ones")
    if a.n_sentences != b.n_sentences:
        fail(f"{a.n_sentences} sentences in {name_a}, {b.n_sentences} in {name_b}")
    if a.task == "translation":
        differ = a.references != b.references
        if differ.any():
            s = int(np.argmax(differ))
            fail(f"sentence {s}'s reference is {_short(a.references[s])} in {name_a}, {_short(b.references[s])} "
                 f"in {name_b}")
        return
    lengths_a, lengths_b = np.diff(a.sentence_offsets), np.diff(b.sentence_offsets)
    if (lengths_a != lengths_b).any():
        s = int(np.argmax(lengths_a != lengths_b))
        fail(f"sentence {s} has {lengths_a[s]} words in {name_a}, {lengths_b[s]} in {name_b}")
    gold_a, gold_b = a.label_names[a.gold], b.label_names[b.gold]
    if (gold_a != gold_b).any():
        pos = int(np.argmax(gold_a != gold_b))
        s = int(np.searchsorted(a.sentence_offsets, pos, side="right") - 1)
        fail(f"word {pos - a.sentence_offsets[s]} of sentence {s} has gold {gold_a[pos]} in {name_a}, "
             f"{gold_b[pos]} in {name_b}")


def metrics_function(preds: Predictions, names: list[str], where="predictions"):
    """(positions, sentences) -> {name: value} of `names` (report keys) for `preds`: from per-sentence statistics
    alone when every name is a span metric (tagging) or BLEU (translation), else by the report's metrics function.

    Raises:
        UserError: a name the report does not give for this file (a translation metric of a tagging file, ECE-5 of
            a file that stores fewer than 5 entries a position); `where` names the file.
    """
    if preds.task == "tagging" and all(name.partition(TYPE_SEPARATOR)[0] in SPAN_METRICS for name in names):
        scores, _ = span_scorer(preds)
        _require_reported(names, scores(np.arange(preds.n_sentences)), preds, where)
        return lambda pos, sent: {name: value for name, value in scores(sent).items() if name in names}
    if preds.task == "translation" and set(names) == {"bleu"}:
        stats, _ = bleu_stats(preds.hypotheses, preds.references)
        return lambda pos, sent: {"bleu": bleu_from_stats(stats[sent])}
    report_fn, _ = tagging_metrics(preds) if preds.task == "tagging" else translation_metrics(preds)
    _require_reported(names, report_fn(np.arange(preds.n_positions), np.arange(preds.n_sentences)), preds, where)

    def selected(pos, sent):
        metrics = report_fn(pos, sent)
        return {name: metrics[name] for name in names}

    return selected


def _require_reported(names: list[str], reported: dict, preds: Predictions, where: str) -> None:
    missing = [name for name in names if name not in reported]
    if missing:
        raise UserError(f"{where}: the report of these {preds.task} predictions has no {', '.join(missing)} "
                        f"(it has {', '.join(reported)})")


def format_p(p: float, alpha: float = ALPHA) -> str:
    """`p` to 3 decimals, or as many more (up to 6) as keep it on its own side of `alpha` once printed: a p of
    0.0496 is significant at 0.05 and must not read "0.050"; closer still, "<0.05"."""
    for decimals in range(3, 7):
        text = f"{p:.{decimals}f}"
        if (float(text) < alpha) == (p < alpha):
            return text
    return f"<{alpha:g}"  # only a p below alpha rounds across it: one above rounds to alpha or more


def format_comparison(rows: list[dict], name_a="A", name_b="B", alpha=ALPHA) -> str:
    """A plain-text table of `compare`'s rows: metric, A, B (each system's reported value, as in its metrics.json),
    A - B, its interval, p-value; * marks the bias-corrected ECE-type values."""
    level = f"{100 * (1 - alpha):g}% CI"
    table = [("metric", name_a, name_b, f"{name_a} - {name_b}", level, "p")]
    for row in rows:
        corrected = "*" if row["metric"] in DEBIASED else ""
        table.append((row["metric"] + SPAN_READINGS.get(row["metric"].partition(TYPE_SEPARATOR)[0], ""),
                      f"{row['a']:.4f}{corrected}", f"{row['b']:.4f}{corrected}",
                      f"{row['difference']:+.4f}{corrected}",
                      f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]",
                      format_p(row["p_value"], alpha) + (" (significant)" if row["significant"] else "")))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"Paired sentence bootstrap: basic interval; p two-sided (shift-to-null), significant when "
                 f"< {alpha:g}. Fractions raw (BLEU 0-100).")
    if any(row["metric"].partition(TYPE_SEPARATOR)[0] in SPAN_READINGS for row in rows):
        lines.append("Span F1 (precision, recall): strict is seqeval's strict IOB2 (results.md's 'F1 strict'), "
                     "conlleval is the paper's and reproduce's 'F1'.")
    if any(row["metric"] in DEBIASED for row in rows):
        lines.append("* ECE-type, bias-corrected: A and B as their reports give them (2t - median of the replicates, "
                     "t on the data; metrics.json and results.md, x100 there, with the same --n-boot and --seed), "
                     "A - B as 2(t_A - t_B) - median of the paired differences (not the columns' difference).")
    return "\n".join(lines)


def _row(d: Difference, alpha: float) -> dict:
    return {"difference": d.value, "ci_low": d.ci_low, "ci_high": d.ci_high, "estimate": d.estimate,
            "p_value": d.p_value, "significant": bool(d.p_value < alpha)}


def _short(text: str, width: int = 60) -> str:
    text = str(text)
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _load(source, default_name) -> tuple[Predictions, str]:
    """Predictions and the name errors give them: a file's path, or A / B with the Predictions' meta["model"]."""
    if isinstance(source, Predictions):
        name = f"{default_name} ({source.meta['model']})" if "model" in source.meta else default_name
        validate_predictions(source, name)
        return source, name
    return load_predictions(source), str(Path(source))
