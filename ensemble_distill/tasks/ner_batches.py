"""Batches of encoder windows for a tagger and predictions of its distributions: the pieces that training
(tasks/ner.py) and tagging new text (tag_text.py) share, in a module of their own so that neither imports the other.

    batch = window_batch(split, window_ids, pad_id)         # collated windows + their frozen states
    emissions = tagger_emissions(model, batch)               # [B, words, labels]
"""

import numpy as np
import torch

from ..data.subwords import collate
from ..predictions import Predictions


def window_batch(split, window_ids, pad_id: int, device="cpu") -> dict:
    """Collated windows with their frozen states, on `device`: the frozen layers ran once, on the CPU."""
    batch = collate([split.windows[i] for i in window_ids], pad_id)
    batch["states"], batch["attention_mask"] = split.frozen.batch(window_ids)
    return {key: value.to(device) for key, value in batch.items()}


def tagger_emissions(model, batch: dict) -> torch.Tensor:
    """The model's [B, words, labels] emissions of a `window_batch`."""
    return model.emissions(batch["states"], batch["attention_mask"], batch["word_starts"], batch["word_mask"])


def tagging_predictions(distributions: list[np.ndarray], gold: list[np.ndarray], labels: list[str],
                        meta: dict, pred: list[np.ndarray] | None = None) -> Predictions:
    """Per sentence [words, labels] probabilities and [words] gold ids as one Predictions (rows renormalised:
    a mean of float32 distributions sums to 1 only to float32 rounding, and the predictions file checks the sums);
    `pred`: per sentence [words] predicted ids (a CRF's Viterbi path), else the argmax is the prediction."""
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in distributions])])
    probs = np.concatenate(distributions).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)
    return Predictions.tagging(probs, np.concatenate(gold), offsets, labels, meta=meta,
                               pred=None if pred is None else np.concatenate(pred))


def is_single_crf(models: list) -> bool:
    """Whether `models` (models.tagger.Tagger) is one CRF tagger, the one case decoded by Viterbi (tasks/ner.py
    predict_scored, tag_text.tag)."""
    return len(models) == 1 and models[0].head == "crf"
