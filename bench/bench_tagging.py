"""Tagger speed: what the shared frozen-layer cache saves in training an ensemble, what training its members side by
side could add, and what an ensemble costs at prediction time.

    python bench/bench_tagging.py [--data ../shared/data] [--sentences 300] [--members 3 9] [--repeats 3]
        [--side-by-side 3] [--threads 1]

1. Training: CPU seconds of one member's epoch with the frozen bottom cached vs recomputed every step (the
   baseline, a member trained on its own: the whole encoder runs, its lower layers without gradients), and the
   cache's one-off cost, amortised over the epochs and members that share it. CPU time of this process, on
   --threads threads (default 1): what each epoch costs, and steadier than wall time on a shared machine, where
   other jobs stretch runs unequally. The repeats are taken in turns; medians and ranges are printed.
2. Members side by side: K members' tops forward and backward on K batches, against one forward and backward of
   a batch K times as large, the K batches stacked. That is the most stacking the K members' tops could save
   (torch.func.stack_module_state + vmap turns each matrix product into a batched one of the same total size; the
   members' own batches differ in length, so stacking them pads, which this case leaves out) and the bound it
   puts on the ensemble's speed-up over K members trained on their own.
3. Prediction words per CPU second on unseen text: a single model vs ensembles of K that run the frozen bottom once
   per batch and share it (each member runs only its top layers and head) vs K full encoder passes.
Ratios are against baselines run in this process.
"""

import argparse
import copy
import statistics
import time

import torch

from ensemble_distill.config import Training
from ensemble_distill.data.subwords import bucketed_batches, collate
from ensemble_distill.encoders import compute_frozen_states, default_encoder_path
from ensemble_distill.models.tagger import Tagger
from ensemble_distill.training import make_optimizer

from common import conll_sample

EPOCHS_OF_RUNS = ((3, 3), (9, 10))  # (members, epochs) of the ensembles whose training time is estimated


def cpu_seconds(fn):
    started = time.process_time()
    fn()
    return time.process_time() - started


