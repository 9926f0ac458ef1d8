"""Span probabilities checked against brute-force enumeration of every label sequence, decoded by seqeval."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Entities

from ensemble_distill.calibration.metrics import ece
from ensemble_distill.models.crf import LinearChainCRF, crf_marginals, crf_pair_marginals
from ensemble_distill.spans import (
    SpanLabels,
    Spans,
    crf_span_probabilities,
    decode_spans,
    iid_span_probabilities,
    iob2_repaired,
    span_events,
    tagger_span_probabilities,
)

NAMES = ["B-PER", "O", "I-LOC", "I-PER", "B-LOC"]  # out of the usual order on purpose
LABELS = SpanLabels.from_names(NAMES)
L = len(NAMES)


def seqeval_spans(names, inside_opens):
    """{(type, start, end exclusive)} of one label sequence, by seqeval's lenient or strict IOB2 reading."""
    if inside_opens:
        return {(kind, a, b + 1) for kind, a, b in get_entities(list(names))}
    return {(kind, a, b) for _, kind, a, b in (e.to_tuple() for e in Entities([list(names)], IOB2).entities[0])}


def all_spans(lengths):
    """Every (sentence, start, end, type) span that fits the sentences."""
    rows = [(s, a, b, t) for s, n in enumerate(lengths) for a in range(n) for b in range(a + 1, n + 1)
            for t in range(len(LABELS.types))]
    return Spans(*map(np.array, zip(*rows)))


def brute_force(path_probs, paths, spans, sentence, inside_opens):
    """P(span) for the spans of one sentence: the summed probability of the label paths whose spans include it."""
    expected = {}
    for path, prob in zip(paths, path_probs):
        for span in seqeval_spans([NAMES[j] for j in path], inside_opens):
            expected[span] = expected.get(span, 0.0) + prob
    rows = np.flatnonzero(spans.sentence == sentence)
    return rows, np.array([expected.get((LABELS.types[spans.type[r]], spans.start[r], spans.end[r]), 0.0)
                           for r in rows])


def random_probs(n_words, seed):
    """Per-word distributions with I- labels sometimes likely after O, so openings by I- matter."""
    logits = np.random.default_rng(seed).normal(scale=1.5, size=(n_words, L))
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_span_labels_from_names():
    assert LABELS.types == ("LOC", "PER")
    assert LABELS.begin.tolist() == [4, 0] and LABELS.inside.tolist() == [2, 3] and LABELS.num_labels == 5
    with pytest.raises(ValueError, match=r"I-MISC"):
        SpanLabels.from_names(["O", "B-MISC", "B-PER", "I-PER"])
    with pytest.raises(ValueError, match="tag scheme"):
        SpanLabels.from_names(["O", "S-PER"])


