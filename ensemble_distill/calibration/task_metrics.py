"""Task metrics: entity-span F1 as seqeval scores it, corpus BLEU with sacrebleu, and confidence thresholds.

Span F1 and BLEU are micro-averaged corpus metrics, so each is computed from per-sentence sufficient statistics
(span counts; n-gram matches and lengths) extracted once. Summing the statistics of any multiset of sentences and
applying the library's formula gives that multiset's corpus score, which is how the bootstrap resamples sentences
without re-running the libraries a thousand times.

Span F1 has two readings of a predicted `I-X` that does not continue a span of type X (after `O`, after another
type, or opening its sentence); gold spans are valid IOB2, where both agree:
- `strict`: seqeval's `mode="strict", scheme=IOB2`: such an I-X opens no span (the span is lost).
- `conlleval`: seqeval's default mode, which reproduces the conlleval script the CoNLL shared tasks and the paper
  used: such an I-X opens a span. Gold `B-PER I-PER O B-LOC` against `I-PER I-PER O B-LOC`: conlleval 1.00,
  strict 0.67.
Spans are decoded by `spans.decode_spans`, the reading of entities.jsonl, checked against seqeval in the tests.
"""

from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU

from ..data.tags import split_tag

# --- entity spans ---------------------------------------------------------------------------------------

SPAN_MODES = ("strict", "conlleval")
# The report's span metrics: the strict ones keep their historical names (metrics.json files written before the
# conlleval reading was added hold strict values under "f1"), the conlleval ones carry a suffix.
SPAN_METRICS = ("precision", "recall", "f1", "precision_conlleval", "recall_conlleval", "f1_conlleval")
TYPE_SEPARATOR = ":"  # a metric of one entity type: f1_conlleval:PER (type_span_metrics)


def span_counts(gold_seqs: list[list[str]], pred_seqs: list[list[str]], mode: str = "strict") -> np.ndarray:
    """Per-sentence entity counts int64 [S, 3]: (gold spans, predicted spans, correct spans), read in `mode`.

    A span is correct when type, start and end all match a gold span.

    Raises:
        ValueError: `mode` not in SPAN_MODES; gold and predicted sequences of different numbers or lengths; a label
            that is not O, B-TYPE or I-TYPE (a TagError, naming it).
    """
    if len(gold_seqs) != len(pred_seqs):
        raise ValueError(f"{len(gold_seqs)} gold sequences but {len(pred_seqs)} predicted ones")
    lengths = np.array([len(seq) for seq in gold_seqs], dtype=np.int64)
    differ = lengths != [len(seq) for seq in pred_seqs]
    if differ.any():
        s = int(np.argmax(differ))
        raise ValueError(f"sentence {s} has {lengths[s]} gold labels but {len(pred_seqs[s])} predicted ones")
    names = sorted({tag for seq in (*gold_seqs, *pred_seqs) for tag in seq})
    index = {name: i for i, name in enumerate(names)}
    gold = np.array([index[tag] for seq in gold_seqs for tag in seq], dtype=np.int64)
    pred = np.array([index[tag] for seq in pred_seqs for tag in seq], dtype=np.int64)
    return label_span_counts(gold, pred, np.concatenate([[0], np.cumsum(lengths)]), names, mode)


def label_span_counts(gold, pred, offsets, label_names, mode: str = "strict") -> np.ndarray:
    """`span_counts` of label ids: gold, pred int [W] into `label_names` [C], sentence s owning words
    offsets[s]:offsets[s+1] (the predictions-file layout). Returns int64 [S, 3]; no Python loop over words.

    Raises:
        ValueError: as `label_span_type_counts`.
    """
    return label_span_type_counts(gold, pred, offsets, label_names, mode)[0].sum(axis=1)


