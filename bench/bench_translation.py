"""Translation costs on the CPU: training tokens/s, decoding sentences/s (one model, an ensemble of K, a student;
cached keys and values against full recompute), how decoding time grows with the output length, and a
distillation step reading the teacher store against a plain NLL step.

Synthetic Multi30k-shaped data: an 8K vocabulary, source and target lengths 1 + Poisson(13) subwords, batches of
`--batch-tokens` padded tokens as the pipeline cuts them (token_batches). The models are the "small" preset with
random weights: speed does not depend on what a model learnt, except where decoding stops, so every system
decodes to the same `--decode-len` tokens (random models rarely pick EOS). A student has the members'
architecture, so it decodes at one member's speed: the point of distillation. "Full recompute" is beam search
with cache=False, the decoder rerun over every prefix at every step (the search before incremental decoding); both
ways find the same hypotheses, which the script checks. "4x longer" decodes one model to 4 x --decode-len tokens.
Repeats are taken in turns so that load bursts on a shared machine hit every case alike; medians are printed. With
--threads 1 the clock is the process's CPU time, which other processes' load does not inflate (on an idle machine
it is the wall time); with more threads, wall time.

    python bench/bench_translation.py --threads 1 [--repeats 3 --step-repeats 11 --steps 5 --members 3 --sentences 64]
"""

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ensemble_distill.config import TranslationConfig
from ensemble_distill.models.beam_search import beam_search
from ensemble_distill.models.translation import collate
from ensemble_distill.tasks.nmt import mean_of_members, new_model, nll_loss, student_loss, token_batches
from ensemble_distill.teacher_store import fingerprint_dataset, write_store


def synthetic_pairs(n, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    lengths = 1 + rng.poisson(13, size=(n, 2))
    return [(rng.integers(4, vocab_size, s).tolist(), rng.integers(4, vocab_size, t).tolist()) for s, t in lengths]


def timed(fn, clock=time.perf_counter) -> float:
    started = clock()
    fn()
    return clock() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the decoding cases")
    parser.add_argument("--step-repeats", type=int, default=11,
                        help="repeats of the training steps: cheap next to decoding, and their few-percent ratio "
                             "needs more repeats than the load's swings")
    parser.add_argument("--steps", type=int, default=5, help="training steps per repeat and case")
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--members", type=int, default=3, help="K: ensemble size for decoding and the teacher")
    parser.add_argument("--sentences", type=int, default=64, help="sentences decoded per repeat (one batch)")
    parser.add_argument("--decode-len", type=int, default=16, help="max tokens decoded (untrained models)")
    parser.add_argument("--top-k", type=int, default=64, help="V' of the teacher store")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter

    cfg = TranslationConfig()
    vocab_size = cfg.data.vocab_size
    members = [new_model(cfg, vocab_size, seed) for seed in range(args.members)]
    student = new_model(cfg, vocab_size, 100)
    # Decoded as initialised: the training steps below teach the student to emit EOS early, which would time
    # shorter outputs rather than the same --decode-len tokens as the members.
    decoding_student = copy.deepcopy(student).eval()
    pairs = synthetic_pairs(40 * args.steps, vocab_size)
    lengths = np.array([max(len(s), len(t)) + 1 for s, t in pairs])
    batches = [(b, collate([pairs[i] for i in b]))
               for b in token_batches(lengths, args.batch_tokens, np.random.default_rng(0))][:args.steps]
    tokens = sum(b.n_target_tokens for _, b in batches)

    with tempfile.TemporaryDirectory() as folder:
        store = write_teacher_store(Path(folder), members, pairs, vocab_size, args.top_k)
        losses = {"NLL (label smoothing 0.1)": nll_loss(0.1),
                  f"distillation, store V'={args.top_k}": student_loss(store, cfg.distill)}
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)

        def train_steps(loss_fn):
            student.train()
            for batch in batches:
                loss, _ = loss_fn(student, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        src = collate(pairs[:args.sentences]).src
        systems = {"one model": [members[0]], f"ensemble of {args.members}": members, "student": [decoding_student]}
        short, long = args.decode_len, 4 * args.decode_len
        # (system, cache, output length): every system at --decode-len, one model also 4x longer
        searches = [(name, cache, short) for name in systems for cache in (False, True)]
        searches += [("one model", False, long), ("one model", True, long)]

        def search(name, cache, length):
            return beam_search(systems[name], src, beam_size=4, max_len=length, cache=cache)

        for name in systems:
            assert search(name, True, short).tokens == search(name, False, short).tokens, f"{name}: other hypotheses"
        times = {case: [] for case in [*losses, *searches]}
        for _ in range(args.step_repeats):
            for name, loss_fn in losses.items():
                times[name].append(timed(lambda: train_steps(loss_fn), clock))
        for _ in range(args.repeats):
            for case in searches:
                times[case].append(timed(lambda: search(*case), clock))
        median = {case: statistics.median(t) for case, t in times.items()}

    print(f"small preset, vocab {vocab_size}, {args.threads} threads, medians of {args.step_repeats} (training) "
          f"and {args.repeats} (decoding) repeats "
          f"(shared machine: absolute times are noisy; ratios are the point)")
    nll_name, kd_name = losses
    print(f"training: {tokens / median[nll_name]:.0f} target tokens/s (NLL step, {len(batches)} batches of "
          f"<= {args.batch_tokens} padded tokens)")
    # Each repeat times both losses back to back: the spread of their ratios shows how much load moved the median.
    ratios = sorted(kd / nll for kd, nll in zip(times[kd_name], times[nll_name]))
    print(f"distillation step from the store: {median[kd_name] / median[nll_name]:.2f}x the NLL step "
          f"({1000 * median[kd_name] / len(batches):.0f} vs {1000 * median[nll_name] / len(batches):.0f} ms a step; "
          f"repeats {ratios[0]:.2f}-{ratios[-1]:.2f}x)")
    print(f"beam 4 decoding of {args.sentences} sentences to {short} tokens, full recompute -> cached:")
    for name in systems:
        full, cached = median[name, False, short], median[name, True, short]
        print(f"  {name}: {args.sentences / full:.1f} -> {args.sentences / cached:.1f} sentences/s "
              f"({full / cached:.1f}x faster; {cached / median['one model', True, short]:.2f}x one model's time)")
    for cache, way in ((False, "full recompute"), (True, "cached")):
        ratio = median["one model", cache, long] / median["one model", cache, short]
        print(f"4x longer output ({long} tokens), one model, {way}: {ratio:.1f}x the time")


def write_teacher_store(folder: Path, members, pairs, vocab_size: int, top_k: int):
    @torch.no_grad()
    def teacher(batch_pairs):
        batch = collate(batch_pairs)
        probs = mean_of_members(torch.stack([m.log_probs_teacher_forced(batch.src, batch.tgt_in) for m in members]))
        return [probs.exp()[i, :len(t) + 1] for i, (_, t) in enumerate(batch_pairs)]

    for m in members:
        m.eval()
    return write_store(folder / "teacher", pairs, teacher, vocab=[str(i) for i in range(vocab_size)],
                       fingerprint=fingerprint_dataset([s for s, _ in pairs], [t for _, t in pairs]),
                       teachers=["synthetic"], top_k=top_k, progress=False)


if __name__ == "__main__":
    main()