@pytest.mark.parametrize("inside_opens", [True, False])
def test_decode_spans_equals_seqeval(inside_opens):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 9, size=300)  # empty sentences included
    tags = rng.integers(0, L, size=lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    spans = decode_spans(tags, offsets, LABELS, inside_opens)
    got = set(zip(spans.sentence.tolist(), spans.start.tolist(), spans.end.tolist(), spans.type.tolist()))
    expected = {(s, a, b, LABELS.types.index(kind)) for s in range(len(lengths))
                for kind, a, b in seqeval_spans([NAMES[j] for j in tags[offsets[s]:offsets[s + 1]]], inside_opens)}
    assert got == expected and len(spans) == len(expected)
    order = np.lexsort([spans.start, spans.sentence])
    assert (order == np.arange(len(spans))).all()


def test_iob2_repaired_is_the_iob1_reading_and_keeps_the_spans():
    """Each I-X opening a span becomes B-X: tags.iob1_to_iob2 on the names (the reader's conversion, written
    independently) per sentence; the result is valid IOB2 whose strict spans are seqeval's lenient spans of the
    input (what entities.jsonl reports)."""
    from ensemble_distill.data.tags import iob1_to_iob2, validate_iob2

    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 9, size=300)
    tags = rng.integers(0, L, size=lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    repaired = iob2_repaired(tags, offsets, LABELS)
    assert repaired.dtype == np.int64 and (repaired != tags).sum() > 50  # the random tags need much repair
    for s in range(len(lengths)):
        names = [NAMES[j] for j in tags[offsets[s]:offsets[s + 1]]]
        fixed = [NAMES[j] for j in repaired[offsets[s]:offsets[s + 1]]]
        assert fixed == iob1_to_iob2(names)
        validate_iob2(fixed)
        assert seqeval_spans(fixed, inside_opens=False) == seqeval_spans(names, inside_opens=True)
    # by hand: O I-PER I-PER O | I-LOC I-PER B-PER I-PER (B-PER = 0, I-PER = 3, I-LOC = 2, O = 1)
    assert iob2_repaired([1, 3, 3, 1, 2, 3, 0, 3], [0, 4, 8], LABELS).tolist() == [1, 0, 3, 1, 4, 0, 0, 3]


def test_decode_spans_by_hand():
    # PER: B I | LOC: I (opens after O) I | PER: I (opens after LOC) ; next sentence: I-LOC opens at 0
    tags = [0, 3, 1, 2, 2, 3, 2]
    spans = decode_spans(tags, [0, 6, 7], LABELS)
    assert list(zip(spans.sentence, spans.start, spans.end, spans.type)) == [
        (0, 0, 2, 1), (0, 3, 5, 0), (0, 5, 6, 1), (1, 0, 1, 0)]
    strict = decode_spans(tags, [0, 6, 7], LABELS, inside_opens=False)
    assert list(zip(strict.sentence, strict.start, strict.end, strict.type)) == [(0, 0, 2, 1)]


@pytest.mark.parametrize("inside_opens", [True, False])
def test_iid_span_probabilities_match_enumeration(inside_opens):
    lengths = [4, 1, 3, 2]
    probs = random_probs(sum(lengths), seed=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    spans = all_spans(lengths)  # length-1 spans, spans at the sentence start and end, whole sentences
    got = iid_span_probabilities(probs.astype(np.float32), offsets, spans, LABELS, inside_opens)
    assert got.dtype == np.float64
    for s, n in enumerate(lengths):
        paths = np.array(list(itertools.product(range(L), repeat=n)))
        path_probs = probs[offsets[s] + np.arange(n), paths].prod(1)
        rows, expected = brute_force(path_probs, paths, spans, s, inside_opens)
        np.testing.assert_allclose(got[rows], expected, rtol=1e-6, atol=1e-9)


def test_iid_right_boundary_by_hand():
    # PER over word 0 of "w0 w1": p0(B-PER) * (1 - p1(I-PER)); the old confidence p0(B-PER) overstates it
    probs = np.zeros((2, L))
    probs[0, [0, 1]] = 0.9, 0.1
    probs[1, [3, 1]] = 0.6, 0.4
    got = iid_span_probabilities(probs, [0, 2], Spans([0, 0], [0, 0], [1, 2], [1, 1]), LABELS)
    np.testing.assert_allclose(got, [0.9 * 0.4, 0.9 * 0.6])


def random_crf(lengths, T, seed):
    g = torch.Generator().manual_seed(seed)
    emissions = 1.5 * torch.randn(len(lengths), T, L, generator=g, dtype=torch.float64)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    emissions[~mask] = 1e3  # padding garbage must not leak in
    crf = LinearChainCRF(L).double()
    with torch.no_grad():
        for param in crf.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64))
    return crf, emissions, mask


def crf_path_probs(crf, emissions, n):
    """All L^n paths of one sentence and their probabilities, written independently of crf.py."""
    paths = torch.tensor(list(itertools.product(range(L), repeat=n)))
    scores = (emissions[torch.arange(n), paths].sum(1) + crf.start_transitions[paths[:, 0]]
              + crf.end_transitions[paths[:, -1]] + crf.transitions[paths[:, :-1], paths[:, 1:]].sum(1))
    return paths.numpy(), torch.softmax(scores, 0).detach().numpy()


@pytest.mark.parametrize("inside_opens", [True, False])
def test_crf_span_probabilities_match_enumeration(inside_opens):
    lengths = [5, 1, 3, 4]  # a padded batch
    crf, emissions, mask = random_crf(lengths, 5, seed=2)
    spans = all_spans(lengths)
    got = crf_span_probabilities(crf, emissions.float(), mask, spans, LABELS, inside_opens)
    assert got.dtype == np.float64
    for s, n in enumerate(lengths):
        paths, path_probs = crf_path_probs(crf, emissions[s, :n], n)
        rows, expected = brute_force(path_probs, paths, spans, s, inside_opens)
        np.testing.assert_allclose(got[rows], expected, rtol=1e-5, atol=1e-7)


