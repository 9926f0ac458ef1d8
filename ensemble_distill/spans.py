"""Entity spans and their confidences: the probability that exactly the span [start, end) carries type X.

A span of type X over words [i, j) of a sentence of n words is the event

    word i opens it           y_i = B-X, or (`inside_opens`) y_i = I-X where y_{i-1} is neither B-X nor I-X (or i = 0)
    words i+1 .. j-1          y_k = I-X
    word j stops it           y_j != I-X, or j = n

The right boundary is part of the event: without it a confidence is that of "a span of type X starts at i and
covers at least j - i words", which a longer predicted span also satisfies. The reading of an opening I-X
(`inside_opens=True`, the default) is conlleval's and `seqeval.metrics.sequence_labeling.get_entities`': the one
that turns predicted label sequences into spans here (`decode_spans`) and in entities.jsonl, so the confidence is
the probability of the very event reported. IOB2-trained models still give I-X after O some probability, and an
argmax tagger does emit it. `inside_opens=False` is strict IOB2 (seqeval's IOB2 strict mode, which span F1
uses): an I-X that does not continue a span opens none, so only B-X opens. Gold spans are valid IOB2, where both
readings agree.

Per model family (all exact, in float64):
- IID (independent per-word distributions p_k): p_i(B-X) [+ p_i(I-X) (1 - p_{i-1}(B-X) - p_{i-1}(I-X))]
  * prod_{i<k<j} p_k(I-X) * (1 - p_j(I-X)): `iid_span_probabilities`.
- CRF: the span marginal by forward-backward, `models.crf.crf_span_marginals` (`crf_span_probabilities`).
- Ensemble: the mean of its members' span probabilities (the mixture's own probability of the event), which is
  not the IID formula applied to the averaged per-word distributions: `tagger_span_probabilities`.

`span_events` turns predicted spans with confidences and gold spans into (confidence, correct) events for
`calibration.metrics.ece` and reliability diagrams: correct means type, start and end all match a gold span.

Layouts. Flat (the predictions format): per-word arrays of all sentences laid end to end, sentence s owning words
offsets[s]:offsets[s+1], as `Predictions.sentence_offsets`. Batched (a model's forward pass): [B, T, ...] with a
bool mask, and `Spans.sentence` is then the batch row.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .data.tags import split_tag
from .models.crf import crf_span_marginals
from .predictions import PROB_TOLERANCE


@dataclass(frozen=True)
class SpanLabels:
    """The label ids of each entity type: `types` sorted, `begin` and `inside` int64 [X] ids of B-type and I-type."""

    types: tuple[str, ...]
    begin: np.ndarray
    inside: np.ndarray
    num_labels: int

    @classmethod
    def from_names(cls, label_names) -> "SpanLabels":
        """From a label vocabulary such as ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"] (any order).

        Raises:
            ValueError: a label that is not O, B-TYPE or I-TYPE (a TagError), or a type without its B- or I- label.
        """
        names = [str(name) for name in label_names]
        ids = {split_tag(name, index): index for index, name in enumerate(names)}
        types = sorted({entity_type for _, entity_type in ids} - {""})
        missing = [f"{prefix}-{t}" for t in types for prefix in "BI" if (prefix, t) not in ids]
        if missing:
            raise ValueError(f"label vocabulary lacks {missing}: every entity type needs its B- and I- label")
        begin = np.array([ids["B", t] for t in types], dtype=np.int64)
        inside = np.array([ids["I", t] for t in types], dtype=np.int64)
        return cls(tuple(types), begin, inside, len(names))


@dataclass(frozen=True)
class Spans:
    """Entity spans, row n of four int64 [N] arrays: `sentence` (or batch row), `start` (first word), `end` (one
    past the last word; within the sentence) and `type` (index into SpanLabels.types)."""

    sentence: np.ndarray
    start: np.ndarray
    end: np.ndarray
    type: np.ndarray

    def __post_init__(self):
        columns = [np.asarray(getattr(self, name)) for name in ("sentence", "start", "end", "type")]
        if any(c.ndim != 1 or c.shape != columns[0].shape or (c.size and c.dtype.kind not in "iu") for c in columns):
            raise ValueError("Spans needs four integer [N] arrays of one length; got "
                             + ", ".join(f"{c.dtype} {c.shape}" for c in columns))
        for name, column in zip(("sentence", "start", "end", "type"), columns):
            object.__setattr__(self, name, column.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return len(self.sentence)


def decode_spans(tags, offsets, labels: SpanLabels, inside_opens: bool = True) -> Spans:
    """The entity spans of label sequences: tags int [W] (flat), offsets int [S+1]; sorted by (sentence, start).

    With `inside_opens` (default) equal to seqeval's `get_entities` per sentence; without, to seqeval's strict
    IOB2 entities.

    Raises:
        ValueError: offsets not from 0 to W non-decreasing, or a tag outside [0, labels.num_labels).
    """
    tags, offsets, kind, inside, continues = _reading(tags, offsets, labels)
    opens = np.flatnonzero((kind >= 0) & ~continues & (inside_opens | ~inside))
    # A span runs to the next word that does not continue it; sentence starts never continue, W closes the last.
    breaks = np.append(np.flatnonzero(~continues), len(tags))
    ends = breaks[np.searchsorted(breaks, opens, side="right")]
    sentence = np.searchsorted(offsets, opens, side="right") - 1
    return Spans(sentence, opens - offsets[sentence], ends - offsets[sentence], kind[opens])


def iob2_repaired(tags, offsets, labels: SpanLabels) -> np.ndarray:
    """Label sequences made valid IOB2 the way `decode_spans` reads them (conlleval, seqeval's `get_entities`): each
    I-X that opens a span (after O, after another type, or first in its sentence) becomes B-X, so the result's
    strict-IOB2 spans are decode_spans(tags). tags int [W] (flat), offsets int [S+1]; returns int64 [W].

    Raises:
        ValueError: as decode_spans.
    """
    tags, _, kind, inside, continues = _reading(tags, offsets, labels)
    opening = inside & ~continues
    repaired = tags.copy()
    repaired[opening] = labels.begin[kind[opening]]
    return repaired


def _reading(tags, offsets, labels: SpanLabels):
    """tags int64 [W], offsets int64 [S+1] (both checked) and, per word, its type (int64 [W], -1 for O), whether its
    label is I-, and whether it continues the span of the word before (an I- of that word's type, not first in its
    sentence)."""
    tags = _as_int(tags, "tags")
    offsets = _check_offsets(offsets, len(tags))
    if tags.size and (tags.min() < 0 or tags.max() >= labels.num_labels):
        raise ValueError(f"tags must be label ids in [0, {labels.num_labels})")
    type_of = np.full(labels.num_labels, -1, dtype=np.int64)  # -1: O
    type_of[labels.begin] = type_of[labels.inside] = np.arange(len(labels.types))
    is_inside = np.zeros(labels.num_labels, dtype=bool)
    is_inside[labels.inside] = True

    kind, inside = type_of[tags], is_inside[tags]
    previous = np.roll(kind, 1)
    previous[offsets[:-1][offsets[:-1] < len(tags)]] = -1  # a sentence's first word follows nothing
    return tags, offsets, kind, inside, inside & (previous == kind)


def iid_span_probabilities(probs, offsets, spans: Spans, labels: SpanLabels, inside_opens: bool = True):
    """P(exactly each span) [N] float64 under independent per-word distributions probs [W, L] (flat layout).

    p_i(B-X) [+ p_i(I-X) (1 - p_{i-1}(B-X) - p_{i-1}(I-X))] * prod_{i<k<j} p_k(I-X) * (1 - p_j(I-X)), the
    bracket with `inside_opens` (at i = 0 it is p_0(I-X)) and the last factor when word j exists.

    Raises:
        ValueError: probs not [W, labels.num_labels] probabilities, bad offsets, or a span outside its sentence.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != labels.num_labels:
        raise ValueError(f"probs must be [W, {labels.num_labels}]; got shape {probs.shape}")
    if probs.size and not (np.isfinite(probs).all() and -PROB_TOLERANCE <= probs.min()
                           and probs.max() <= 1 + PROB_TOLERANCE):
        raise ValueError("probs must be probabilities in [0, 1]")
    offsets = _check_offsets(offsets, len(probs))
    _check_spans(spans, np.diff(offsets), labels)
    first = offsets[spans.sentence] + spans.start  # flat word ids
    stop, sentence_end = offsets[spans.sentence] + spans.end, offsets[spans.sentence + 1]
    begin, inside = labels.begin[spans.type], labels.inside[spans.type]

    def p(words, label_ids):
        return np.clip(probs[words, label_ids].astype(np.float64), 0, 1)

    opening = p(first, begin)
    if inside_opens:
        before = np.maximum(first - 1, 0)
        not_typed_before = np.where(spans.start > 0, np.clip(1 - p(before, begin) - p(before, inside), 0, 1), 1)
        opening = opening + p(first, inside) * not_typed_before
    # The run's inside words: ragged ranges first+1..stop-1 flattened for one gather, multiplied per span.
    runs = spans.end - spans.start - 1
    run_starts = np.cumsum(runs) - runs
    words = np.repeat(first + 1 - run_starts, runs) + np.arange(runs.sum())
    running = np.ones(len(spans))
    if len(words):
        has_run = runs > 0  # reduceat over the non-empty runs: they tile `words` in order
        running[has_run] = np.multiply.reduceat(p(words, np.repeat(inside, runs)), run_starts[has_run])
    after = np.minimum(stop, max(len(probs) - 1, 0))
    closing = np.where(stop < sentence_end, 1 - p(after, inside), 1)
    return opening * running * closing


def crf_span_probabilities(crf, emissions, mask, spans: Spans, labels: SpanLabels, inside_opens: bool = True):
    """P(exactly each span) [N] float64 under a linear-chain CRF (batched layout; `spans.sentence` = batch row).

    crf: a models.crf.LinearChainCRF; emissions [B, T, L] its input scores, mask [B, T] bool.

    Raises:
        ValueError: a bad mask, or a span outside its row or type outside the labels.
    """
    if emissions.shape[-1] != labels.num_labels:
        raise ValueError(f"emissions must be [B, T, {labels.num_labels}]; got {tuple(emissions.shape)}")
    _check_spans(spans, mask.sum(1).cpu().numpy(), labels)

    def ids(x):
        return torch.as_tensor(x, device=emissions.device)

    probs = crf_span_marginals(emissions.double(), mask, crf.transitions, crf.start_transitions,
                               crf.end_transitions, ids(spans.sentence), ids(spans.start), ids(spans.end),
                               ids(labels.begin[spans.type]), ids(labels.inside[spans.type]), inside_opens)
    return probs.cpu().numpy()


def tagger_span_probabilities(models, emissions, mask, spans: Spans, labels: SpanLabels, inside_opens: bool = True):
    """P(exactly each span) [N] float64 under an ensemble: the mean over `models` (models.tagger.Tagger) of each
    member's span probability, from its `emissions` [B, T, L] (one per model, same order) and the batch mask
    [B, T]. A list of one model is that model. `spans.sentence` is the batch row.

    Raises:
        ValueError: no models, emissions not one per model, or what the per-head functions raise.
    """
    if not models or len(models) != len(emissions):
        raise ValueError(f"need one emissions tensor per model; got {len(models)} models, {len(emissions)} tensors")
    offsets = np.concatenate([[0], np.cumsum(mask.sum(1).cpu().numpy())])
    per_model = []
    for model, scores in zip(models, emissions):
        if model.head == "crf":
            per_model.append(crf_span_probabilities(model.crf, scores, mask, spans, labels, inside_opens))
        else:
            probs = model.distributions(scores, mask)[mask].detach().double().cpu().numpy()
            per_model.append(iid_span_probabilities(probs, offsets, spans, labels, inside_opens))
    return np.mean(per_model, axis=0)


def span_events(predicted: Spans, confidence, gold: Spans):
    """(confidence float64 [N], correct bool [N]) for the predicted spans: correct when a gold span has the same
    sentence, start, end and type. Input for calibration.metrics.ece and reliability diagrams; precision at a
    threshold c is correct[confidence >= c].mean(), recall correct[confidence >= c].sum() / len(gold).

    Raises:
        ValueError: confidence not [N] numbers in [0, 1].
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.shape != (len(predicted),):
        raise ValueError(f"confidence must be [{len(predicted)}] (one per predicted span); got {confidence.shape}")
    if confidence.size and not (np.isfinite(confidence).all() and -PROB_TOLERANCE <= confidence.min()
                                and confidence.max() <= 1 + PROB_TOLERANCE):
        raise ValueError("confidence must be probabilities in [0, 1]")
    columns = [np.concatenate([getattr(predicted, name), getattr(gold, name)])
               for name in ("sentence", "start", "end", "type")]
    if any(c.size and c.min() < 0 for c in columns):
        raise ValueError("span sentences, starts, ends and types must be non-negative")
    keys = np.ravel_multi_index(columns, [int(c.max(initial=0)) + 1 for c in columns])
    return np.clip(confidence, 0, 1), np.isin(keys[:len(predicted)], keys[len(predicted):])


def _as_int(x, name):
    x = np.asarray(x)
    if x.ndim != 1 or (x.size and x.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D integer array; got {x.dtype} {x.shape}")
    return x.astype(np.int64, copy=False)


def _check_offsets(offsets, n_words):
    offsets = _as_int(offsets, "offsets")
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != n_words or (np.diff(offsets) < 0).any():
        raise ValueError(f"offsets must rise from 0 to the number of words ({n_words})")
    return offsets


def _check_spans(spans: Spans, lengths, labels: SpanLabels):
    """Each span inside its sentence (lengths [S]) with a known type."""
    if not len(spans):
        return
    if spans.sentence.min() < 0 or spans.sentence.max() >= len(lengths):
        raise ValueError(f"span sentences must be in [0, {len(lengths)})")
    if (spans.start < 0).any() or (spans.end <= spans.start).any() or (spans.end > lengths[spans.sentence]).any():
        raise ValueError("each span needs 0 <= start < end <= its sentence's length")
    if spans.type.min() < 0 or spans.type.max() >= len(labels.types):
        raise ValueError(f"span types must be in [0, {len(labels.types)})")
