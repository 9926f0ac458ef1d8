"""How a tagger's per-word distributions become labels (the decoding rule).

    ids = decoded_labels(probs, offsets, label_names, "iob2")    # int64 [N], a valid IOB2 path per sentence

- "argmax" (the paper's, §3.1): each word's most probable label (predictions.predicted_labels). A per-word model
  can put I-X after O or after another type, and conlleval then reads that I-X as opening a span, seqeval's strict
  IOB2 as opening none: the two F1s differ by the spans those stray tags open (1.0 to 2.1 F1 for the IID systems
  of `reproduce --scale cpu`).
- "iob2": the most probable label sequence among the valid IOB2 ones (I-X only after B-X or I-X; a sentence never
  opens with I-X), i.e. argmax over valid paths y of prod_t p_t(y_t), found by Viterbi over log p with transition
  scores 0 (allowed) or -inf (forbidden): models.crf.crf_viterbi with those fixed scores. For an IID model this is
  its most probable sequence given that the sequence is valid; both F1s then agree. It is the constrained decoding
  of taggers without a CRF (AllenNLP's `allowed_transitions` with Viterbi), here over any per-word distributions:
  an IID model's, an ensemble's mean. A single CRF tagging text (tag_text.tag) takes the best path under its own
  scores with the same -inf added (its learned transitions make an invalid step unlikely, not impossible); a
  saved file keeps the CRF's stored path (`decode`). The distributions, and so every calibration metric, stay as
  they are; only the labels (span F1, token accuracy) change.
"""

import dataclasses

import numpy as np
import torch

from .data.tags import split_tag
from .errors import UserError
from .models.crf import crf_viterbi
from .predictions import Predictions, predicted_labels

DECODES = ("argmax", "iob2")
BATCH_SENTENCES = 512  # sentences decoded at once: [512, longest, labels] float64 scores stay small
ZERO_LOG_PROB = -1e5  # the score of a zero probability: below any float32 probability's log (about -104)


def iob2_scores(label_names) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed transition and start scores of valid IOB2 paths over `label_names` [L]: float64 transitions
    [L, L] (0 where label i may precede label j, -inf where not: I-X only after B-X or I-X) and start [L] (-inf
    for I-X). Raises TagError for a name that is not O, B-TYPE or I-TYPE."""
    parts = [split_tag(str(name), i) for i, name in enumerate(label_names)]
    inside = np.array([prefix == "I" for prefix, _ in parts])
    same_type = np.array([[a == b for _, b in parts] for _, a in parts])  # [previous, next]; O's type is ""
    allowed = ~inside[None, :] | same_type
    transitions = torch.from_numpy(np.where(allowed, 0.0, -np.inf))
    return transitions, torch.from_numpy(np.where(inside, -np.inf, 0.0))


def iob2_labels(probs, offsets, label_names) -> np.ndarray:
    """The most probable valid IOB2 path of each sentence (module doc), int64 [N], for probs [N, L] over
    label_names [L] and sentence offsets int64 [S+1] (0 first, non-decreasing, N last; sentence s owns positions
    offsets[s]:offsets[s+1]). A zero probability scores ZERO_LOG_PROB, far below the log of any positive float32,
    so a path through fewer zeros always wins and every sentence has a path of finite score. Ties go as
    predictions.predicted_labels breaks them ("O" first, then the smallest name), whatever the column order.

    Raises:
        ValueError: probs not [N, len(label_names)], or offsets not as above.
        TagError: a label name that is not O, B-TYPE or I-TYPE.
    """
    probs, offsets = np.asarray(probs, dtype=np.float64), np.asarray(offsets, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] != len(label_names):
        raise ValueError(f"probs must be [N, {len(label_names)}]; got shape {probs.shape}")
    if offsets.ndim != 1 or not len(offsets) or offsets[0] != 0 or offsets[-1] != len(probs) or (
            np.diff(offsets) < 0).any():
        raise ValueError(f"offsets must rise from 0 to N = {len(probs)}; got {offsets.tolist()[:5]}...")
    names = [str(name) for name in label_names]
    # Viterbi keeps the first of tied labels: columns in predicted_labels' order of preference, mapped back after
    preference = np.array(sorted(range(len(names)), key=lambda i: (names[i] != "O", names[i])), dtype=np.int64)
    transitions, start = iob2_scores([names[i] for i in preference])
    end = torch.zeros(len(names), dtype=torch.float64)
    with np.errstate(divide="ignore"):
        log_probs = np.where(probs > 0, np.log(probs), ZERO_LOG_PROB)[:, preference]
    lengths = np.diff(offsets)
    by_length = np.argsort(lengths, kind="stable")  # a batch pads to its longest sentence: batch similar lengths
    by_length = by_length[lengths[by_length] > 0]
    labels = np.zeros(len(probs), dtype=np.int64)
    for first in range(0, len(by_length), BATCH_SENTENCES):
        batch = by_length[first:first + BATCH_SENTENCES]
        width = int(lengths[batch].max())
        mask = np.arange(width)[None, :] < lengths[batch, None]  # [B, T]
        rows = offsets[batch, None] + np.arange(width)[None, :]
        emissions = np.where(mask[..., None], log_probs[np.where(mask, rows, 0)], 0.0)  # [B, T, L]
        path = crf_viterbi(torch.from_numpy(emissions), torch.from_numpy(mask), transitions, start, end).numpy()
        labels[rows[mask]] = preference[path[mask]]
    return labels


def decoded_labels(probs, offsets, label_names, rule: str) -> np.ndarray:
    """int64 [N] labels of probs [N, L] by `rule` (DECODES; module doc). Raises ValueError for another rule."""
    if rule == "argmax":
        return predicted_labels(probs, label_names)
    if rule == "iob2":
        return iob2_labels(probs, offsets, label_names)
    raise ValueError(f"decoding rule must be one of {', '.join(DECODES)}, not {rule!r}")


def decode(predictions: Predictions, rule: str, name: str = "predictions") -> Predictions:
    """`predictions` (tagging) with the labels F1 (and token accuracy) score decoded by `rule` from its
    distributions, and the rule in its meta ("decode"); labels a file stores because a rule made them (`predict
    --decode iob2`) are decoded again. Other stored labels, a single CRF's Viterbi path, are kept: without the
    CRF's scores no other path of that model can be found, and that path is valid IOB2 only as far as the CRF
    learned it to be (predict --decode iob2 constrains the CRF's own Viterbi instead). Translation predictions
    are refused.

    Raises:
        UserError: translation predictions with a rule other than argmax (naming `name`).
    """
    if predictions.task != "tagging":
        if rule == "argmax":
            return predictions
        raise UserError(f"{name}: --decode {rule} decodes tagging predictions; these are {predictions.task}")
    made_by_rule = "decode" in predictions.meta
    if predictions.pred is not None and not made_by_rule:
        return predictions
    if rule == "argmax":
        meta = {k: v for k, v in predictions.meta.items() if k != "decode"}
        return dataclasses.replace(predictions, pred=None, meta=meta) if made_by_rule else predictions
    labels = decoded_labels(predictions.probs, predictions.sentence_offsets, predictions.label_names, rule)
    return dataclasses.replace(predictions, pred=labels, meta={**predictions.meta, "decode": rule})
