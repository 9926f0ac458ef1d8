"""Span confidences: does each mean what it says, and what do exact CRF span marginals cost?

    python bench/bench_spans.py [--sentences 4000 --length 25 --seed 0]

Calibration by construction: when the gold label sequences are drawn from the model itself, a confidence that is
the probability of its event has an expected span ECE of zero (what remains is sampling noise), and its mean minus
the accuracy (conf - acc) is 0 within about 1/sqrt(spans). Three synthetic 9-label models (O and B-/I- of 4
types; emissions N(0, 2) with O lifted by 4, transitions N(0, 1) with O -> I-X and X -> I-Y at -3, as trained CRFs
learn): a CRF, an IID softmax, and an ensemble of two IID members (gold from a member drawn per sentence). Spans
are decoded from the argmax of the (mean) per-word distributions, as `predict` does. Confidences compared:
  exact        ensemble_distill.spans (IID product with the right boundary, CRF span marginal, members' mean)
  old          product over the span's words of the predicted label's probability (entities.jsonl before)
  IID of mean  the IID formula on the ensemble's averaged distributions (treats the mixture as one IID model)

Speed: all predicted spans of a CoNLL-like batch (32 x 40 words) by crf_span_marginals, against crf_marginals of
the same batch (one forward-backward pass each); the IID model's spans by iid_span_probabilities. One CPU thread,
best of --repeats.
"""

import argparse

import numpy as np
import torch

from ensemble_distill.calibration import ece
from ensemble_distill.models.crf import LinearChainCRF, crf_marginals, crf_span_marginals
from ensemble_distill.spans import (
    SpanLabels,
    crf_span_probabilities,
    decode_spans,
    iid_span_probabilities,
    span_events,
)

from common import best_time

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
LABELS = SpanLabels.from_names(NAMES)


def synthetic_crf(generator):
    crf = LinearChainCRF(len(NAMES)).double()
    transitions = torch.randn(len(NAMES), len(NAMES), generator=generator, dtype=torch.float64)
    for t, inside in enumerate(LABELS.inside):
        others = [label for label in range(len(NAMES)) if label not in (LABELS.begin[t], inside)]
        transitions[others, inside] = -3.0  # an I-X rarely follows O or another type
    with torch.no_grad():
        crf.transitions.copy_(transitions)
        crf.start_transitions.copy_(torch.randn(len(NAMES), generator=generator, dtype=torch.float64))
        crf.end_transitions.zero_()
    return crf


def synthetic_emissions(n, length, generator):
    emissions = 2 * torch.randn(n, length, len(NAMES), generator=generator, dtype=torch.float64)
    emissions[..., 0] += 4.0  # most words are O
    return emissions


def sample_crf(crf, emissions, generator):
    """Label sequences [n, T] drawn from the CRF (forward filtering, backward sampling; full-length rows)."""
    alpha = [crf.start_transitions + emissions[:, 0]]
    for t in range(1, emissions.shape[1]):
        alpha.append(torch.logsumexp(alpha[-1][:, :, None] + crf.transitions, 1) + emissions[:, t])
    tags = [torch.multinomial(torch.softmax(alpha[-1] + crf.end_transitions, 1), 1, generator=generator)[:, 0]]
    for t in range(emissions.shape[1] - 2, -1, -1):
        scores = alpha[t] + crf.transitions[:, tags[-1]].T
        tags.append(torch.multinomial(torch.softmax(scores, 1), 1, generator=generator)[:, 0])
    return torch.stack(tags[::-1], 1).numpy()


def sample_iid(probs, rng):
    """One label per word [W] drawn from its distribution probs [W, L]."""
    return (rng.random(len(probs))[:, None] > np.cumsum(probs, 1)).sum(1).clip(max=probs.shape[1] - 1)


def old_confidence(probs, offsets, spans):
    """Product over each span's words of the predicted (argmax) label's probability."""
    word_conf = probs.max(1)
    first = offsets[spans.sentence] + spans.start
    return np.array([word_conf[a:a + n].prod() for a, n in zip(first, spans.end - spans.start)])


