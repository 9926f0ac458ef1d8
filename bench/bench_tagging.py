"""Tagger speed: what the shared frozen-layer cache saves, and what an ensemble costs at prediction time.

    python bench/bench_tagging.py [--data ../shared/data] [--sentences 400] [--members 3 9]

1. Training words/s of one member with the frozen bottom cached vs recomputed every step (the baseline: running the
   whole encoder, its lower layers without gradients). Also the cache's one-off cost, amortised over the epochs
   and members that share it.
2. Prediction words/s on unseen text: a single model vs ensembles of K that run the frozen bottom once per batch
   and share it (each member runs only its top layers and head) vs K full encoder passes (the naive ensemble).
Ratios are against baselines run in this process.
"""

import argparse
import copy
import time

import torch

from ensemble_distill.config import Training
from ensemble_distill.data.subwords import bucketed_batches, collate
from ensemble_distill.encoders import compute_frozen_states, default_encoder_path
from ensemble_distill.models.tagger import Tagger
from ensemble_distill.training import make_optimizer

from common import conll_sample


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--members", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--head", default="iid", choices=["iid", "crf"])
    parser.add_argument("--finetune-layers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)

    sample = conll_sample(args.data, args.sentences, args.finetune_layers)
    tokenizer, labels, windows, bottom, top = sample.tokenizer, sample.labels, sample.windows, sample.bottom, sample.top
    path, n_words = default_encoder_path(), sample.n_words
    batches = bucketed_batches([len(w.input_ids) for w in windows], 16, shuffle=True, seed=0)
    print(f"{len(windows)} sentences, {n_words} words, {sum(len(w.input_ids) for w in windows)} subwords; "
          f"encoder {path.name}, top {args.finetune_layers} of {len(bottom.layers) + len(top.layers)} layers tuned; "
          f"{torch.get_num_threads()} threads")

    started = time.perf_counter()
    frozen = compute_frozen_states(bottom, [w.input_ids for w in windows], progress=False)
    cache_seconds = time.perf_counter() - started

    def tensors(ids, cached):
        batch = collate([windows[i] for i in ids], tokenizer.pad_token_id)
        if cached:
            states, mask = frozen.batch(ids)
        else:
            mask = batch["attention_mask"]
            states = bottom(batch["input_ids"], mask)
        return states, mask, batch

    def train_epoch(cached):
        model = Tagger(copy.deepcopy(top), len(labels), args.head).train()
        optimizer = make_optimizer(model.parameters(), Training(lr=1e-4))
        started = time.perf_counter()
        for ids in batches:
            states, mask, batch = tensors(ids, cached)
            emissions = model.emissions(states, mask, batch["word_starts"], batch["word_mask"])
            loss = model.loss(emissions, batch["word_labels"], batch["word_mask"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    train_epoch(True)  # warm-up
    uncached, cached = train_epoch(False), train_epoch(True)
    print("\n1. training one member (words/s)")
    print(f"  recompute frozen layers every step   {n_words / uncached:9.0f}   1.00x")
    print(f"  frozen states from the shared cache  {n_words / cached:9.0f}   {uncached / cached:.2f}x")
    print(f"  one-off cache computation: {cache_seconds:.1f}s = {cache_seconds / uncached:.2f} uncached epochs")
    for members, epochs in ((3, 3), (9, 10)):
        total_uncached = members * epochs * uncached
        total_cached = cache_seconds + members * epochs * cached
        print(f"  {members} members x {epochs} epochs: {total_uncached:.0f}s -> {total_cached:.0f}s "
              f"({total_uncached / total_cached:.2f}x faster)")

    models = [Tagger(copy.deepcopy(top), len(labels), args.head).eval() for _ in range(max(args.members))]
    full_encoders = [(bottom, m) for m in models]

    @torch.no_grad()
    def predict(k, shared):
        started = time.perf_counter()
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
        return time.perf_counter() - started

    predict(1, False)  # warm-up
    single = predict(1, False)
    print("\n2. prediction (words/s; single model = full encoder, the baseline)")
    print(f"  single model                          {n_words / single:9.0f}   1.00x")
    for k in args.members:
        naive, shared = predict(k, False), predict(k, True)
        print(f"  ensemble of {k}: K full encoder passes   {n_words / naive:9.0f}   {single / naive:.2f}x")
        print(f"  ensemble of {k}: shared frozen states    {n_words / shared:9.0f}   {single / shared:.2f}x "
              f"(sharing is {naive / shared:.2f}x faster)")


if __name__ == "__main__":
    main()
