"""Task metrics from the reference libraries: entity-span F1 with seqeval (IOB2, strict) and corpus BLEU with sacrebleu.

Both are micro-averaged corpus metrics, so each is computed from per-sentence sufficient statistics
(span counts; n-gram matches and lengths) that the libraries extract once. Summing the statistics of any
multiset of sentences and applying the library's formula gives that multiset's corpus score, which is how
the bootstrap resamples sentences without re-running the libraries a thousand times.
"""

import numpy as np
from sacrebleu.metrics import BLEU
from seqeval.scheme import IOB2, Entities

from ..data.tags import split_tag

# --- entity spans (seqeval) ------------------------------------------------------------------------------


def span_counts(gold_seqs: list[list[str]], pred_seqs: list[list[str]]) -> np.ndarray:
    """Per-sentence entity counts int64 [S, 3]: (gold spans, predicted spans, correct spans).

    Spans are seqeval's strict IOB2 entities: an entity is correct when type, start and end all match. A label
    that is not O, B-TYPE or I-TYPE raises TagError (a ValueError) naming it.
    """
    for tag in {tag for seq in (*gold_seqs, *pred_seqs) for tag in seq}:
        split_tag(tag)
    gold = Entities(gold_seqs, IOB2).entities
    pred = Entities(pred_seqs, IOB2).entities
    counts = np.zeros((len(gold), 3), dtype=np.int64)
    for s, (g, p) in enumerate(zip(gold, pred)):
        g, p = {e.to_tuple() for e in g}, {e.to_tuple() for e in p}
        counts[s] = len(g), len(p), len(g & p)
    return counts


def span_scores(counts: np.ndarray) -> dict[str, float]:
    """Micro precision, recall and F1 from span counts [..., 3] summed over sentences (0 when undefined, as seqeval)."""
    n_gold, n_pred, n_correct = np.asarray(counts).reshape(-1, 3).sum(axis=0)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


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