def label_span_type_counts(gold, pred, offsets, label_names, mode: str = "strict") -> tuple[np.ndarray, list[str]]:
    """Per-sentence entity counts of each entity type: int64 [S, T, 3] (gold, predicted, correct spans of type t
    in sentence s, read in `mode`) and the T type names (sorted; those the labels name). Arguments as
    `label_span_counts`, whose counts are these summed over types; scored per type (span_scores of [:, t]) they
    give seqeval's classification_report.

    Raises:
        ValueError: `mode` not in SPAN_MODES, a label that is not O, B-TYPE or I-TYPE (a TagError), ids outside
            the labels, or offsets that do not rise from 0 to W.
    """
    from ..spans import SpanLabels, decode_spans, span_events  # spans.py loads torch; keep calibration light

    if mode not in SPAN_MODES:
        raise ValueError(f"mode must be one of {SPAN_MODES}, got {mode!r}")
    gold, pred, offsets = (np.asarray(x, dtype=np.int64) for x in (gold, pred, offsets))
    if gold.shape != pred.shape:
        raise ValueError(f"gold and pred must have one label per word; got shapes {gold.shape} and {pred.shape}")
    # Onto a vocabulary with both B- and I- of every type (SpanLabels needs them; a label set may lack an I-X).
    parts = [split_tag(str(name), i) for i, name in enumerate(label_names)]
    types = sorted({entity_type for _, entity_type in parts} - {""})
    vocab = ["O", *(f"{prefix}-{t}" for t in types for prefix in "BI")]
    remap = np.array([vocab.index("O" if prefix == "O" else f"{prefix}-{t}") for prefix, t in parts], dtype=np.int64)
    if gold.size and (min(gold.min(), pred.min()) < 0 or max(gold.max(), pred.max()) >= len(remap)):
        raise ValueError(f"label ids must lie in [0, {len(remap)})")
    labels = SpanLabels.from_names(vocab)
    inside_opens = mode == "conlleval"
    gold_spans = decode_spans(remap[gold], offsets, labels, inside_opens)
    pred_spans = decode_spans(remap[pred], offsets, labels, inside_opens)
    _, correct = span_events(pred_spans, np.zeros(len(pred_spans)), gold_spans)  # exact (start, end, type) match
    n, n_types = len(offsets) - 1, len(labels.types)

    def count(spans, keep=slice(None)):  # spans per (sentence, type) cell
        cells = spans.sentence[keep] * n_types + spans.type[keep]
        return np.bincount(cells, minlength=n * n_types).reshape(n, n_types)

    counts = np.stack([count(gold_spans), count(pred_spans), count(pred_spans, correct)], axis=2).astype(np.int64)
    return counts, list(labels.types)


def span_scores(counts: np.ndarray) -> dict[str, float]:
    """Micro precision, recall and F1 from span counts [..., 3] summed over sentences; NaN where undefined.

    precision = correct / predicted (NaN without a predicted span), recall = correct / gold (NaN without a gold
    span), F1 = 2 correct / (gold + predicted), the harmonic mean of the two where both are defined, and NaN only
    without any span. seqeval scores 0/0 as 0 instead (with a warning); everywhere else the values agree.
    """
    n_gold, n_pred, n_correct = np.asarray(counts).reshape(-1, 3).sum(axis=0)
    precision = n_correct / n_pred if n_pred else float("nan")
    recall = n_correct / n_gold if n_gold else float("nan")
    f1 = 2 * n_correct / (n_gold + n_pred) if n_gold + n_pred else float("nan")
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def span_metrics(strict: np.ndarray, conlleval: np.ndarray) -> dict[str, float]:
    """The report's SPAN_METRICS from the span counts [..., 3] of the same sentences read strictly and as conlleval."""
    return span_scores(strict) | {f"{name}_conlleval": value for name, value in span_scores(conlleval).items()}


def type_span_metrics(counts: np.ndarray, types: list[str]) -> dict[str, float]:
    """Each entity type's conlleval precision, recall and F1 from its span counts [S, T, 3]
    (label_span_type_counts), named `<metric>_conlleval:<type>` (f1_conlleval:PER): seqeval's
    classification_report in its default mode, the paper's reading. NaN where undefined, as span_scores."""
    return {f"{name}_conlleval{TYPE_SEPARATOR}{t}": value for i, t in enumerate(types)
            for name, value in span_scores(counts[:, i]).items()}