def test_crf_length_one_span_is_marginal_minus_pair_marginal():
    lengths = [6, 3, 1]
    crf, emissions, mask = random_crf(lengths, 6, seed=3)
    scores = (crf.transitions, crf.start_transitions, crf.end_transitions)
    with torch.no_grad():
        marginals, pairs = crf_marginals(emissions, mask, *scores), crf_pair_marginals(emissions, mask, *scores)
    rows = [(s, i) for s, n in enumerate(lengths) for i in range(n)]
    sentence, start = map(np.array, zip(*rows))
    for t, (begin, inside) in enumerate(zip(LABELS.begin, LABELS.inside)):
        spans = Spans(sentence, start, start + 1, np.full(len(rows), t))
        got = crf_span_probabilities(crf, emissions, mask, spans, LABELS, inside_opens=False)
        # P(y_i = B, y_{i+1} != I) = P(y_i = B) - P(y_i = B, y_{i+1} = I); at a sentence's last word P(y_i = B)
        expected = [marginals[s, i, begin].item() - (pairs[s, i, begin, inside].item() if i + 1 < lengths[s] else 0)
                    for s, i in rows]
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_ensemble_is_mean_of_member_span_probabilities():
    lengths = [4, 2]
    crf, emissions, mask = random_crf(lengths, 4, seed=4)
    iid_emissions = 2 * torch.randn(emissions.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    members = [SimpleNamespace(head="crf", crf=crf),
               SimpleNamespace(head="iid", distributions=lambda e, m: e.softmax(-1))]
    spans = all_spans(lengths)
    got = tagger_span_probabilities(members, [emissions, iid_emissions], mask, spans, LABELS)
    expected = np.zeros(len(spans))
    for s, n in enumerate(lengths):
        paths, crf_probs = crf_path_probs(crf, emissions[s, :n], n)
        rows, from_crf = brute_force(crf_probs, paths, spans, s, True)
        iid = iid_emissions[s, :n].softmax(-1).numpy()
        _, from_iid = brute_force(iid[np.arange(n), paths].prod(1), paths, spans, s, True)
        expected[rows] = (from_crf + from_iid) / 2
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    # A single model is itself
    np.testing.assert_allclose(tagger_span_probabilities(members[:1], [emissions], mask, spans, LABELS),
                               crf_span_probabilities(crf, emissions, mask, spans, LABELS))


def test_span_events_exact_match_and_ece():
    gold = Spans([0, 0, 1], [0, 3, 2], [2, 4, 3], [1, 0, 0])
    predicted = Spans([0, 0, 1, 1], [0, 3, 2, 0], [2, 5, 3, 1], [1, 0, 1, 0])  # right; wrong end; wrong type; extra
    confidence, correct = span_events(predicted, [0.9, 0.8, 0.3, 0.1], gold)
    assert correct.tolist() == [True, False, False, False]
    assert confidence.dtype == np.float64
    # two uniform bins: {0.1, 0.3} all wrong, {0.8, 0.9} half right
    expected = 0.5 * abs(0 - 0.2) + 0.5 * abs(0.5 - 0.85)
    assert ece(confidence, correct, n_bins=2, strategy="uniform") == pytest.approx(expected)
    empty = span_events(Spans([], [], [], []), [], gold)
    assert empty[0].shape == empty[1].shape == (0,)


def test_misuse_is_refused():
    probs = random_probs(3, seed=0)
    with pytest.raises(ValueError, match="start < end"):
        iid_span_probabilities(probs, [0, 3], Spans([0], [2], [4], [0]), LABELS)
    with pytest.raises(ValueError, match="sentences"):
        iid_span_probabilities(probs, [0, 3], Spans([1], [0], [1], [0]), LABELS)
    with pytest.raises(ValueError, match="types"):
        iid_span_probabilities(probs, [0, 3], Spans([0], [0], [1], [2]), LABELS)
    with pytest.raises(ValueError, match="probabilities"):
        iid_span_probabilities(probs * 3, [0, 3], Spans([0], [0], [1], [0]), LABELS)
    with pytest.raises(ValueError, match="offsets"):
        decode_spans([0, 1, 2], [0, 2], LABELS)
    with pytest.raises(ValueError, match="label ids"):
        decode_spans([0, 5], [0, 2], LABELS)
    with pytest.raises(ValueError, match="one per predicted span"):
        span_events(Spans([0], [0], [1], [0]), [0.5, 0.5], Spans([], [], [], []))
    with pytest.raises(ValueError, match="integer"):
        Spans([0.0], [0], [1], [0])
    crf, emissions, mask = random_crf([2], 2, seed=0)
    with pytest.raises(ValueError, match="length"):
        crf_span_probabilities(crf, emissions, mask, Spans([0], [1], [3], [0]), LABELS)
