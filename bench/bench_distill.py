"""Distillation step cost: the teacher read from the store vs plain NLL training vs running K teachers online.

    python bench/bench_distill.py [--data ../shared/data] [--sentences 200] [--steps 6] [--members 3 9] [--repeats 2]

Every case runs the same `--steps` student training steps (MiniLM top layers + IID head, Adafactor, frozen states
from the cache, bucketed batches of 16) drawn from a few hundred CoNLL-2003 sentences, which are memoised once:
  plain NLL            the baseline: tagger_loss
  KD from the store    distillation_loss (beta 5/6) with the teacher entries of each batch's windows read from a
                       teacher store of an ensemble of 3 (target: <= 1.05x the baseline)
  KD, K teachers online  the same loss with the K members' mean distributions computed at every step (their top
                       layers and heads on the shared frozen states), what the store saves
Each batch goes through every case in turn (`--repeats` passes), so load bursts hit all alike; ratios are medians
of per-step ratios.
Teachers are untrained members: a step costs the same whatever the weights.
"""

import argparse
import copy
import tempfile
import time

import numpy as np
import torch

from ensemble_distill.config import Training
from ensemble_distill.data.subwords import bucketed_batches
from ensemble_distill.distill.losses import distillation_loss
from ensemble_distill.encoders import compute_frozen_states
from ensemble_distill.models.tagger import Tagger
from ensemble_distill.tasks.ner import (
    TaggingSplit,
    dataset_fingerprint,
    predict_distributions,
    tagger_emissions,
    tagger_loss,
    window_batch,
    window_targets,
)
from ensemble_distill.teacher_store import write_store
from ensemble_distill.training import make_optimizer

from common import conll_sample

BETA = 5 / 6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per case and repeat")
    parser.add_argument("--members", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)

    sample = conll_sample(args.data, args.sentences)
    tokenizer, labels, corpus, windows = sample.tokenizer, sample.labels, sample.corpus, sample.windows
    bottom, top = sample.bottom, sample.top
    split = TaggingSplit(corpus, windows, compute_frozen_states(bottom, [w.input_ids for w in windows],
                                                                progress=False))
    pad = tokenizer.pad_token_id
    n_words = sum(len(w.word_starts) for w in windows)
    teachers = [Tagger(copy.deepcopy(top), len(labels)).eval() for _ in range(max(args.members))]
    batches = bucketed_batches([len(w.input_ids) for w in windows], args.batch_size, shuffle=True,
                               seed=0)[: args.steps]
    sentence_of = np.array([w.sentence for w in windows])
    first_word_of = np.array([w.first_word for w in windows])
    print(f"{len(windows)} windows, {n_words} words; {len(batches)} timed steps of {args.batch_size} windows; "
          f"{len(labels)} labels; {torch.get_num_threads()} threads", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        store = write_store(folder, range(len(corpus.sentences)),
                            lambda s: predict_distributions(teachers[:3], split, split.windows_of(s), pad),
                            vocab=labels, fingerprint=dataset_fingerprint(split), teachers=["bench"] * 3,
                            top_k=len(labels), batch_sentences=64, progress=False)
        print(f"memoising an ensemble of 3 once: {time.perf_counter() - started:.1f}s, "
              f"{store.bytes_per_token():.1f} bytes/word", flush=True)

        def plain(model, batch):
            return tagger_loss(model, batch)[0]

        def from_store(model, batch):
            mask = batch["word_mask"]
            ids, probs, remainder = window_targets(store, sentence_of[batch["windows"]],
                                                   first_word_of[batch["windows"]], mask.shape[1])
            return distillation_loss(tagger_emissions(model, batch), batch["word_labels"], mask, ids, probs, remainder,
                                     beta=BETA)

        def online(k):
            def loss(model, batch):
                mask = batch["word_mask"]
                with torch.no_grad():
                    mean = sum(t.distributions(tagger_emissions(t, batch), mask) for t in teachers[:k]) / k
                ids = torch.arange(len(labels)).expand_as(mean)
                return distillation_loss(tagger_emissions(model, batch), batch["word_labels"], mask, ids, mean,
                                         torch.zeros(mask.shape), beta=BETA)
            return loss

        cases = {"plain NLL (baseline)": plain, "KD from the store": from_store,
                 **{f"KD, {k} teachers online": online(k) for k in args.members}}
        students = {name: Tagger(copy.deepcopy(top), len(labels)).train() for name in cases}
        optimizers = {name: make_optimizer(m.parameters(), Training(lr=5e-5)) for name, m in students.items()}

        def step(name, ids):
            model, optimizer, loss_fn = students[name], optimizers[name], cases[name]
            started = time.perf_counter()
            batch = {**window_batch(split, ids, pad), "windows": ids}
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - started

        for name in cases:  # warm-up: allocations, the optimiser's state
            step(name, batches[0])
        seconds = {name: [] for name in cases}
        for _ in range(args.repeats):
            for ids in batches:
                for name in cases:  # each batch through every case in turn: a load burst hits them alike
                    seconds[name].append(step(name, ids))
        read_started = time.perf_counter()
        for ids in batches:
            window_targets(store, sentence_of[ids], first_word_of[ids], max(len(windows[i].word_starts) for i in ids))
        read = time.perf_counter() - read_started

    base = np.array(seconds["plain NLL (baseline)"])
    print(f"\nstudent training step ({args.repeats} x {len(batches)} steps a case; ms/step median; ratio to plain "
          "NLL: median of the per-step ratios)")
    for name, times in seconds.items():
        print(f"  {name:26s} {1000 * np.median(times):8.1f}   {np.median(np.array(times) / base):5.2f}x")
    print(f"  of which the store read (window_targets) {1000 * read / len(batches):.2f} ms/step")
    store_times = np.array(seconds["KD from the store"])
    for k in args.members:
        ratio = np.median(np.array(seconds[f"KD, {k} teachers online"]) / store_times)
        print(f"  KD from the store vs {k} teachers online: {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
