"""The `ensemble-distill` command: thin wrappers over the library's public functions.

Each sub-command is a small function; argument parsing lives only here. User errors
(`UserError`) print as one line on stderr and exit with status 2.
"""

import argparse
import sys
from pathlib import Path

from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ensemble-distill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _ = sub  # sub-commands are registered below
    add_evaluate(sub)
    return parser


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics with bootstrap 95%% CIs, metrics.json and plots of a predictions file")
    p.add_argument("predictions", help="predictions .npz (docs/predictions-format.md)")
    p.add_argument("--out", help="folder for metrics.json and PNGs (default: PREDICTIONS without .npz, plus -eval)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of sentences (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:
    from .calibration.report import evaluate, format_table
    from .predictions import load_predictions

    out = args.out or Path(args.predictions).with_suffix("").as_posix() + "-eval"
    metrics = evaluate(load_predictions(args.predictions), out_dir=out, n_boot=args.n_boot, seed=args.seed)
    print(format_table(metrics))
    print(f"wrote {out}/metrics.json and plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except UserError as err:
        print(f"ensemble-distill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ensemble-distill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
