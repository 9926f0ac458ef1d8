"""Teacher store: bytes per token for each truncation and sampling, and how fast `batch()` reads, against the
published format.

The reference is the paper's published code's layout: float32 log-probabilities and int32 ids, V' = 64, i.e.
8 bytes an entry and 512 bytes a token. Its read baseline gathers the same batches from that layout (memory-mapped
[positions, 64] arrays) in this process.

Synthetic teacher distributions, NMT-like, over an 8K vocabulary: at each position, with a random ranking of the
vocabulary (a per-sentence permutation rotated by a random shift),
logits = a * (-log rank + Gumbel noise), a per-position sharpness a = 1.3 + Exponential(1). This gives
a mean entropy of ~1.3 nats, a mean top-1 probability of ~0.65 and ~1.5% of the mass outside the top 64 (the
script prints the measured values). Sentence lengths ~ 1 + Poisson(27), as in WMT subword data.

Read speed is the median over passes of shuffled batches of 32 sentences from warm (page-cached) files; each pass
reads the same batches from the reference layout and from every store in turn ("vs ref": the ratio of their
medians). Read-back error, against the
float32 truncation of the same distributions: "L1 err" is the mean over positions of sum_k |stored p_k - p_k|
(how far the quantisation moves the KD gradient at the student's logits, which is student - teacher at the
kept ids), "max err" the largest |stored p - p| of any kept entry.

Sampled stores (R draws a position, kept as distinct ids with counts) are in a second table: "distinct/pos" the
distinct ids kept a position, and "L1 to q" the mean over positions of sum_v |draws_v / R - q_v| over the whole
vocabulary: the estimate's noise, which averages out over positions (its mean is q), where a top-V' store's
distance to q (its remainder plus its L1 err) is all bias.

    python bench/bench_store.py [--sentences 200 --vocab 8192 --batch 32 --training-tokens-per-s 5000]
"""

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ensemble_distill.teacher_store import TeacherStore, fingerprint_dataset, to_dense, truncate, write_store

REFERENCE_BYTES_PER_TOKEN = 64 * (4 + 4)
CONFIGS = [  # (label, top_k, epsilon, probs dtype)
    ("fixed V'=32", 32, None, "float16"),
    ("fixed V'=64", 64, None, "float16"),
    ("fixed V'=128", 128, None, "float16"),
    ("fixed V'=256", 256, None, "float16"),
    ("fixed V'=64 uint8", 64, None, "uint8"),
    ("fixed V'=64 log_uint8", 64, None, "log_uint8"),
    ("fixed V'=128 log_uint8", 128, None, "log_uint8"),
    ("adaptive eps=1e-2 cap 64", 64, 1e-2, "float16"),
    ("adaptive eps=1e-3 cap 64", 64, 1e-3, "float16"),
    ("adaptive eps=1e-3 cap 64 log_uint8", 64, 1e-3, "log_uint8"),
    ("adaptive eps=1e-2 cap 256", 256, 1e-2, "float16"),
    ("adaptive eps=1e-3 cap 256", 256, 1e-3, "float16"),
]
SAMPLED = [  # (label, samples R, sampling)
    ("sampled R=12", 12, "multinomial"),
    ("sampled R=12 systematic", 12, "systematic"),
    ("sampled R=32", 32, "multinomial"),
    ("sampled R=64", 64, "multinomial"),
    ("sampled R=128", 128, "multinomial"),
]