def report(name, offsets, predicted_tags, gold_tags, confidences, rng):
    """Span ECE and conf - acc of each confidence; `floor`: the ECE of events drawn as correct with probability
    equal to the first confidence (perfect calibration), the sampling noise at this many spans."""
    spans = decode_spans(predicted_tags, offsets, LABELS)
    gold = decode_spans(gold_tags, offsets, LABELS)
    for kind, confidence in confidences.items():
        conf, correct = span_events(spans, confidence(spans), gold)
        print(f"  {name:9s} {kind:12s} spans {len(spans):6d}  ECE {100 * ece(conf, correct):5.2f}  "
              f"conf - acc {100 * (conf.mean() - correct.mean()):+6.2f}")
        if kind == "exact":
            floor = ece(conf, rng.random(len(conf)) < conf)
    print(f"  {name:9s} {'floor':12s} {'':12s}  ECE {100 * floor:5.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=4000)
    parser.add_argument("--length", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g, rng = torch.Generator().manual_seed(args.seed), np.random.default_rng(args.seed)
    S, T = args.sentences, args.length
    offsets = np.arange(S + 1) * T
    mask = torch.ones(S, T, dtype=torch.bool)

    print(f"Span ECE (x100, 10 quantile bins) with gold drawn from the model; {S} sentences x {T} words")
    crf, emissions = synthetic_crf(g), synthetic_emissions(S, T, g)
    scores = (crf.transitions, crf.start_transitions, crf.end_transitions)
    with torch.no_grad():
        marginals = crf_marginals(emissions, mask, *scores).reshape(S * T, -1).numpy()
    report("CRF", offsets, marginals.argmax(1), sample_crf(crf, emissions, g).reshape(-1), {
        "exact": lambda spans: crf_span_probabilities(crf, emissions, mask, spans, LABELS),
        "old": lambda spans: old_confidence(marginals, offsets, spans)}, rng)

    members = [torch.softmax(synthetic_emissions(S, T, g), -1).reshape(S * T, -1).numpy() for _ in range(2)]
    report("IID", offsets, members[0].argmax(1), sample_iid(members[0], rng), {
        "exact": lambda spans: iid_span_probabilities(members[0], offsets, spans, LABELS),
        "old": lambda spans: old_confidence(members[0], offsets, spans)}, rng)

    mean = (members[0] + members[1]) / 2
    drawn_from = np.repeat(rng.integers(0, 2, S), T)  # the mixture: one member per sentence
    gold = np.where(drawn_from == 0, sample_iid(members[0], rng), sample_iid(members[1], rng))
    report("ensemble", offsets, mean.argmax(1), gold, {
        "exact": lambda spans: np.mean([iid_span_probabilities(m, offsets, spans, LABELS) for m in members], 0),
        "IID of mean": lambda spans: iid_span_probabilities(mean, offsets, spans, LABELS),
        "old": lambda spans: old_confidence(mean, offsets, spans)}, rng)

    B, T = 32, 40
    emissions, mask = synthetic_emissions(B, T, g).float(), torch.ones(B, T, dtype=torch.bool)
    mask[1:] = torch.arange(T)[None, :] < torch.randint(5, T + 1, (B - 1, 1), generator=g)
    with torch.no_grad():
        tags = crf_marginals(emissions, mask, *scores)[mask].argmax(1).numpy()
    spans = decode_spans(tags, np.concatenate([[0], np.cumsum(mask.sum(1).numpy())]), LABELS)
    query = [torch.as_tensor(x) for x in (spans.sentence, spans.start, spans.end, LABELS.begin[spans.type],
                                          LABELS.inside[spans.type])]
    with torch.no_grad():
        marginal_s = best_time(lambda: crf_marginals(emissions, mask, *scores), args.repeats)
        span_s = best_time(lambda: crf_span_marginals(emissions, mask, *scores, *query), args.repeats)
    print(f"CRF batch {B} x {T} (float32 in), {len(spans)} predicted spans, 1 thread, best of {args.repeats}:")
    print(f"  crf_marginals {marginal_s * 1e3:.2f} ms   crf_span_marginals {span_s * 1e3:.2f} ms   "
          f"ratio {span_s / marginal_s:.2f}")
    spans = decode_spans(members[0].argmax(1), offsets, LABELS)
    iid_s = best_time(lambda: iid_span_probabilities(members[0], offsets, spans, LABELS), args.repeats)
    print(f"IID: {len(spans)} spans of {S} sentences by iid_span_probabilities: {iid_s * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
