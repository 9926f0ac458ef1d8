"""CRF algorithms checked against brute-force enumeration of all paths, torch-struct and autograd of log Z."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from ensemble_distill.models.crf import (
    LinearChainCRF,
    crf_log_partition,
    crf_marginals,
    crf_pair_marginals,
    crf_sequence_score,
    crf_span_marginals,
    crf_viterbi,
)

EXACT = dict(rtol=1e-5, atol=1e-5)


def random_crf(B, T, L, lengths, seed=0):
    """Emissions, mask and (transitions, start, end) in float64; padding emissions are large garbage."""
    g = torch.Generator().manual_seed(seed)
    emissions = 2 * torch.randn(B, T, L, generator=g, dtype=torch.float64)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    emissions[~mask] = 1e3
    scores = [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(L, L), (L,), (L,)]]
    return emissions, mask, scores


def enumerate_paths(emissions, length, transitions, start, end):
    """All L^length paths of one sequence [P, length] and their scores [P], written independently of crf.py."""
    L = emissions.shape[-1]
    paths = torch.tensor(list(itertools.product(range(L), repeat=length)))
    scores = emissions[torch.arange(length), paths].sum(1) + start[paths[:, 0]] + end[paths[:, -1]]
    return paths, scores + transitions[paths[:, :-1], paths[:, 1:]].sum(1)


@pytest.mark.parametrize("L", [3, 4])
def test_matches_brute_force_enumeration(L):
    lengths = [5, 3, 1, 4]
    emissions, mask, scores = random_crf(4, 5, L, lengths, seed=L)
    tags = torch.randint(0, L, (4, 5), generator=torch.Generator().manual_seed(1)).masked_fill(~mask, -100)

    log_z = crf_log_partition(emissions, mask, *scores)
    marginals = crf_marginals(emissions, mask, *scores)
    best = crf_viterbi(emissions, mask, *scores)
    gold = crf_sequence_score(emissions, tags, mask, *scores)
    for b, n in enumerate(lengths):
        paths, path_scores = enumerate_paths(emissions[b, :n], n, *scores)
        expected_log_z = torch.logsumexp(path_scores, 0)
        probs = torch.exp(path_scores - expected_log_z)
        expected_marginals = (torch.nn.functional.one_hot(paths, L) * probs[:, None, None]).sum(0)
        gold_index = (paths == tags[b, :n]).all(1).nonzero().item()

        torch.testing.assert_close(log_z[b], expected_log_z, **EXACT)
        torch.testing.assert_close(marginals[b, :n], expected_marginals, **EXACT)
        assert marginals[b, n:].abs().sum() == 0
        assert best[b, :n].tolist() == paths[path_scores.argmax()].tolist()
        assert (best[b, n:] == -1).all()
        torch.testing.assert_close(gold[b], path_scores[gold_index], **EXACT)
        torch.testing.assert_close(log_z[b] - gold[b], -torch.log(probs[gold_index]), **EXACT)


def test_module_nll_is_log_partition_minus_gold_score_with_reductions():
    emissions, mask, scores = random_crf(3, 4, 3, [4, 2, 3])
    crf = LinearChainCRF(3).double()
    with torch.no_grad():
        for param, value in zip([crf.transitions, crf.start_transitions, crf.end_transitions], scores):
            param.copy_(value)
    tags = torch.tensor([[0, 1, 2, 0], [2, 2, -100, -100], [1, 0, 1, -100]])
    expected = torch.stack(
        [
            torch.logsumexp(s, 0) - s[(p == tags[b, :n]).all(1)].squeeze()
            for b, n in enumerate([4, 2, 3])
            for p, s in [enumerate_paths(emissions[b, :n], n, *scores)]
        ]
    )
    torch.testing.assert_close(crf.nll(emissions, tags, mask, reduction="none"), expected, **EXACT)
    torch.testing.assert_close(crf.nll(emissions, tags, mask, reduction="sum"), expected.sum(), **EXACT)
    torch.testing.assert_close(crf.nll(emissions, tags, mask), expected.mean(), **EXACT)
    with pytest.raises(ValueError, match="reduction"):
        crf.nll(emissions, tags, mask, reduction="max")


def test_matches_torch_struct():
    torch_struct = pytest.importorskip("torch_struct")
    lengths = torch.tensor([7, 2, 5, 7])  # torch-struct needs length >= 2 and one row of full length
    emissions, mask, (transitions, start, end) = random_crf(4, 7, 5, lengths.tolist())
    B = len(lengths)
    # torch-struct scores edge (from i at t-1, to j at t) as potentials[b, t-1, j, i]; fold start and the first
    # emission into the first edge's "from" label, and `end` into the "to" label of each sequence's last edge.
    potentials = transitions.T + emissions[:, 1:, :, None]
    potentials[:, 0] += (start + emissions[:, 0])[:, None, :]
    potentials[torch.arange(B), lengths - 2] += end[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch-struct's missing arg_constraints
        dist = torch_struct.LinearChainCRF(potentials, lengths=lengths)
        edge_marginals, edge_argmax, partition = dist.marginals, dist.argmax, dist.partition

    def node_view(edges):  # [B, T-1, to, from] -> [B, T, L]
        return torch.cat([edges[:, :1].sum(2), edges.sum(3)], 1) * mask[..., None]

    torch.testing.assert_close(crf_log_partition(emissions, mask, transitions, start, end), partition, **EXACT)
    torch.testing.assert_close(
        crf_marginals(emissions, mask, transitions, start, end), node_view(edge_marginals), **EXACT
    )
    struct_best = node_view(edge_argmax).argmax(2).masked_fill(~mask, -1)
    assert crf_viterbi(emissions, mask, transitions, start, end).tolist() == struct_best.tolist()


def test_marginals_equal_gradient_of_log_partition():
    emissions, mask, scores = random_crf(5, 8, 6, [8, 3, 1, 6, 8])
    emissions.requires_grad_(True)
    (gradient,) = torch.autograd.grad(crf_log_partition(emissions, mask, *scores).sum(), emissions)
    torch.testing.assert_close(crf_marginals(emissions.detach(), mask, *scores), gradient, **EXACT)


def test_padding_does_not_change_a_sequence():
    lengths = [9, 4, 1, 7]
    emissions, mask, scores = random_crf(4, 9, 5, lengths)
    tags = torch.randint(0, 5, (4, 9), generator=torch.Generator().manual_seed(2))
    batched = [
        f(emissions, mask, *scores) for f in (crf_log_partition, crf_marginals, crf_viterbi)
    ] + [crf_sequence_score(emissions, tags, mask, *scores)]
    for b, n in enumerate(lengths):
        e, m, y = emissions[b : b + 1, :n], mask[b : b + 1, :n], tags[b : b + 1, :n]
        alone = [f(e, m, *scores) for f in (crf_log_partition, crf_marginals, crf_viterbi)]
        alone.append(crf_sequence_score(e, y, m, *scores))
        torch.testing.assert_close(batched[0][b], alone[0][0], **EXACT)
        torch.testing.assert_close(batched[1][b, :n], alone[1][0], **EXACT)
        assert batched[2][b, :n].tolist() == alone[2][0].tolist()
        torch.testing.assert_close(batched[3][b], alone[3][0], **EXACT)


@pytest.mark.parametrize(
    "mask",
    [
        torch.tensor([[True, False, True]]),  # not a prefix
        torch.tensor([[False, False, False]]),  # empty sequence
        torch.tensor([[1, 1, 0]]),  # not bool
    ],
)
def test_bad_mask_raises(mask):
    emissions, _, scores = random_crf(1, 3, 2, [3])
    with pytest.raises(ValueError, match="mask"):
        crf_log_partition(emissions, mask, *scores)


def test_nll_backward_reaches_every_parameter_and_the_emissions():
    crf = LinearChainCRF(4)
    emissions = torch.randn(3, 5, 4, requires_grad=True)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 4])[:, None]
    crf.nll(emissions, torch.randint(0, 4, (3, 5)), mask).backward()
    for grad in [emissions.grad] + [p.grad for p in crf.parameters()]:
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_training_learns_a_transition_pattern():
    # Tags cycle 0 -> 1 -> 2 -> 3 -> 0 from a random first label that only the first emission reveals; the other
    # emissions are weak noise, so the tags after the first follow from it only through learned transitions.
    torch.manual_seed(0)
    B, T, L = 32, 6, 4
    tags = (torch.randint(0, L, (B, 1)) + torch.arange(T)) % L
    emissions = 0.5 * torch.randn(B, T, L)
    emissions[:, 0] = 8 * torch.nn.functional.one_hot(tags[:, 0], L)
    mask = torch.arange(T)[None, :] < torch.randint(1, T + 1, (B,))[:, None]
    mask[0] = True
    crf = LinearChainCRF(L)
    optimiser = torch.optim.Adam(crf.parameters(), lr=0.1)
    initial = crf.nll(emissions, tags, mask).item()
    for _ in range(100):
        optimiser.zero_grad()
        loss = crf.nll(emissions, tags, mask)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.1 * initial
    assert (crf.viterbi(emissions, mask)[mask] == tags[mask]).all()


def scaled_forward_backward(emissions, transitions, start, end):
    """Marginals [T, L] and log Z of one sequence by the textbook scaled forward-backward in probability space
    (numpy float64, each step normalised): an implementation independent of crf.py's log-space recursion."""
    potentials = np.exp(transitions)
    shift = emissions.max(1, keepdims=True)  # per-position shift; it cancels in the normalised recursions
    local = np.exp(emissions - shift)
    T, L = emissions.shape
    alpha, beta, norms = np.empty((T, L)), np.empty((T, L)), np.empty(T)
    a = np.exp(start) * local[0]
    for t in range(T):
        if t:
            a = (alpha[t - 1] @ potentials) * local[t]
        norms[t] = a.sum()
        alpha[t] = a / norms[t]
    beta[-1] = np.exp(end)
    for t in range(T - 2, -1, -1):
        b = potentials @ (local[t + 1] * beta[t + 1])
        beta[t] = b / b.sum()
    marginals = alpha * beta
    log_z = np.log(norms).sum() + shift.sum() + np.log(alpha[-1] @ np.exp(end))
    return marginals / marginals.sum(1, keepdims=True), log_z