class SyntheticTeacher:
    """Deterministic per sentence (seeded by its index), so every store holds the same distributions."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.log_rank = torch.log(torch.arange(1, vocab_size + 1, dtype=torch.float32))

    def __call__(self, batch):
        return [self.sentence(index, length) for index, length in batch]

    @functools.cache  # the bench writes several stores from the same distributions
    def sentence(self, index: int, length: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(index)
        sharpness = 1.3 + torch.empty(length, 1).exponential_(generator=g)
        gumbel = -torch.log(-torch.log(torch.rand(length, self.vocab_size, generator=g).clamp_min(1e-20)))
        # A random ranking of the vocabulary at each position: the sentence's permutation, rotated per position.
        permutation = torch.randperm(self.vocab_size, generator=g)
        shift = torch.randint(self.vocab_size, (length, 1), generator=g)
        ranks = permutation[(torch.arange(self.vocab_size) + shift) % self.vocab_size]
        return torch.softmax(sharpness * (-self.log_rank[ranks] + gumbel), -1)


def describe(teacher, sentences, sample=100):
    dist = torch.cat(teacher(sentences[:sample]))
    entropy = -(dist * torch.log(dist.clamp_min(1e-30))).sum(-1)
    top = dist.topk(64, -1).values
    return (f"teacher distributions (first {sample} sentences, {len(dist)} positions): mean entropy "
            f"{entropy.mean():.2f} nats, mean top-1 {top[:, 0].mean():.3f}, mean mass outside top-64 "
            f"{1 - top.sum(-1).mean():.4f}")


def write_reference(folder: Path, teacher, sentences, batch: int):
    """The published layout: [positions, 64] int32 ids and float32 log-probabilities, and sentence offsets."""
    ids, log_probs = [], []
    for start in range(0, len(sentences), batch):
        top_ids, top_probs, _, _ = truncate(torch.cat(teacher(sentences[start:start + batch])), 64)
        ids.append(top_ids.to(torch.int32).numpy())
        log_probs.append(torch.log(top_probs).numpy())
    np.save(folder / "ids.npy", np.concatenate(ids))
    np.save(folder / "log_probs.npy", np.concatenate(log_probs))
    lengths = np.array([length for _, length in sentences])
    return (np.load(folder / "ids.npy", mmap_mode="r"), np.load(folder / "log_probs.npy", mmap_mode="r"),
            np.concatenate([[0], np.cumsum(lengths)]))


def reference_batch(reference, indices):
    """The same padded [B, T, 64] tensors, gathered from the reference layout."""
    ids, log_probs, offsets = reference
    lengths = offsets[indices + 1] - offsets[indices]
    rows = np.repeat(np.arange(len(indices)), lengths)
    times = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.repeat(offsets[indices], lengths) + times
    out_ids = np.zeros((len(indices), lengths.max(), 64), np.int64)
    out_probs = np.zeros((len(indices), lengths.max(), 64), np.float32)
    out_ids[rows, times] = ids[positions]
    out_probs[rows, times] = np.exp(log_probs[positions])
    return torch.from_numpy(out_ids), torch.from_numpy(out_probs)


def read_back_error(store, teacher, sentences, top_k, epsilon, batch):
    """(mean over positions of sum_k |stored p_k - p_k|, max |stored p - p|) over the kept entries, against the
    float32 truncation of the teacher's distributions; the stored ids are checked to be the truncation's."""
    l1, worst = [], 0.0
    for start in range(0, len(sentences), batch):
        ids, probs, counts, _ = truncate(torch.cat(teacher(sentences[start:start + batch])), top_k, epsilon)
        stored = store.batch(np.arange(start, min(start + batch, len(sentences))))
        real = torch.arange(stored.ids.shape[1])[None] < stored.lengths[:, None]
        width = stored.ids.shape[-1]
        kept = torch.arange(width) < counts[:, None]
        assert torch.equal(stored.ids[real] * kept, ids[:, :width] * kept)
        error = (stored.probs[real] - probs[:, :width]).abs() * kept
        l1.append(error.sum(-1))
        worst = max(worst, float(error.max()))
    return float(torch.cat(l1).mean()), worst


def distance_to_teacher(store, teacher, sentences, batch):
    """Mean over positions of sum_v |stored p_v - q_v| over the whole vocabulary."""
    l1 = []
    for start in range(0, len(sentences), batch):
        dist = torch.cat(teacher(sentences[start:start + batch]))
        stored = store.batch(np.arange(start, min(start + batch, len(sentences))))
        real = torch.arange(stored.ids.shape[1])[None] < stored.lengths[:, None]
        l1.append((to_dense(stored.ids[real], stored.probs[real], dist.shape[-1]) - dist).abs().sum(-1))
    return float(torch.cat(l1).mean())


def opened(store, fingerprint, vocab, tokens):
    """The store reopened with every shard verified, and the verification's speed in MB/s."""
    begin = time.perf_counter()
    store = TeacherStore.open(store.path, expect_fingerprint=fingerprint, expect_vocab=vocab)
    return store, store.bytes_per_token() * tokens / 1e6 / (time.perf_counter() - begin)


