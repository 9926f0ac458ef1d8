"""The `ensemble-distill` command: thin wrappers over the library's public functions.

Each sub-command is a small function; argument parsing lives only here. User errors (`UserError`, a bad
argument, an output folder that cannot be written) print as one line on stderr and exit with status 2; `--debug`
shows the traceback instead.
"""

import argparse
import errno
import os
import sys
import typing
from pathlib import Path

from .config import Ensemble, Range, TranslationDistillation, TranslationTraining, setting_problem
from .errors import UserError


class Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit status 2, like every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ensemble-distill", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate(sub)
    add_train_ensemble(sub)
    add_predict(sub)
    add_memoize(sub)
    add_distill(sub)
    add_translation_commands(sub)
    add_demo(sub)
    for command in sub.choices.values():  # also accepted after the command; SUPPRESS keeps a --debug given before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error")
    return parser


def typed(kind, problem):
    """An argparse type: text -> kind, refused (one line, exit 2) when problem(value) names what is wrong."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind.__name__}, got {text!r}") from None
        if message := problem(value):
            raise argparse.ArgumentTypeError(message)
        return value
    return parse


def in_range(kind, lo):
    """An argparse type of a number at least `lo`."""
    return typed(kind, Range(lo).problem)


def like_setting(cls, name: str):
    """An argparse type of an argument that overrides config setting `name` of section `cls` (for a list setting:
    one item): its type and the valid values declared beside the setting."""
    kind = typing.get_type_hints(cls)[name]
    kind = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
    return typed(kind, lambda value: setting_problem(cls, name, value))


def writable_folder(text: str) -> str:
    """A folder a command writes into: an existing folder, or a path to create under one, that this process can
    write. Checked before anything is read or written, so a refused folder is left as it was; raises UserError."""
    if not text:
        raise UserError("the path is empty")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise UserError(f"{text}: exists and is not a folder")
    existing = path
    while not existing.exists():  # the nearest existing ancestor, where the folder would be created
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{text}: cannot be created, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{text}: cannot write in {existing} (no permission, or a read-only file system)")
    return text


def output_folder(text: str) -> str:
    """argparse type of --out (and of a run folder that a command writes into): see writable_folder."""
    try:
        return writable_folder(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


N_BOOT = in_range(int, 1)


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics with bootstrap 95%% CIs, metrics.json and plots of a predictions file")
    p.add_argument("predictions", help="predictions .npz (docs/predictions-format.md)")
    p.add_argument("--out", type=output_folder,
                   help="folder for metrics.json and PNGs (default: PREDICTIONS without .npz, plus -eval)")
    p.add_argument("--n-boot", type=N_BOOT, default=1000, help="bootstrap resamples of sentences (default 1000)")
    p.add_argument("--seed", type=in_range(int, 0), default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    from .calibration.report import evaluate, format_table
    from .predictions import load_predictions

    out = writable_folder(Path(args.predictions).with_suffix("").as_posix() + "-eval") if args.out is None else args.out
    metrics = evaluate(load_predictions(args.predictions), out_dir=out, n_boot=args.n_boot, seed=args.seed)
    print(format_table(metrics))
    print(f"wrote {out}/metrics.json and plots")
    return 0


def add_train_ensemble(sub) -> None:
    p = sub.add_parser("train-ensemble", help="train (or resume) an ensemble of NER taggers, then evaluate it")
    p.add_argument("--config", required=True, help="TOML config (see configs/)")
    p.add_argument("--out", required=True, type=output_folder, help="run directory (resumes if it holds a partial run)")
    p.add_argument("--split", default="test", choices=("train", "dev", "test"),
                   help="split to evaluate on after training (default test)")
    p.add_argument("--n-boot", type=N_BOOT, default=1000, help="bootstrap resamples (default 1000)")
    p.set_defaults(func=run_train_ensemble)


def run_train_ensemble(args) -> int:
    from .config import TaggingConfig, load_config
    from .ensemble import train_ensemble
    from .experiments import evaluate_run, format_rows
    from .io_utils import run_lock

    cfg = load_config(args.config, TaggingConfig)
    with run_lock(args.out):  # the evaluation writes into the run folder too
        run = train_ensemble(cfg, args.out)
        print(format_rows(evaluate_run(run, args.split, args.n_boot), title=f"{args.out} ({args.split})"))
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="tag a CoNLL file with a trained ensemble")
    p.add_argument("--run", required=True, help="run directory of train-ensemble")
    p.add_argument("--input", required=True, help="CoNLL file in the run's column layout")
    p.add_argument("--out", required=True, type=output_folder,
                   help="folder for predictions.npz, predictions.conll, entities.jsonl")
    p.add_argument("--members", type=like_setting(Ensemble, "members"),
                   help="ensemble size (default: the largest configured)")
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:
    from .experiments import predict_file

    out = predict_file(args.run, args.input, args.out, args.members)
    print(f"wrote {out}/predictions.npz, predictions.conll, entities.jsonl")
    return 0


def add_memoize(sub) -> None:
    p = sub.add_parser("memoize", help="store an ensemble's distributions over its training data for distillation")
    p.add_argument("--ensemble", required=True, help="run directory of train-ensemble")
    p.add_argument("--out", required=True, type=output_folder,
                   help="teacher store folder (resumes if unfinished, reused if finished)")
    p.add_argument("--members", type=like_setting(Ensemble, "members"),
                   help="ensemble size (default: the largest configured)")
    p.add_argument("--temperature-scaled", action="store_true",
                   help="teacher = softmax(log q / T), T fitted on the dev split")
    p.set_defaults(func=run_memoize)


def run_memoize(args) -> int:
    from .distill.ner import memoize, teacher_name

    store = memoize(args.ensemble, args.out, args.members, args.temperature_scaled)
    print(f"wrote {store.path}: {teacher_name(store)} over {len(store)} sentences, {store.num_positions} words")
    return 0


def add_distill(sub) -> None:
    p = sub.add_parser("distill", help="train an IID student on a teacher store, then evaluate it on test")
    p.add_argument("--store", required=True, help="teacher store folder written by memoize")
    p.add_argument("--config", required=True, help="distillation TOML config (see configs/distill-conll.toml)")
    p.add_argument("--out", required=True, type=output_folder,
                   help="student run directory (resumes if it holds a partial run)")
    p.add_argument("--n-boot", type=N_BOOT, default=1000, help="bootstrap resamples (default 1000)")
    p.set_defaults(func=run_distill)


def run_distill(args) -> int:
    from .distill.ner import distill
    from .experiments import format_rows

    print(format_rows([distill(args.store, args.config, args.out, args.n_boot)], title=f"{args.out} (test)"))
    return 0


def add_translation_commands(sub) -> None:
    p = sub.add_parser("train-nmt", help="train (or resume) the members of a translation ensemble")
    p.add_argument("--config", required=True, help="TOML config (configs/multi30k-small.toml, multi30k-base.toml)")
    p.add_argument("--out", required=True, type=output_folder, help="run directory (resumes if it holds a partial run)")
    p.add_argument("--label-smoothing", type=like_setting(TranslationTraining, "label_smoothing"),
                   help="override train.label_smoothing (0: CE run, 0.1: LS run)")
    p.set_defaults(func=run_train_nmt)
    p = sub.add_parser("evaluate-nmt", help="BLEU and calibration of a translation run's members, ensembles and "
                                            "students, raw and temperature-scaled")
    p.add_argument("--run", required=True, type=output_folder, help="run directory of train-nmt (writes RUN/eval)")
    p.add_argument("--split", default="test", choices=("dev", "test"), help="split to evaluate (default test)")
    p.add_argument("--n-boot", type=N_BOOT, default=1000, help="bootstrap resamples (default 1000)")
    add_device(p)
    p.set_defaults(func=run_evaluate_nmt)
    for name, func, what in (("memoize-nmt", run_memoize_nmt, "store an ensemble's next-token distributions over "
                                                                "the training set"),
                             ("distill-nmt", run_distill_nmt, "memoize (if needed) and train a student from scratch")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--run", required=True, type=output_folder,
                       help="run directory of train-nmt (writes RUN/teachers, RUN/students)")
        p.add_argument("--members", type=like_setting(TranslationDistillation, "teacher_members"),
                       help="teacher ensemble size (default distill.teacher_members)")
        p.add_argument("--top-k", type=like_setting(TranslationDistillation, "top_k"),
                       help="V': entries kept per token (default distill.top_k)")
        p.add_argument("--epsilon", type=like_setting(TranslationDistillation, "epsilon"),
                       help="> 0: adaptive truncation at mass 1 - epsilon (default distill.epsilon)")
        add_device(p)
        p.set_defaults(func=func)
    p = sub.add_parser("sweep-nmt", help="students for each truncation V' and adaptive; BLEU, ECE, bytes/token")
    p.add_argument("--run", required=True, type=output_folder,
                   help="run directory of train-nmt (writes RUN/teachers, RUN/students, RUN/eval)")
    p.add_argument("--members", type=like_setting(TranslationDistillation, "teacher_members"),
                   help="teacher ensemble size (default distill.teacher_members)")
    p.add_argument("--top-k", type=like_setting(TranslationDistillation, "sweep_top_k"), nargs="+",
                   help="V' values (default distill.sweep_top_k)")
    p.add_argument("--epsilon", type=like_setting(TranslationDistillation, "sweep_epsilon"), nargs="*",
                   help="adaptive epsilons (default distill.sweep_epsilon; none given: no adaptive students)")
    p.add_argument("--n-boot", type=N_BOOT, default=1000, help="bootstrap resamples (default 1000)")
    add_device(p)
    p.set_defaults(func=run_sweep_nmt)


def add_device(p) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), help="where to load the run's models (default: the run's "
                                                           "train.device)")


def open_nmt_run(args, splits):
    from .translation import open_run

    return open_run(args.run, splits=splits, device=args.device)


def run_train_nmt(args) -> int:
    from .config import TranslationConfig, load_config
    from .translation import train_members

    cfg = load_config(args.config, TranslationConfig)
    if args.label_smoothing is not None:
        cfg.train.label_smoothing = args.label_smoothing
    run = train_members(cfg, args.out)
    print(f"{run.run_dir}: {cfg.ensemble.members} members trained; next: evaluate-nmt --run {run.run_dir}")
    return 0


def run_evaluate_nmt(args) -> int:
    from .translation import evaluate_translation_run, format_rows

    run = open_nmt_run(args, ("dev", args.split))
    print(format_rows(evaluate_translation_run(args.run, args.split, args.n_boot, run=run),
                      title=f"{args.run} ({args.split})"))
    return 0


def run_memoize_nmt(args) -> int:
    from .translation_distill import memoize_translation_teacher

    store = memoize_translation_teacher(args.run, args.members, args.top_k, args.epsilon,
                                        run=open_nmt_run(args, ("train", "dev")))
    print(f"wrote {store.path}: {len(store)} sentences, {store.num_positions} tokens, "
          f"{store.bytes_per_token():.1f} bytes/token")
    return 0


def run_distill_nmt(args) -> int:
    from .translation_distill import distill_translation

    student = distill_translation(args.run, args.members, args.top_k, args.epsilon,
                                  run=open_nmt_run(args, ("train", "dev")))
    print(f"trained {student}; evaluate-nmt --run {args.run} evaluates it beside the ensembles")
    return 0


def run_sweep_nmt(args) -> int:
    from .translation import format_sweep
    from .translation_distill import truncation_sweep

    table = truncation_sweep(args.run, args.members, args.top_k, args.epsilon, args.n_boot,
                             run=open_nmt_run(args, ("train", "dev", "test")))
    print(format_sweep(table, args.run))
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the pipeline end to end on a small CoNLL-2003 setting (minutes on a CPU)")
    p.add_argument("--data", default="../shared/data", help="folder holding conll2003-en/ (default ../shared/data)")
    p.add_argument("--out", default="runs/demo", type=output_folder, help="run directory root (default runs/demo)")
    p.add_argument("--config", default="configs/demo.toml", help="demo config (default configs/demo.toml)")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from .demo import demo

    print(demo(args.data, args.out, args.config))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as err:
        if args.debug:
            raise
        print(f"ensemble-distill: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output the system refuses mid-run (the folders were checked up front)
        if args.debug or not _refused_write(err):
            raise
        print(f"ensemble-distill: error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ensemble-distill: interrupted", file=sys.stderr)
        return 130


def _refused_write(err: OSError) -> bool:
    return err.filename is not None and (
        isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError))
        or err.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT))


if __name__ == "__main__":
    sys.exit(main())