def spread(values):
    """'median (min-max)' of a list of numbers."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--members", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--head", default="iid", choices=["iid", "crf"])
    parser.add_argument("--finetune-layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each training case, taken in turns")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU time per epoch)")
    parser.add_argument("--side-by-side", type=int, default=3, help="K of the members-side-by-side case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    sample = conll_sample(args.data, args.sentences, args.finetune_layers)
    tokenizer, labels, windows, bottom, top = sample.tokenizer, sample.labels, sample.windows, sample.bottom, sample.top
    path, n_words = default_encoder_path(), sample.n_words
    batches = bucketed_batches([len(w.input_ids) for w in windows], 16, shuffle=True, seed=0)
    print(f"{len(windows)} sentences, {n_words} words, {sum(len(w.input_ids) for w in windows)} subwords; "
          f"encoder {path.name}, top {args.finetune_layers} of {len(bottom.layers) + len(top.layers)} layers tuned; "
          f"{torch.get_num_threads()} threads")

    frozen = None

    def compute_cache():
        nonlocal frozen
        frozen = compute_frozen_states(bottom, [w.input_ids for w in windows], progress=False)

    def tensors(ids, cached):
        batch = collate([windows[i] for i in ids], tokenizer.pad_token_id)
        if cached:
            states, mask = frozen.batch(ids)
        else:
            mask = batch["attention_mask"]
            states = bottom(batch["input_ids"], mask)
        return states, mask, batch

    def new_member():
        model = Tagger(copy.deepcopy(top), len(labels), args.head).train()
        return model, make_optimizer(model.parameters(), Training(lr=1e-4))

    def forward_backward(model, states, mask, batch):
        emissions = model.emissions(states, mask, batch["word_starts"], batch["word_mask"])
        model.loss(emissions, batch["word_labels"], batch["word_mask"]).backward()

    def train_epoch(cached):
        model, optimizer = new_member()
        for ids in batches:
            optimizer.zero_grad()
            forward_backward(model, *tensors(ids, cached))
            optimizer.step()

    def stacked(k, tensors_of_batch):
        """The k batches of k members stacked into one (here k copies of one batch: the case without padding)."""
        states, mask, batch = tensors_of_batch
        return states.repeat(k, 1, 1), mask.repeat(k, 1), {key: value.repeat(k, *[1] * (value.dim() - 1))
                                                            for key, value in batch.items()}

    def members_apart(k):
        models = [new_member()[0] for _ in range(k)]
        for ids in batches:
            inputs = tensors(ids, True)
            for model in models:
                forward_backward(model, *inputs)

    def members_stacked(k):
        model = new_member()[0]
        for ids in batches:
            forward_backward(model, *stacked(k, tensors(ids, True)))

    cache_cpu = cpu_seconds(compute_cache)
    train_epoch(True)  # warm-up
    k_side = args.side_by_side
    cases = {"uncached": lambda: train_epoch(False), "cached": lambda: train_epoch(True),
             "apart": lambda: members_apart(k_side), "stacked": lambda: members_stacked(k_side)}
    seconds = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            seconds[name].append(cpu_seconds(fn))
    uncached, cached = seconds["uncached"], seconds["cached"]
    print(f"\n1. training one member, CPU seconds per epoch (median of {args.repeats}, range)")
    print(f"  recompute frozen layers every step   {spread(uncached)}   1.00x")
    print(f"  frozen states from the shared cache  {spread(cached)}   "
          f"{spread([u / c for u, c in zip(uncached, cached)])}x")
    print(f"  one-off cache computation: {cache_cpu:.2f}s = {cache_cpu / statistics.median(uncached):.2f} "
          "uncached epochs")
    for members, epochs in EPOCHS_OF_RUNS:
        ratios = [members * epochs * u / (cache_cpu + members * epochs * c) for u, c in zip(uncached, cached)]
        print(f"  {members} members x {epochs} epochs: cached {spread(ratios)}x faster than on their own")

    gains = [a / s for a, s in zip(seconds["apart"], seconds["stacked"])]
    # the forward and backward passes of one member's cached epoch: what stacking can shrink, by at most the gain
    fb = statistics.median(seconds["apart"]) / k_side
    print(f"\n2. members side by side (K = {k_side}): forward + backward of K members apart "
          f"{spread(seconds['apart'])}s, as one stacked batch {spread(seconds['stacked'])}s: at most "
          f"{spread(gains)}x faster")
    for members, epochs in EPOCHS_OF_RUNS:
        best = [members * epochs * u / (cache_cpu + members * epochs * (c - fb * (1 - 1 / g)))
                for u, c, g in zip(uncached, cached, gains)]
        print(f"  {members} members x {epochs} epochs, cached and stacked: at most {spread(best)}x faster than on "
              "their own")

    models = [Tagger(copy.deepcopy(top), len(labels), args.head).eval() for _ in range(max(args.members))]
    full_encoders = [(bottom, m) for m in models]

    @torch.no_grad()
    def predict(k, shared):
        started = time.process_time()
        for ids in batches:
            batch = collate([windows[i] for i in ids], tokenizer.pad_token_id)
            mask = batch["attention_mask"]
            # unseen text: a shared bottom runs once per batch, the naive ensemble runs it once per member
            states = bottom(batch["input_ids"], mask) if shared else None
            outputs = []
            for b, m in full_encoders[:k]:
                member_states = states if shared else b(batch["input_ids"], mask)
                outputs.append(m.distributions(m.emissions(member_states, mask, batch["word_starts"],
                                                           batch["word_mask"]), batch["word_mask"]))
            torch.stack(outputs).mean(0)
        return time.process_time() - started

    predict(1, False)  # warm-up
    single = predict(1, False)
    print("\n3. prediction (words per CPU second; single model = full encoder, the baseline)")
    print(f"  single model                          {n_words / single:9.0f}   1.00x")
    for k in args.members:
        naive, shared = predict(k, False), predict(k, True)
        print(f"  ensemble of {k}: K full encoder passes   {n_words / naive:9.0f}   {single / naive:.2f}x")
        print(f"  ensemble of {k}: shared frozen states    {n_words / shared:9.0f}   {single / shared:.2f}x "
              f"(sharing is {naive / shared:.2f}x faster)")


if __name__ == "__main__":
    main()