def seconds_per_pass(reads, batches, repeats):
    """Median seconds for one pass over `batches` with each read function, the functions taking turns so that
    load from other users of the machine hits them alike."""
    times = [[] for _ in reads]
    for _ in range(repeats):
        for read, spent in zip(reads, times):
            begin = time.perf_counter()
            for indices in batches:
                read(indices)
            spent.append(time.perf_counter() - begin)
    return [statistics.median(spent) for spent in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=32, help="sentences per batch read")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--training-tokens-per-s", type=float, default=5000.0,
                        help="what student training consumes on this CPU, for the ratio column")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    sentences = [(i, 1 + int(n)) for i, n in enumerate(rng.poisson(27, args.sentences))]
    tokens = sum(length for _, length in sentences)
    teacher = SyntheticTeacher(args.vocab)
    vocab = [f"piece{i}" for i in range(args.vocab)]
    fingerprint = fingerprint_dataset([np.full(length, index) for index, length in sentences])
    order = rng.permutation(len(sentences))  # training reads batches of shuffled sentences
    batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
    print(describe(teacher, sentences))
    print(f"{len(sentences)} sentences, {tokens} tokens, vocabulary {args.vocab}, batches of {args.batch} "
          f"shuffled sentences, median of {args.repeats} passes\n")

    with tempfile.TemporaryDirectory() as tmp:
        reference = write_reference(Path(tmp), teacher, sentences, args.batch)
        common = {"vocab": vocab, "fingerprint": fingerprint, "teachers": ["synthetic"],
                  "batch_sentences": args.batch, "progress": False}
        stores = []  # (label, store, verify MB/s, read-back error)
        for label, top_k, epsilon, probs_dtype in CONFIGS:
            store = write_store(Path(tmp) / label.replace(" ", "_"), sentences, teacher, top_k=top_k, epsilon=epsilon,
                                probs_dtype=probs_dtype, **common)
            store, verify = opened(store, fingerprint, vocab, tokens)
            stores.append((label, store, verify, read_back_error(store, teacher, sentences, top_k, epsilon,
                                                                 args.batch)))
        sampled = []  # (label, store, verify MB/s, L1 to q)
        for label, samples, sampling in SAMPLED:
            store = write_store(Path(tmp) / label.replace(" ", "_"), sentences, teacher, samples=samples, seed=0,
                                sampling=sampling, **common)
            store, verify = opened(store, fingerprint, vocab, tokens)
            sampled.append((label, store, verify, distance_to_teacher(store, teacher, sentences, args.batch)))
        # Every layout read in turn within each pass, so that load from other jobs hits them alike.
        reference_time, *store_times = seconds_per_pass(
            [lambda indices: reference_batch(reference, indices)]
            + [store.batch for _, store, _, _ in stores + sampled], batches, args.repeats)
        baseline = tokens / reference_time
        print(f"{'store':<36} {'B/token':>8} {'vs 512 B':>8} {'kept/pos':>8} {'remainder':>9} "
              f"{'read tok/s':>11} {'vs ref':>7} {'vs training':>11} {'verify MB/s':>11} {'L1 err':>8} "
              f"{'max err':>8}")
        print(f"{'reference (f32+i32, 64)':<36} {REFERENCE_BYTES_PER_TOKEN:>8.1f} {1.0:>8.2f} {64:>8.1f} "
              f"{'':>9} {baseline:>11.0f} {1.0:>7.2f} {baseline / args.training_tokens_per_s:>10.0f}x")
        for (label, store, verify, (l1, worst)), store_time in zip(stores, store_times):
            speed = tokens / store_time
            whole = store.batch(np.arange(len(store)))
            real = torch.arange(whole.remainder.shape[1])[None] < whole.lengths[:, None]
            kept = store.manifest["num_entries"] / tokens
            print(f"{label:<36} {store.bytes_per_token():>8.1f} "
                  f"{store.bytes_per_token() / REFERENCE_BYTES_PER_TOKEN:>8.2f} {kept:>8.1f} "
                  f"{whole.remainder[real].mean():>9.4f} {speed:>11.0f} {reference_time / store_time:>7.2f} "
                  f"{speed / args.training_tokens_per_s:>10.0f}x {verify:>11.0f} {l1:>8.1e} {worst:>8.1e}")
        print(f"\n{'sampled store':<36} {'B/token':>8} {'vs 512 B':>8} {'distinct/pos':>12} {'read tok/s':>11} "
              f"{'vs ref':>7} {'vs training':>11} {'verify MB/s':>11} {'L1 to q':>8}")
        for (label, store, verify, l1), store_time in zip(sampled, store_times[len(stores):]):
            speed = tokens / store_time
            print(f"{label:<36} {store.bytes_per_token():>8.1f} "
                  f"{store.bytes_per_token() / REFERENCE_BYTES_PER_TOKEN:>8.2f} "
                  f"{store.manifest['num_entries'] / tokens:>12.2f} {speed:>11.0f} {reference_time / store_time:>7.2f} "
                  f"{speed / args.training_tokens_per_s:>10.0f}x {verify:>11.0f} {l1:>8.3f}")

if __name__ == "__main__":
    main()