def scaled_viterbi_score(emissions, transitions, start, end):
    """The best path's score of one sequence by max-plus in numpy float64."""
    score = start + emissions[0]
    for t in range(1, len(emissions)):
        score = (score[:, None] + transitions).max(0) + emissions[t]
    return (score + end).max()


def test_thousand_words_at_trained_scale_match_a_float64_reference():
    # float32 emissions and scores of a trained model's size: forward and backward log-scores reach ~5,000, where
    # float32 rounding once made marginal rows sum to 1 +- 1e-2.
    g = torch.Generator().manual_seed(0)
    T, L = 1000, 9
    emissions = 5 * torch.randn(2, T, L, generator=g)
    scores = [3 * torch.randn(L, L, generator=g), torch.randn(L, generator=g), torch.randn(L, generator=g)]
    mask = torch.arange(T)[None, :] < torch.tensor([T, 700])[:, None]
    crf = LinearChainCRF(L)
    with torch.no_grad():
        for param, value in zip([crf.transitions, crf.start_transitions, crf.end_transitions], scores):
            param.copy_(value)

    with torch.no_grad():
        marginals = crf.marginals(emissions, mask)
        best = crf.viterbi(emissions, mask)
        nll = crf.nll(emissions, best, mask, reduction="none")  # the best path: a small difference of large terms
    assert marginals.dtype == nll.dtype == torch.float32
    np_scores = [s.double().numpy() for s in scores]
    for b, n in enumerate([T, 700]):
        e = emissions[b, :n].double().numpy()
        expected, log_z = scaled_forward_backward(e, *np_scores)
        assert np.abs(marginals[b, :n].sum(1).numpy() - 1).max() < 1e-5
        np.testing.assert_allclose(marginals[b, :n].numpy(), expected, atol=1e-6)
        assert marginals[b, n:].abs().sum() == 0
        path = best[b, :n].numpy()
        transitions, start, end = np_scores
        path_score = (e[np.arange(n), path].sum() + transitions[path[:-1], path[1:]].sum() + start[path[0]]
                      + end[path[-1]])
        assert path_score == pytest.approx(scaled_viterbi_score(e, *np_scores), abs=1e-9)
        assert nll[b].item() == pytest.approx(log_z - path_score, rel=1e-5, abs=1e-4)


