"""Memoizing a run's nested NER teacher stores: every store running its ensemble vs the member cache.

    python bench/bench_member_cache.py --run RUN [--members 2 3] [--repeats 1]

RUN: a trained NER run of at least max(--members) members, e.g. the demo's setting with 3 members nested 2 ⊂ 3:

    ensemble-distill train --config configs/demo.toml --out RUN --set data.train=DATA/conll2003-en/eng.train \\
        --set data.dev=DATA/conll2003-en/eng.testa --set data.test=DATA/conll2003-en/eng.testb \\
        --set ensemble.subset_sizes=[2,3] --set train.max_epochs=1

Each round memoizes the stores ensemble-K for K in --members and ensemble-<largest>-ts (what `reproduce` writes:
3, 6, 9 and 9-TS at paper scale) into fresh folders, twice in the same process: with the ensemble pass
(Task.caches_member_probs off) and from an emptied member cache (RUN/teachers/members). Wall seconds per store and
in all; the two sets of stores are checked to be byte-identical. The member cache is left behind in RUN.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from ensemble_distill.distill.memoize import memoize
from ensemble_distill.ensemble import open_run


def write_stores(run, members: list[int], out: Path) -> dict[str, float]:
    """Wall seconds of memoizing each store into `out`."""
    seconds = {}
    for k, scaled in [(k, False) for k in members] + [(members[-1], True)]:
        name = f"ensemble-{k}{'-ts' if scaled else ''}"
        start = time.perf_counter()
        memoize(run, members=k, temperature_scaled=scaled, store_dir=out / name, progress=False)
        seconds[name] = time.perf_counter() - start
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--members", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    run = open_run(args.run, splits=("train", "dev"), progress=False)
    print(f"{args.run}: {run.task.n_sentences(run.data, 'train')} training sentences, stores "
          f"{args.members} + {args.members[-1]}-ts")
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            run.task.caches_member_probs = False
            direct = write_stores(run, args.members, Path(tmp) / "direct")
            del run.task.caches_member_probs  # the task's own: cached
            shutil.rmtree(run.run_dir / "teachers" / "members", ignore_errors=True)
            cached = write_stores(run, args.members, Path(tmp) / "cached")
            for name in direct:
                a, b = (sorted((Path(tmp) / kind / name).iterdir()) for kind in ("direct", "cached"))
                assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b], f"{name} differs"
        print(f"round {r + 1}: " + "; ".join(f"{name} {direct[name]:.1f} s -> {cached[name]:.1f} s" for name in direct)
              + f"; all {sum(direct.values()):.1f} s -> {sum(cached.values()):.1f} s "
              f"({sum(direct.values()) / sum(cached.values()):.2f}x), stores byte-identical")


if __name__ == "__main__":
    main()
