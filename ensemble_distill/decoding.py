"""How a tagger's per-word distributions become labels (the decoding rule).

    ids = decoded_labels(probs, offsets, label_names, "iob2")    # int64 [N], a valid IOB2 path per sentence

- "argmax" (the paper's, §3.1): each word's most probable label (predictions.predicted_labels). A per-word model
  can put I-X after O or after another type, and conlleval then reads that I-X as opening a span, seqeval's strict
  IOB2 as opening none: the two F1s differ by the spans those stray tags open (1.1 to 1.5 F1 for the IID systems of
  `reproduce --scale cpu`).
- "iob2": the most probable label sequence among the valid IOB2 ones (I-X only after B-X or I-X; a sentence never
  opens with I-X), i.e. argmax over valid paths y of prod_t p_t(y_t), found by Viterbi over log p with transition
  scores 0 (allowed) or -inf (forbidden): models.crf.crf_viterbi with those fixed scores. For an IID model this is
  its most probable sequence given that the sequence is valid; both F1s then agree. It is the constrained decoding
  of taggers without a CRF (AllenNLP's `allowed_transitions` with Viterbi), here over any per-word distributions:
  an IID model's, a CRF's marginals, an ensemble's mean. The distributions, and so every calibration metric, stay
  as they are; only the labels scored by F1 change.
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
    label_names [L] and sentence offsets int64 [S+1] (sentence s owns positions offsets[s]:offsets[s+1]). A zero
    probability counts as the smallest positive float64, so every sentence has a path of finite score. Ties go
    to the lower label id (torch's max), as Viterbi meets them.

    Raises:
        ValueError: probs not [N, len(label_names)] or offsets not ending at N.
        TagError: a label name that is not O, B-TYPE or I-TYPE.
    """
    probs, offsets = np.asarray(probs, dtype=np.float64), np.asarray(offsets, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] != len(label_names) or offsets[-1] != len(probs):
        raise ValueError(f"probs must be [N, {len(label_names)}] with offsets ending at N; got {probs.shape}, "
                         f"offsets ending at {offsets[-1]}")
    transitions, start = iob2_scores(label_names)
    end = torch.zeros(len(label_names), dtype=torch.float64)
    log_probs = np.log(np.maximum(probs, np.finfo(np.float64).tiny))
    lengths = np.diff(offsets)
    labels = np.empty(len(probs), dtype=np.int64)
    for first in range(0, len(lengths), BATCH_SENTENCES):
        batch = np.arange(first, min(first + BATCH_SENTENCES, len(lengths)))
        batch = batch[lengths[batch] > 0]
        if not len(batch):
            continue
        width = int(lengths[batch].max())
        mask = np.arange(width)[None, :] < lengths[batch, None]  # [B, T]
        rows = offsets[batch, None] + np.arange(width)[None, :]
        emissions = np.where(mask[..., None], log_probs[np.where(mask, rows, 0)], 0.0)  # [B, T, L]
        path = crf_viterbi(torch.from_numpy(emissions), torch.from_numpy(mask), transitions, start, end).numpy()
        labels[rows[mask]] = path[mask]
    return labels


def decoded_labels(probs, offsets, label_names, rule: str) -> np.ndarray:
    """int64 [N] labels of probs [N, L] by `rule` (DECODES; module doc). Raises ValueError for another rule."""
    if rule == "argmax":
        return predicted_labels(probs, label_names)
    if rule == "iob2":
        return iob2_labels(probs, offsets, label_names)
    raise ValueError(f"decoding rule must be one of {', '.join(DECODES)}, not {rule!r}")


def decode(predictions: Predictions, rule: str, name: str = "predictions") -> Predictions:
    """`predictions` (tagging) with the labels F1 scores decoded by `rule` from its distributions, and the rule in
    its meta ("decode"). A stored `pred` (a single CRF's Viterbi path, already a valid path of the model itself)
    is kept, so "iob2" changes only the systems scored by their argmax. Translation predictions are refused.

    Raises:
        UserError: translation predictions with a rule other than argmax (naming `name`).
    """
    if rule == "argmax":
        return predictions
    if predictions.task != "tagging":
        raise UserError(f"{name}: --decode {rule} decodes tagging predictions; these are {predictions.task}")
    if predictions.pred is not None:
        return predictions
    labels = decoded_labels(predictions.probs, predictions.sentence_offsets, predictions.label_names, rule)
    return dataclasses.replace(predictions, pred=labels, meta={**predictions.meta, "decode": rule})