def test_pair_marginals_match_brute_force_enumeration():
    lengths = [5, 3, 1, 4]
    emissions, mask, scores = random_crf(4, 5, 3, lengths, seed=7)
    pairs = crf_pair_marginals(emissions, mask, *scores)
    assert pairs.shape == (4, 4, 3, 3)
    for b, n in enumerate(lengths):
        paths, path_scores = enumerate_paths(emissions[b, :n], n, *scores)
        probs = torch.softmax(path_scores, 0)
        for t in range(n - 1):
            expected = torch.zeros(3, 3, dtype=torch.float64).index_put_((paths[:, t], paths[:, t + 1]), probs,
                                                                          accumulate=True)
            torch.testing.assert_close(pairs[b, t], expected, **EXACT)
        assert pairs[b, n - 1:].abs().sum() == 0


def test_span_marginals_of_every_stop_sum_to_the_opening_marginal_at_a_thousand_words():
    # Each B at i opens exactly one run, ending at some stop in (i, n]: summed over the stops, the span marginals
    # (without I-openings) give P(y_i = B). Float32 inputs at a trained model's scale, as above.
    g = torch.Generator().manual_seed(1)
    T, L, begin, inside = 1000, 5, 1, 2
    emissions = 4 * torch.randn(2, T, L, generator=g)
    emissions[:, :, inside] += 3  # long runs are likely
    scores = [2 * torch.randn(L, L, generator=g), torch.randn(L, generator=g), torch.randn(L, generator=g)]
    lengths = [T, 600]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    marginals = crf_marginals(emissions.double(), mask, *scores)
    openings = [(b, first) for b, n in enumerate(lengths) for first in [0, 1, n // 2, n - 2, n - 1]]
    row, first, stop = (torch.cat(column) for column in zip(*[
        (torch.full((n - i,), b), torch.full((n - i,), i), torch.arange(i + 1, n + 1))
        for b, i in openings for n in [lengths[b]]]))
    spans = crf_span_marginals(emissions, mask, *scores, row, first, stop, torch.full_like(row, begin),
                               torch.full_like(row, inside), inside_opens=False)
    assert spans.dtype == torch.float32 and (spans >= 0).all() and (spans <= 1).all()
    for b, i in openings:
        total = spans[(row == b) & (first == i)].double().sum().item()
        assert total == pytest.approx(marginals[b, i, begin].item(), abs=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(row=torch.tensor([0, 1])), "one length"),
    (dict(first=torch.tensor([0.0])), "int64"),
    (dict(row=torch.tensor([2])), "rows"),
    (dict(stop=torch.tensor([4])), "first < stop"),
    (dict(first=torch.tensor([1]), stop=torch.tensor([1])), "first < stop"),
    (dict(inside=torch.tensor([1])), "distinct"),
    (dict(begin=torch.tensor([3])), "labels"),
])
def test_span_marginals_refuse_bad_queries(change, message):
    emissions, mask, scores = random_crf(2, 3, 3, [3, 2])
    query = dict(row=torch.tensor([1]), first=torch.tensor([0]), stop=torch.tensor([2]), begin=torch.tensor([1]),
                 inside=torch.tensor([2]))
    with pytest.raises(ValueError, match=message):
        crf_span_marginals(emissions, mask, *scores, **{**query, **change})



