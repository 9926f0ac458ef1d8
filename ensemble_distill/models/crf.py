"""Linear-chain CRF: log-partition, gold-path score, per-token, pairwise and span marginals and Viterbi, batched in
log space.

Shapes, shared by every function:
    emissions    [B, T, L]  score of label j at position t
    mask         [B, T]     bool, each row a prefix of Trues of length >= 1 (the real positions)
    transitions  [L, L]     transitions[i, j] = score of label i followed by label j
    start, end   [L]        score of a path starting / ending with each label
Values at padding positions of `emissions` and `tags` are ignored.

Marginals come from one forward-backward pass, looping over time only (never over positions x labels); span
marginals (a run of labels and the label after it, for entity confidences) reuse that pass plus one gather per span.

Every function computes in float64 and returns the input's dtype. Forward and backward log-scores grow with the
length (about 5 x T at trained scale), and float32 rounding of numbers that size made marginals drift from
summing to 1 by 1e-3 at 200 words and 1e-2 at 1,000; in float64 they match the exact values to float32 rounding
at any length, at about the same speed (the loops are bound by per-step overhead, not arithmetic: 1.9 vs 1.8 ms
for bench/bench_crf.py's batch on one CPU thread).
"""

import torch
import torch.nn as nn


class LinearChainCRF(nn.Module):
    """Learned transition scores on top of emissions from any encoder."""

    def __init__(self, num_labels: int, init_range: float = 0.1):
        super().__init__()
        self.num_labels = num_labels
        self.transitions = nn.Parameter(torch.empty(num_labels, num_labels).uniform_(-init_range, init_range))
        self.start_transitions = nn.Parameter(torch.empty(num_labels).uniform_(-init_range, init_range))
        self.end_transitions = nn.Parameter(torch.empty(num_labels).uniform_(-init_range, init_range))

    def _scores(self):
        return self.transitions, self.start_transitions, self.end_transitions

    def nll(self, emissions, tags, mask, reduction: str = "mean", label_smoothing: float = 0.0):
        """Negative log-likelihood of the gold `tags` [B, T]: log Z - score(tags); 'mean' averages over sequences.

        label_smoothing α > 0 (the paper's Table 7 smooths NER members with α = 0.1) mixes the gold path's NLL with
        the uniform label distribution's cross-entropy against each word's marginal:
            (1 - α) (-log P(y | x))  +  α Σ_t (1/L) Σ_j -log P(y_t = j | x),   t over the sentence's real words,
        the per-word smoothing of an IID tagger (cross_entropy's label_smoothing) with the gold term kept the whole
        path's, as the CRF is trained; both terms are per sentence. Raises ValueError for α outside [0, 1)."""
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        # Both terms grow with the length while their difference stays small: subtract them in float64.
        dtype = emissions.dtype
        emissions, *scores = _float64(emissions, *self._scores())
        nll = crf_log_partition(emissions, mask, *scores) - crf_sequence_score(emissions, tags, mask, *scores)
        if label_smoothing:
            uniform = -crf_log_marginals(emissions, mask, *scores).mean(2).sum(1)  # padding rows are 0
            nll = (1.0 - label_smoothing) * nll + label_smoothing * uniform
        nll = nll.to(dtype)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.mean()
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")

    def marginals(self, emissions, mask):
        """Per-token posterior marginals [B, T, L]: rows sum to 1 at real positions, are 0 at padding."""
        return crf_marginals(emissions, mask, *self._scores())

    def viterbi(self, emissions, mask, constraints=None):
        """Best tag path per sequence as a [B, T] LongTensor, -1 at padding; with `constraints` (transitions [L, L],
        start [L], added to the learned scores: -inf forbids, e.g. decoding.iob2_scores) the best allowed path."""
        transitions, start, end = self._scores()
        if constraints is not None:
            transitions, start = (s + c.to(s.device) for s, c in zip((transitions, start), constraints))
        return crf_viterbi(emissions, mask, transitions, start, end)