# --- confidence thresholds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """The predicted spans whose confidence is >= `threshold`: how many (`n_kept`), the fraction of them that are
    correct (`precision`, NaN when none is kept) and the fraction of the `n_gold` gold spans they find (`recall`,
    NaN when there is no gold span)."""

    threshold: float
    precision: float
    recall: float
    n_kept: int


def threshold_for_precision(confidence, correct, n_gold: int, q: float) -> OperatingPoint | None:
    """The smallest confidence threshold whose precision reaches `q`, and its operating point (pick it on dev).

    confidence float [N] and correct bool [N]: one event per predicted span (`spans.span_events`); n_gold: the
    number of gold spans. A threshold t keeps the spans with confidence >= t, so spans of equal confidence are kept
    or dropped together and precision is only defined at the distinct confidence values: the returned threshold is
    one of them, the confidence of the least confident span kept. Precision is not monotone in t; the smallest t
    with precision(t) >= q keeps the most spans, hence has the highest recall, of all thresholds that reach q.
    Returns None when no threshold reaches q (nor any span at all is predicted); keeping no span is not offered as
    an answer, since its precision is undefined.

    Raises:
        ValueError: q outside (0, 1]; confidence and correct not two [N] arrays; a confidence that is NaN or
            infinite; n_gold below the number of correct spans.
    """
    if not 0 < q <= 1:
        raise ValueError(f"q (the target precision) must lie in (0, 1], got {q}")
    confidence, correct = _span_events(confidence, correct, n_gold)
    order = np.argsort(-confidence, kind="stable")
    confidence, hits = confidence[order], np.cumsum(correct[order])
    kept = np.arange(1, len(confidence) + 1)
    tie_ends = np.append(confidence[1:] != confidence[:-1], True)  # prefix i keeps every span >= confidence[i]
    reaching = np.flatnonzero(tie_ends & (hits / kept >= q))
    if not len(reaching):
        return None
    return precision_recall_at(float(confidence[reaching[-1]]), confidence, correct[order], n_gold)


def precision_recall_at(threshold: float, confidence, correct, n_gold: int) -> OperatingPoint:
    """The operating point of keeping the spans with confidence >= `threshold` (apply a dev threshold on test).

    confidence float [N], correct bool [N], n_gold: as `threshold_for_precision`.

    Raises:
        ValueError: as `threshold_for_precision`, or a NaN threshold.
    """
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    confidence, correct = _span_events(confidence, correct, n_gold)
    kept = confidence >= threshold
    n_kept, n_correct = int(kept.sum()), int(correct[kept].sum())
    return OperatingPoint(float(threshold), n_correct / n_kept if n_kept else float("nan"),
                          n_correct / n_gold if n_gold else float("nan"), n_kept)


def _span_events(confidence, correct, n_gold):
    """confidence as float64 [N] and correct as bool [N], checked against each other and n_gold."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct)
    if confidence.ndim != 1 or correct.shape != confidence.shape:
        raise ValueError(f"confidence and correct must be two [N] arrays; got shapes {confidence.shape} and "
                         f"{correct.shape}")
    if correct.dtype != bool and not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must be bools (or 0 and 1)")
    if not np.isfinite(confidence).all():
        raise ValueError("confidence has NaN or infinite values")
    correct = correct.astype(bool)
    if n_gold < correct.sum():
        raise ValueError(f"n_gold={n_gold} is below the {int(correct.sum())} correct spans (each matches a gold one)")
    return confidence, correct


# --- BLEU (sacrebleu) -----------------------------------------------------------------------------------


def bleu_metric() -> BLEU:
    """sacrebleu's BLEU with its default settings (13a tokenisation, exp smoothing): the standard corpus BLEU."""
    return BLEU()


def bleu_stats(hypotheses, references) -> tuple[np.ndarray, str]:
    """Per-sentence BLEU statistics int64 [S, 2 + 2*4] (lengths, then n-gram matches and totals, sacrebleu's
    layout) and sacrebleu's signature of the settings, to print next to the score."""
    metric = bleu_metric()
    stats = metric._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.asarray(stats, dtype=np.int64).reshape(len(hypotheses), -1), str(metric.get_signature())


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU (0-100) of the sentences whose statistics [S, 10] are given, by sacrebleu's own formula."""
    return float(bleu_metric()._compute_score_from_stats(np.asarray(stats).sum(axis=0).tolist()).score)