@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_label_smoothed_nll_matches_brute_force(alpha):
    """(1 - α) (-log P(gold path)) + α Σ_t mean_j -log P(y_t = j), from enumerating every path."""
    L, lengths = 3, [4, 2, 1]
    emissions, mask, scores = random_crf(3, 4, L, lengths, seed=7)
    tags = torch.randint(0, L, (3, 4), generator=torch.Generator().manual_seed(2)).masked_fill(~mask, -100)
    crf = LinearChainCRF(L)
    with torch.no_grad():
        for parameter, value in zip(crf._scores(), scores):
            parameter.copy_(value)
    scores = [parameter.detach().double() for parameter in crf._scores()]  # as the float32 parameters hold them
    expected = []
    for b, n in enumerate(lengths):
        paths, path_scores = enumerate_paths(emissions[b, :n], n, *scores)
        probs = torch.softmax(path_scores, 0)
        gold = probs[(paths == tags[b, :n]).all(1)].item()
        marginals = (torch.nn.functional.one_hot(paths, L) * probs[:, None, None]).sum(0)  # [n, L]
        expected.append((1 - alpha) * -np.log(gold) + alpha * -torch.log(marginals).mean(1).sum().item())
    got = crf.nll(emissions, tags.clamp(min=0), mask, reduction="none", label_smoothing=alpha)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-9)
    assert crf.nll(emissions, tags.clamp(min=0), mask, label_smoothing=alpha).item() == pytest.approx(
        np.mean(expected), rel=1e-9)
    with pytest.raises(ValueError, match="label_smoothing"):
        crf.nll(emissions, tags.clamp(min=0), mask, label_smoothing=1.0)