def crf_sequence_score(emissions, tags, mask, transitions, start, end):
    """Score [B] of the path `tags` [B, T]: start + emissions + transitions + end, over real positions only."""
    _check_mask(mask)
    dtype = emissions.dtype
    emissions, transitions, start, end = _float64(emissions, transitions, start, end)
    tags = tags.masked_fill(~mask, 0)  # padding may hold any id (e.g. -100); make it a safe index
    m = mask.to(emissions.dtype)
    emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # [B, T]
    moved = transitions[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
    last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
    score = start[tags[:, 0]] + (emitted * m).sum(1) + (moved * m[:, 1:]).sum(1) + end[last]
    return score.to(dtype)


def crf_log_partition(emissions, mask, transitions, start, end):
    """log Z [B]: log-sum-exp of the scores of all label paths (the forward algorithm)."""
    _check_mask(mask)
    dtype = emissions.dtype
    emissions, transitions, start, end = _float64(emissions, transitions, start, end)
    alpha = start + emissions[:, 0]
    for t in range(1, emissions.shape[1]):
        alpha = _forward_step(alpha, emissions[:, t], mask[:, t], transitions)
    return torch.logsumexp(alpha + end, dim=1).to(dtype)


def crf_marginals(emissions, mask, transitions, start, end):
    """P(y_t = j | x) [B, T, L] by forward-backward; 0 at padding. Differentiable (autograd through the pass)."""
    _check_mask(mask)
    marginals = _log_marginals(emissions, mask, transitions, start, end).exp()
    return marginals.masked_fill(~mask.unsqueeze(2), 0).to(emissions.dtype)


def crf_log_marginals(emissions, mask, transitions, start, end):
    """log P(y_t = j | x) [B, T, L] by forward-backward; 0 at padding. Differentiable."""
    _check_mask(mask)
    return _log_marginals(emissions, mask, transitions, start, end).masked_fill(~mask.unsqueeze(2), 0).to(
        emissions.dtype)


def _log_marginals(emissions, mask, transitions, start, end):
    """float64 log marginals [B, T, L] (meaningless at padding)."""
    alpha, beta = _forward_backward(*_float64(emissions, transitions, start, end), mask)
    # alpha + beta at any position log-sums to log Z; normalising each position by its own sum makes every row
    # sum to 1 by construction instead of by the agreement of T separately rounded sums.
    return torch.log_softmax(alpha + beta, dim=2)


def crf_pair_marginals(emissions, mask, transitions, start, end):
    """P(y_t = i, y_{t+1} = j | x) [B, T-1, L, L] by forward-backward; 0 where t + 1 is padding."""
    _check_mask(mask)
    dtype, (B, T, L) = emissions.dtype, emissions.shape
    emissions, transitions, start, end = _float64(emissions, transitions, start, end)
    alpha, beta = _forward_backward(emissions, transitions, start, end, mask)
    scores = alpha[:, :-1, :, None] + transitions + (emissions[:, 1:] + beta[:, 1:])[:, :, None, :]
    pairs = scores.reshape(B, T - 1, L * L).softmax(2).reshape(B, T - 1, L, L)  # normalised per step, as above
    return pairs.masked_fill(~mask[:, 1:, None, None], 0).to(dtype)


@torch.no_grad()
def crf_span_marginals(emissions, mask, transitions, start, end, row, first, stop, begin, inside,
                       inside_opens: bool = True):
    """P(words first..stop-1 of sequence `row` form exactly one run of `inside` opened by `begin`) [N], exact.

    For each query n (all of row, first, stop, begin, inside are [N] int64 tensors; stop exclusive) the event is
        y_first = begin, y_k = inside for first < k < stop, and y_stop != inside (or stop is the sequence's end);
    with `inside_opens`, also y_first = inside when y_{first-1} is neither begin nor inside (or first = 0), the
    conlleval / seqeval-default reading of an I- tag that opens a span (then the two openings are summed).
    Each opening is one constrained path segment: alpha at its opener, the run's transitions and emissions
    (gathered per query, not a loop over positions), and a log-sum over the next label but `inside` with beta
    after it (or the end score), minus log Z. Not differentiable (confidences, not a training signal).

    Raises:
        ValueError: a bad mask, queries of different shapes, or a query outside its sequence or the labels.
    """
    _check_mask(mask)
    dtype, (T, L) = emissions.dtype, emissions.shape[1:]
    lengths = mask.sum(1)
    row, first, stop, begin, inside = _check_span_queries(row, first, stop, begin, inside, lengths, L)
    emissions, transitions, start, end = _float64(emissions, transitions, start, end)
    alpha, beta = _forward_backward(emissions, transitions, start, end, mask)
    log_z = torch.logsumexp(alpha[:, 0] + beta[:, 0], dim=1)

    # The run's inside words: ragged positions first+1..stop-1 of every query, flattened for one gather.
    runs = stop - first - 1
    owner = torch.repeat_interleave(torch.arange(len(row), device=row.device), runs)
    step = torch.arange(len(owner), device=row.device) - torch.repeat_interleave(torch.cumsum(runs, 0) - runs, runs)
    inside_emitted = emissions.new_zeros(len(row)).index_add_(
        0, owner, emissions[row[owner], first[owner] + 1 + step, inside[owner]])
    # Inside transitions; where() keeps 0 * -inf (a forbidden inside -> inside) out of runs that never take it.
    inside_moves = torch.where(runs > 1, (runs - 1).to(torch.float64) * transitions[inside, inside], 0.0)
    # Past the run: the next word takes any label but `inside`, or the run is the sequence's last words.
    at = stop.clamp(max=T - 1)
    after = emissions[row, at] + beta[row, at]  # [N, L]
    ends = stop == lengths[row]

    def opened_by(opener, open_score):
        inner = torch.where(runs > 0, transitions[opener, inside] + inside_moves + inside_emitted, 0.0)
        last = torch.where(runs > 0, inside, opener)
        closing = (transitions[last] + after).scatter(1, inside[:, None], float("-inf")).logsumexp(1)
        return open_score + inner + torch.where(ends, end[last], closing)

    log_p = opened_by(begin, alpha[row, first, begin])
    if inside_opens:
        before = alpha[row, (first - 1).clamp(min=0)] + transitions[:, inside].T  # [N, L] over y_{first-1}
        before = before.scatter(1, torch.stack([begin, inside], 1), float("-inf")).logsumexp(1)
        open_inside = torch.where(first == 0, alpha[row, 0, inside], before + emissions[row, first, inside])
        log_p = torch.logaddexp(log_p, opened_by(inside, open_inside))
    return torch.exp(log_p - log_z[row]).to(dtype)


@torch.no_grad()
def crf_viterbi(emissions, mask, transitions, start, end):
    """Highest-scoring path [B, T] LongTensor, -1 at padding."""
    _check_mask(mask)
    B, T, L = emissions.shape
    emissions, transitions, start, end = _float64(emissions, transitions, start, end)  # near-ties at long length
    score = start + emissions[:, 0]
    keep = torch.arange(L, device=emissions.device).expand(B, L)  # at padding, point back to the same label
    backpointers = []
    for t in range(1, T):
        best, prev = (score.unsqueeze(2) + transitions).max(dim=1)  # over the previous label
        real = mask[:, t, None]
        score = torch.where(real, best + emissions[:, t], score)
        backpointers.append(torch.where(real, prev, keep))
    tag = (score + end).argmax(dim=1)
    path = [tag]
    for prev in reversed(backpointers):
        tag = prev.gather(1, tag.unsqueeze(1)).squeeze(1)
        path.append(tag)
    return torch.stack(path[::-1], 1).masked_fill(~mask, -1)


def _forward_backward(emissions, transitions, start, end, mask):
    """Log forward and backward scores [B, T, L] (float64 in, float64 out).

    alpha[b, t, j]: log-sum over prefixes ending in j at t, emission at t included. beta[b, t, i]: log-sum over
    suffixes after label i at t, the end score included; past a sequence's end beta stays `end`, so its last real
    position sees exactly `end`. alpha + beta at any real position log-sums to log Z."""
    alphas = [start + emissions[:, 0]]
    for t in range(1, emissions.shape[1]):
        alphas.append(_forward_step(alphas[-1], emissions[:, t], mask[:, t], transitions))
    betas = [end.expand_as(alphas[0])]
    for t in range(emissions.shape[1] - 2, -1, -1):
        step = torch.logsumexp(transitions + (emissions[:, t + 1] + betas[-1]).unsqueeze(1), dim=2)
        betas.append(torch.where(mask[:, t + 1, None], step, betas[-1]))
    return torch.stack(alphas, 1), torch.stack(betas[::-1], 1)


def _forward_step(alpha, emission, real, transitions):
    """One step of the forward recursion; sequences already ended (real=False) keep their alpha."""
    step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + emission
    return torch.where(real.unsqueeze(1), step, alpha)


def _float64(*scores):
    """The score tensors in float64 (a no-op for float64 ones; autograd flows back through the cast)."""
    return [x.to(torch.float64) for x in scores]


def _check_mask(mask):
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a bool [B, T] tensor, got {mask.dtype} {tuple(mask.shape)}")
    if not mask[:, 0].all() or (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("each mask row must be a prefix of Trues with at least one True")


def _check_span_queries(row, first, stop, begin, inside, lengths, num_labels):
    queries = [torch.as_tensor(q) for q in (row, first, stop, begin, inside)]
    if any(q.dim() != 1 or q.shape != queries[0].shape or q.dtype != torch.int64 for q in queries):
        raise ValueError("row, first, stop, begin and inside must be int64 [N] tensors of one length; got "
                         + ", ".join(f"{q.dtype} {tuple(q.shape)}" for q in queries))
    row, first, stop, begin, inside = queries
    if ((row < 0) | (row >= len(lengths))).any():
        raise ValueError(f"span rows must be in [0, {len(lengths)})")
    if ((first < 0) | (stop <= first) | (stop > lengths[row.clamp(0, len(lengths) - 1)])).any():
        raise ValueError("each span needs 0 <= first < stop <= its sequence's length")
    if ((begin < 0) | (begin >= num_labels) | (inside < 0) | (inside >= num_labels) | (begin == inside)).any():
        raise ValueError(f"begin and inside must be distinct labels in [0, {num_labels})")
    return queries
