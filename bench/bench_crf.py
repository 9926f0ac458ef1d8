"""CRF per-token marginals: one forward-backward pass vs torch-struct vs re-running the forward pass per (t, label).

The last is how the paper's published code computes marginals: for each position t and label j, constrain y_t = j
and re-run the forward algorithm; P(y_t = j) = exp(log Z_constrained - log Z). It lives here only, as a baseline.

    python bench/bench_crf.py [--batch 32 --length 40 --labels 9]
"""

import argparse
import statistics
import time
import warnings

import torch
import torch_struct  # a test extra: pip install -e '.[test]'

from ensemble_distill.models.crf import crf_log_partition, crf_marginals

from common import print_speedups


def marginals_by_constrained_forward(emissions, mask, transitions, start, end):
    log_z = crf_log_partition(emissions, mask, transitions, start, end)
    B, T, L = emissions.shape
    marginals = torch.zeros(B, T, L, dtype=emissions.dtype)
    for t in range(T):
        for j in range(L):
            constrained = emissions.clone()
            constrained[:, t] = float("-inf")
            constrained[:, t, j] = emissions[:, t, j]
            marginals[:, t, j] = torch.exp(crf_log_partition(constrained, mask, transitions, start, end) - log_z)
    return marginals * mask.unsqueeze(2)  # past a sequence's end the constraint is ignored and gives 1


def marginals_by_torch_struct(emissions, mask, transitions, start, end):
    lengths = mask.sum(1)
    # torch-struct scores edge (i at t-1 -> j at t) as potentials[b, t-1, j, i]; start, end and the first
    # emission are folded into the first and last edges.
    potentials = transitions.T + emissions[:, 1:, :, None]
    potentials[:, 0] += (start + emissions[:, 0])[:, None, :]
    potentials[torch.arange(len(lengths)), lengths - 2] += end[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch-struct's missing arg_constraints
        edges = torch_struct.LinearChainCRF(potentials, lengths=lengths).marginals
    return torch.cat([edges[:, :1].sum(2), edges.sum(3)], 1) * mask.unsqueeze(2)


def seconds(fn, args, repeats):
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--labels", type=int, default=9)  # CoNLL BIO: O + B/I for PER, LOC, ORG, MISC
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # steadier figures on a shared machine
    B, T, L = args.batch, args.length, args.labels

    emissions = torch.randn(B, T, L)
    lengths = torch.randint(2, T + 1, (B,))
    lengths[0] = T  # torch-struct needs one full-length row
    mask = torch.arange(T)[None, :] < lengths[:, None]
    crf = (0.5 * torch.randn(L, L), 0.5 * torch.randn(L), 0.5 * torch.randn(L))
    inputs = (emissions, mask, *crf)

    methods = {
        "forward-backward (crf_marginals)": (crf_marginals, args.repeats),
        "torch-struct LinearChainCRF.marginals": (marginals_by_torch_struct, args.repeats),
        "forward per (t, label) [baseline]": (marginals_by_constrained_forward, max(1, args.repeats // 10)),
    }
    with torch.no_grad():
        reference = crf_marginals(*inputs)
        for name, (fn, _) in methods.items():
            gap = (fn(*inputs) - reference).abs().max().item()
            assert gap < 1e-4, f"{name} disagrees with crf_marginals by {gap}"
        timings = {name: seconds(fn, inputs, repeats) for name, (fn, repeats) in methods.items()}

    print(f"CRF marginals, float32, batch={B} T={T} L={L}, lengths {lengths.min()}..{T}, 1 thread, median of runs")
    print_speedups(timings, "forward per (t, label) [baseline]", decimals=2)


if __name__ == "__main__":
    main()
