"""The `ensemble-distill` command: thin wrappers over the library's public functions (pipeline.py).

One command set for both tasks, the task read from the config or the run folder (`task = "ner" | "nmt"`):

    train --config C --out RUN        evaluate --run RUN | PREDICTIONS      memoize --run RUN
    compare A.npz B.npz (paired bootstrap)
    distill --run RUN                 sweep --run RUN (translation)         predict --model DIR | --run RUN
    translate --model DIR | --run RUN (stdin -> stdout)      export --model DIR --format hf|ctranslate2    demo
    reproduce --scale smoke|cpu|gpu --out reports/NAME (every experiment of the paper)

Every command takes `--set section.key=value` (a TOML literal; repeatable) on top of its config, recorded in the
resolved config.toml. The older verbs stay as aliases: train-ensemble (train, then evaluate), train-nmt,
evaluate-nmt, memoize-nmt, distill-nmt, sweep-nmt, and the NER forms `memoize --ensemble RUN --out STORE` and
`distill --store STORE --config FILE --out DIR`.

Each sub-command is a small function; argument parsing lives only here. User errors (`UserError`, a bad
argument, an output folder that cannot be written) print as one line on stderr and exit with status 2; `--debug`
shows the traceback instead.
"""

import argparse
import errno
import math
import os
import signal
import sys
import threading
import typing
import warnings
from pathlib import Path

from . import __version__
from .config import (
    MAX_MEMBERS,
    Decoding,
    Range,
    TaggingData,
    TranslationDistillation,
    TranslationTraining,
    device_problem,
    folder_problem,
    setting_problem,
)
from .errors import UserError, counted


class Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit status 2, like every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ensemble-distill", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_evaluate(sub)
    add_compare(sub)
    add_memoize(sub)
    add_distill(sub)
    add_sweep(sub)
    add_predict(sub)
    add_translate(sub)
    add_export(sub)
    add_demo(sub)
    add_reproduce(sub)
    add_aliases(sub)
    for name, command in sub.choices.items():  # also accepted after the command; SUPPRESS keeps a --debug before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error")
        # taken by every command, so that one reading no config refuses it in one line (no_settings), but only
        # offered by the help of those that read one
        command.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                             help=argparse.SUPPRESS if name in READS_NO_CONFIG else
                             "override a config setting (a TOML literal: 16, 0.1, \"iob2\", [3, 6]); repeatable")
    return parser


READS_NO_CONFIG = ("compare", "predict", "translate", "export")  # commands whose help does not offer --set


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
    write (tried with a probe file, config.folder_problem). Checked before anything is read or written, so a
    refused folder is left as it was; raises UserError."""
    if text == "-":  # a folder named "-" would be created without a word: the user meant standard output
        raise UserError("-: a folder is needed here, not standard output (the command writes several files)")
    if problem := folder_problem(text):
        raise UserError(f"{text}: {problem}" if text else problem)
    return text


def output_folder(text: str) -> str:
    """argparse type of --out (and of a run folder that a command writes into): see writable_folder."""
    try:
        return writable_folder(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


N_BOOT = in_range(int, 1)
MEMBERS = typed(int, Range(1, MAX_MEMBERS).problem)  # an ensemble's size: a run may have none (members = 0)
TEMPERATURE = typed(float, lambda v: None if 0 < v < math.inf else "must be a finite number > 0")


def add_decode(p, which: str, default: str | None) -> None:
    from .decoding import DECODES

    said = "argmax, the paper's" if default else "each file's own: its stored labels, else argmax"
    p.add_argument("--decode", choices=DECODES, default=default,
                   help=f"NER: the labels {which}: each word's most probable label (argmax) or the most probable "
                        f"valid IOB2 path of the distributions (iob2: no I-X opens a span; a single CRF's best "
                        f"valid path under its scores, a file's stored CRF path kept); default {said}")


def add_n_boot(p) -> None:
    p.add_argument("--n-boot", type=N_BOOT, default=1000, help="bootstrap resamples of sentences (default 1000)")


DEVICE = typed(str, lambda device: f"{problem}; use --device cpu" if (problem := device_problem(device))
               else None)  # "cuda" refused at once on a machine without a GPU, before anything is read


def add_device(p, default: str | None = None) -> None:
    """--device: where the command loads its models (default: `default`, None: the run's train.device)."""
    where = default or "the run's train.device"
    p.add_argument("--device", type=DEVICE, choices=("cpu", "cuda"), default=default,
                   help=f"where to load the models (default: {where})")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train (or resume) the members of an ensemble; the task comes from the config")
    p.add_argument("--config", required=True, help="TOML config with task = \"ner\" or \"nmt\" (see configs/)")
    p.add_argument("--out", required=True, type=output_folder, help="run directory (resumes if it holds a partial run)")
    one = p.add_mutually_exclusive_group()
    one.add_argument("--member", type=in_range(int, 0), help="train member I alone (0-based), one job of a job array "
                                                            "of K jobs writing into the same --out")
    one.add_argument("--individual", type=in_range(int, 0), help="NER: train individual model I alone (0-based)")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from .pipeline import train

    print(train(runnable_config(args.config, args.overrides), args.out, member=args.member,
                individual=args.individual))
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics with bootstrap 95%% CIs of a predictions file, or of every system of "
                                        "a run (--run)")
    p.add_argument("predictions", nargs="?", help="predictions .npz (docs/predictions-format.md)")
    p.add_argument("--run", type=output_folder, help="a run directory instead: members, ensembles, students (writes "
                                                     "RUN/eval/<split>)")
    p.add_argument("--split", choices=("dev", "test"), help="split of --run (default test)")
    p.add_argument("--src", help="translation, with --run: a source file to evaluate on instead of a split, with "
                                 "--ref its reference translations (writes RUN/eval/pair-<source file stem>)")
    p.add_argument("--ref", help="with --src: the reference translations, one a line")
    p.add_argument("--name", help="with --src: the folder under RUN/eval (default pair-<source file stem>)")
    p.add_argument("--out", type=output_folder,
                   help="folder for metrics.json and PNGs (default: PREDICTIONS without .npz, plus -eval)")
    add_n_boot(p)
    p.add_argument("--seed", type=in_range(int, 0), default=0, help="bootstrap seed (default 0)")
    add_decode(p, "F1 scores, decoded from the file's distributions (a predictions file only)", None)
    add_device(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    if (args.predictions is None) == (args.run is None):
        raise UserError("evaluate: give a predictions file or --run RUN")
    pair = {"--src": args.src, "--ref": args.ref, "--name": args.name}
    if args.run is not None and args.decode is not None:
        raise UserError("--decode: rescores a predictions file; a run's evaluation keeps the paper's argmax")
    if args.run is None and any(value is not None for value in pair.values()):
        raise UserError(f"{next(flag for flag, value in pair.items() if value is not None)}: only with --run RUN")
    if args.run is not None:
        from .pipeline import evaluate_run

        if args.src is not None and args.split is not None:
            raise UserError("--split: evaluates one of the config's splits; --src and --ref give the pair instead")
        if args.name is not None and args.src is None:
            raise UserError("--name: names the folder of a --src/--ref pair")
        print(evaluate_run(args.run, args.split or "test", args.n_boot, args.device, args.overrides, src=args.src,
                           ref=args.ref, name=args.name))
        return 0
    from .calibration.report import evaluate, format_table
    from .decoding import decode
    from .predictions import load_predictions

    no_settings(args, "evaluating a predictions file")
    out = writable_folder(Path(args.predictions).with_suffix("").as_posix() + "-eval") if args.out is None else args.out
    predictions = load_predictions(args.predictions)
    predictions = predictions if args.decode is None else decode(predictions, args.decode, args.predictions)
    metrics = evaluate(predictions, out_dir=out, n_boot=args.n_boot, seed=args.seed)
    print(format_table(metrics))
    print(f"wrote {out}/metrics.json and plots")
    return 0


COMPARED = {"tagging": "f1_conlleval,f1,b_ece", "translation": "bleu,ece_1"}  # compare's default metrics


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="two systems' predictions of the same sentences: each metric's paired "
                                       "difference A - B, its bootstrap interval and p-value")
    p.add_argument("a", metavar="A.npz", help="predictions file of system A (docs/predictions-format.md)")
    p.add_argument("b", metavar="B.npz", help="predictions file of system B, of the same sentences")
    p.add_argument("--metrics", help="comma-separated, as in metrics.json or the tables (F1, B-ECE, ECE-1, BLEU; "
                                     "F1 is metrics.json's f1, seqeval's strict F1; the paper's is f1_conlleval; "
                                     "f1_conlleval:PER: one entity type's); "
                                     f"default tagging {COMPARED['tagging']}, translation {COMPARED['translation']}")
    add_n_boot(p)
    p.add_argument("--seed", type=in_range(int, 0), default=0, help="bootstrap seed (default 0)")
    p.add_argument("--out", help="also write the rows as JSON to this file (undefined values null)")
    add_decode(p, "F1 scores of both systems, decoded from their distributions", None)
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    from .calibration.comparison import compare, format_comparison
    from .io_utils import atomic_write_json
    from .predictions import load_predictions

    no_settings(args, "compare")
    if args.out is not None:
        writable_folder(str(Path(args.out).parent))
    metrics = args.metrics if args.metrics is not None else COMPARED[load_predictions(args.a).task]
    rows = compare(args.a, args.b, [m for m in metrics.split(",") if m.strip()], args.n_boot, args.seed,
                   decode=args.decode)
    print(format_comparison(rows, "A", "B"))
    floor = 2 / (args.n_boot + 1)  # calibration.bootstrap's smallest two-sided p
    if any(row["p_value"] <= floor * (1 + 1e-9) for row in rows):
        print(f"p = {floor:.3f} is the smallest p that --n-boot {args.n_boot} allows: such a p says only 'at most "
              f"{floor:.3f}'; more resamples give a sharper one")
    rules = (rows[0].get("labels_a", "argmax"), rows[0].get("labels_b", "argmax"))
    if rules != ("argmax", "argmax"):
        print(f"Labels scored by F1: A {rules[0]}, B {rules[1]} (argmax: each word's most probable label; iob2: the "
              "most probable valid IOB2 path; stored path: a CRF's Viterbi path; --decode sets both)")
    print(f"A = {args.a}, B = {args.b}")
    if args.out is not None:
        atomic_write_json(args.out, rows)
        print(f"wrote {args.out}")
    return 0


def add_memoize(sub) -> None:
    p = sub.add_parser("memoize", help="store an ensemble's distributions over its training data (RUN/teachers/)")
    p.add_argument("--run", "--ensemble", required=True, type=output_folder, dest="run",
                   help="run directory (--ensemble: the older NER name)")
    p.add_argument("--out", type=output_folder, help="NER: teacher store folder (default RUN/teachers/ensemble-K)")
    p.add_argument("--members", type=MEMBERS, help="ensemble size (default: NER the largest configured, "
                                                   "translation distill.teacher_members)")
    p.add_argument("--temperature-scaled", action="store_true",
                   help="NER: teacher = softmax(log q / T), T fitted on the dev split")
    add_truncation(p)
    add_device(p)
    p.set_defaults(func=run_memoize)


def add_truncation(p) -> None:
    p.add_argument("--top-k", type=like_setting(TranslationDistillation, "top_k"),
                   help="translation: V', entries kept per token (default distill.top_k)")
    p.add_argument("--epsilon", type=like_setting(TranslationDistillation, "epsilon"),
                   help="translation: > 0, adaptive truncation at mass 1 - epsilon (default distill.epsilon)")
    p.add_argument("--samples", type=like_setting(TranslationDistillation, "samples"),
                   help="translation: R > 0, a sampled store of R draws a token (unbiased KD) instead of top-V'; "
                        "0: top-V' (default distill.samples)")


def run_memoize(args) -> int:
    from .pipeline import memoize

    print(memoize(args.run, args.members, args.device, args.temperature_scaled, args.top_k, args.epsilon, args.out,
                  args.overrides, samples=args.samples))
    return 0


def add_distill(sub) -> None:
    p = sub.add_parser("distill", help="train a student of a run's ensemble (RUN/students/), memoizing it first if "
                                       "needed")
    p.add_argument("--run", type=output_folder, help="run directory")
    p.add_argument("--members", type=MEMBERS, help="teacher ensemble size (default: NER the largest configured, "
                                                   "translation distill.teacher_members)")
    p.add_argument("--config", help="NER: distillation TOML (configs/distill-conll.toml; default: its defaults)")
    p.add_argument("--temperature-scaled", action="store_true", help="NER: a temperature-scaled teacher")
    add_truncation(p)
    p.add_argument("--name", help="the student's folder in RUN/students/ (default: named after its teacher, "
                                  "student-3, student-3-top64): a second student of one teacher, other settings")
    p.add_argument("--store", help="older NER form: the teacher store folder (with --config and --out)")
    p.add_argument("--out", type=output_folder, help="older NER form: the student's folder")
    add_n_boot(p)
    add_device(p)
    p.set_defaults(func=run_distill)


def run_distill(args) -> int:
    if args.store is not None or args.out is not None:  # the older NER form
        if args.run is not None or args.name is not None or not (args.store and args.config and args.out):
            raise UserError("distill: give --run RUN (and --name), or (older form) all of --store, --config and --out")
        from .config import DistillConfig, load_config
        from .distill.student import distill_from_store
        from .tables import format_rows
        from .tasks.ner import TASK

        config = load_config(args.config, DistillConfig, args.overrides)
        print(format_rows(distill_from_store(args.store, config, args.out, args.n_boot), TASK.columns,
                          title=f"{args.out} (test)"))
        return 0
    if args.run is None:
        raise UserError("distill: give --run RUN")
    from .pipeline import distill

    print(distill(args.run, args.members, args.device, args.config, args.temperature_scaled, args.top_k,
                  args.epsilon, args.n_boot, args.overrides, samples=args.samples, name=args.name))
    return 0


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="translation: students for each truncation V' and adaptive; BLEU, ECE, "
                                     "bytes/token")
    p.add_argument("--run", required=True, type=output_folder,
                   help="run directory (writes RUN/teachers, RUN/students, RUN/eval)")
    add_sweep_settings(p)


def add_sweep_settings(p) -> None:
    """The sweep's teacher and truncations, shared by `sweep` and its alias `sweep-nmt`."""
    p.add_argument("--members", type=like_setting(TranslationDistillation, "teacher_members"),
                   help="teacher ensemble size (default distill.teacher_members)")
    p.add_argument("--top-k", type=like_setting(TranslationDistillation, "sweep_top_k"), nargs="+",
                   help="V' values (default distill.sweep_top_k)")
    p.add_argument("--epsilon", type=like_setting(TranslationDistillation, "sweep_epsilon"), nargs="*",
                   help="adaptive epsilons (default distill.sweep_epsilon; none given: no adaptive students)")
    p.add_argument("--samples", type=like_setting(TranslationDistillation, "samples"), nargs="*",
                   help="draws R of sampled stores, one student each (default: distill.samples if > 0; none given: "
                        "no sampled students)")
    add_n_boot(p)
    add_device(p)
    p.set_defaults(func=run_sweep)


def run_sweep(args) -> int:
    from .pipeline import sweep

    print(sweep(args.run, args.members, args.top_k, args.epsilon, args.n_boot, args.device, args.overrides,
                samples=args.samples))
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="tag (or translate) a file with a model folder or an NER run's ensemble")
    p.add_argument("--model", help="a member, individual or student folder (model.json)")
    p.add_argument("--run", help="an NER run directory: its ensemble (member folders) tags the input")
    p.add_argument("--members", type=MEMBERS, help="with --run: ensemble size (default: the largest configured)")
    p.add_argument("--input", required=True,
                   help="the text ('-': standard input). NER: --format conll (one token a line, blank lines between "
                        "sentences), jsonl ({\"tokens\": [...]} a line) or text (one sentence a line, split into "
                        "words Penn-Treebank style, as CoNLL-2003 is, by NLTK); translation: source text")
    p.add_argument("--out", required=True, type=output_folder,
                   help="folder for entities.jsonl, predictions.conll (translation: translations.txt) and, with gold, "
                        "predictions.npz")
    p.add_argument("--format", choices=("conll", "jsonl", "text"), dest="fmt",
                   help="NER: the input's format (default: .jsonl/.json/.ndjson jsonl, .txt text, otherwise and for "
                        "'-' conll; with --tag-col conll)")
    p.add_argument("--token-col", type=int, help="NER conll: the token column (needed when the file has more than "
                                                 "one column besides the tags)")
    p.add_argument("--tag-col", type=int, help="NER conll: the gold tag column (e.g. -1), if the file has one: adds "
                                               "predictions.npz for `evaluate`")
    p.add_argument("--scheme", choices=("iob1", "iob2"), help="NER: the gold tags' scheme (default iob2)")
    p.add_argument("--encoding", help="NER: the input's text encoding (default utf-8)")
    p.add_argument("--comment-prefix", help="NER conll: comment lines before a sentence start with it (default "
                                            "'#'; '' for none)")
    p.add_argument("--token-prefix", help="NER conll: a regular expression removed from every token (e.g. "
                                          "'[a-z]+:' for WikiANN's en:John)")
    p.add_argument("--min-confidence", type=typed(float, lambda v: None if 0 <= v <= 1 else "must lie in [0, 1]"),
                   help="NER: keep in entities.jsonl only spans of at least this confidence (default 0)")
    p.add_argument("--target-precision", type=typed(float, lambda v: None if 0 < v <= 1 else "must lie in (0, 1]"),
                   help="NER: with --dev, the smallest confidence threshold reaching this span precision on dev, "
                        "applied as --min-confidence (threshold.json)")
    p.add_argument("--dev", help="NER: a CoNLL file with gold tags for --target-precision, read with the same "
                                 "settings (for a --format text or jsonl input, --token-col and --tag-col are the dev "
                                 "file's)")
    add_temperature(p, "NER: ")
    add_decode(p, "predicted", "argmax")
    p.add_argument("--unknown-tag", type=like_setting(TaggingData, "unknown_tag"),
                   help="NER: a gold tag (of --input or --dev) the model never saw in training: 'error' (default) "
                        "refuses the file naming its line, 'O' maps it to O with one warning that counts them (as "
                        "the training config's data.unknown_tag)")
    p.add_argument("--ref", help="translation: reference translations, one a line (adds predictions.npz)")
    add_device(p, "cpu")
    p.set_defaults(func=run_predict)


def add_temperature(p, which: str = "") -> None:
    one = p.add_mutually_exclusive_group()
    one.add_argument("--temperature", type=TEMPERATURE,
                     help=f"{which}temperature-scale the confidences: softmax(log p / T), as evaluation's + TS rows")
    one.add_argument("--calibrated", action="store_true",
                     help=f"{which}temperature-scale at the T that `evaluate --run RUN` fitted on dev for this model "
                          "(or ensemble)")


def run_predict(args) -> int:
    from .pipeline import predict

    no_settings(args, "predict")
    options = {name: getattr(args, name) for name in ("ref", "fmt", "tag_col", "token_col", "scheme", "encoding",
                                                      "comment_prefix", "token_prefix", "min_confidence",
                                                      "target_precision", "dev", "temperature", "unknown_tag")}
    options |= {"decode": args.decode} if args.decode != "argmax" else {}
    options = {name: value for name, value in options.items() if value is not None}
    files = predict(args.input, args.out, model=args.model, run=args.run, members=args.members, device=args.device,
                    calibrated=args.calibrated, **options)
    print("wrote " + ", ".join(str(f) for f in files))
    scored = [f for f in files if f.name == "predictions.npz"]
    if scored:  # gold was given: span F1 or BLEU at once, every metric with intervals from evaluate
        from .calibration.report import gold_summary

        print(gold_summary(scored[0]))
    threshold = [f for f in files if f.name == "threshold.json"]
    if threshold:
        from .io_utils import read_json
        from .tag_text import threshold_summary

        print(threshold_summary(read_json(threshold[0], "run predict again")))
    return 0


def add_translate(sub) -> None:
    p = sub.add_parser("translate", help="translate text with a translation model folder or a run's ensemble")
    p.add_argument("--model", help="a member or student folder of a translation run")
    p.add_argument("--run", help="a translation run: the ensemble of its first --members members")
    p.add_argument("--members", type=MEMBERS, help="with --run: ensemble size (default: the largest configured)")
    p.add_argument("--input", default="-", help="source text, one sentence a line (.gz read through gzip; default "
                                                "'-': standard input)")
    p.add_argument("--output", default="-", help="translations, one a line (default '-': standard output)")
    p.add_argument("--encoding", default="utf-8",
                   help="the input's text encoding (default utf-8; output is UTF-8)")
    p.add_argument("--out", type=output_folder, help="older form: a folder for translations.txt (instead of --output)")
    p.add_argument("--beam", type=in_range(int, 1), help="beam size (default: the model's decode.beam_size)")
    p.add_argument("--length-penalty", type=like_setting(Decoding, "alpha"), metavar="ALPHA",
                   help="GNMT length penalty α of the beam search (default: the model's decode.alpha); 0 ranks "
                        "hypotheses by summed log-probability, as CTranslate2's length_penalty=0")
    p.add_argument("--jsonl", action="store_true",
                   help="one JSON object a line: source, translation, and over the same positions, the output "
                        "subwords and EOS: log_prob (their summed log-probability, nats), mean_token_confidence (the "
                        "mean probability of each chosen subword), tokens (their number), pieces (the subwords, "
                        "\"</s>\" last) and token_confidences (the probability the model or ensemble gave each piece "
                        "when the search chose it); an empty or blank line gives translation \"\" with log_prob and "
                        "mean_token_confidence null, tokens 0 and pieces and token_confidences []")
    add_device(p, "cpu")
    p.set_defaults(func=run_translate)


def run_translate(args) -> int:
    from .pipeline import translate

    no_settings(args, "translate")
    if args.out is not None:
        if args.output != "-":
            raise UserError("translate: give --output FILE or (older form) --out FOLDER, not both")
        args.output = str(Path(args.out) / "translations.txt")
    if args.output != "-":
        writable_folder(str(Path(args.output).parent))
    n = translate(args.input, None if args.output == "-" else args.output, model=args.model, run=args.run,
                  members=args.members, beam_size=args.beam, jsonl=args.jsonl, device=args.device,
                  length_penalty=args.length_penalty, encoding=args.encoding)
    if args.output != "-":
        print(f"wrote {counted(n, 'translation')} to {args.output}")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="a model folder for another runtime: Hugging Face (IID taggers) or "
                                      "CTranslate2 (translation)")
    p.add_argument("--model", required=True, help="a member, individual or student folder")
    p.add_argument("--format", required=True, choices=("hf", "ctranslate2"), dest="fmt")
    p.add_argument("--out", required=True, type=output_folder, help="the exported folder (new or empty)")
    add_temperature(p, "hf: the classifier folded with 1/T; ")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from .pipeline import export

    no_settings(args, "export")
    print(f"wrote {export(args.model, args.fmt, args.out, args.temperature, args.calibrated)}")
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the pipeline end to end on a small CoNLL-2003 setting (minutes on a CPU)")
    p.add_argument("--data", default="../shared/data", help="folder holding conll2003-en/ (default ../shared/data)")
    p.add_argument("--out", default="runs/demo", type=output_folder, help="run directory root (default runs/demo)")
    p.add_argument("--config", help="demo config (default: configs/demo.toml, shipped with the package)")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from .demo import DEMO_CONFIG, demo

    print(demo(args.data, args.out, args.config or DEMO_CONFIG, overrides=args.overrides))
    return 0


def add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="every experiment of the paper at a scale: trains what is missing, then "
                                         "tables (Markdown, CSV), figures (PNG) and OUT/index.html")
    p.add_argument("--scale", required=True, choices=("smoke", "cpu", "gpu"),
                   help="smoke: tiny, minutes; cpu: this 2-core machine, about a day; gpu: the paper's sizes")
    p.add_argument("--out", required=True, type=output_folder,
                   help="report folder (its runs/ resume; processes given the same one share the work)")
    p.add_argument("--only", help="comma-separated experiments (table1, figure2, domain-shift, ...; default all)")
    p.add_argument("--dry-run", action="store_true", help="print the plan: each experiment, its steps, whether "
                                                          "each is done, the estimated time; run nothing")
    p.add_argument("--report-only", action="store_true", help="write the tables, figures and page of what is "
                                                              "done now; run nothing (beside a running reproduce)")
    p.add_argument("--data", default="../shared/data", help="the data root (default ../shared/data)")
    p.set_defaults(func=run_reproduce)


def run_reproduce(args) -> int:
    from .reproduce import StepsLeft, reproduce

    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only is not None else None
    try:
        if args.dry_run and args.report_only:
            raise UserError("--dry-run and --report-only: choose one (the first prints the plan, the second "
                            "writes the report of what is done)")
        print(reproduce(args.scale, args.out, only, args.dry_run, args.data, args.overrides,
                        report_only=args.report_only))
    except StepsLeft as err:  # not bad input (2): the work is unfinished, the page says what is missing
        print(f"ensemble-distill: {err}", file=sys.stderr)
        return 1
    return 0


def runnable_config(path, overrides, cls=None):
    """The config a training command runs (config.load_config), once this machine can run it: a device or an
    encoder cut it lacks is refused naming the file and the --set (Task.check_runnable), before any work."""
    from .config import load_config
    from .tasks import get_task

    cfg = load_config(path, cls, overrides)
    source = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    return get_task(cfg.task).check_runnable(cfg, source)


def no_settings(args, what: str) -> None:
    """Refuse --set on a command that reads no config."""
    if args.overrides:
        raise UserError(f"--set {args.overrides[0]}: {what} reads no config")


# ----------------------------------------------------------------------------------------------------------------
# The older verbs, kept as aliases


def add_aliases(sub) -> None:
    p = sub.add_parser("train-ensemble", help="alias: train an NER ensemble, then evaluate it")
    p.add_argument("--config", required=True, help="TOML config (see configs/)")
    p.add_argument("--out", required=True, type=output_folder, help="run directory (resumes if it holds a partial run)")
    p.add_argument("--split", default="test", choices=("train", "dev", "test"),
                   help="split to evaluate on after training (default test)")
    add_n_boot(p)
    p.set_defaults(func=run_train_ensemble)
    p = sub.add_parser("train-nmt", help="alias of train for a translation config")
    p.add_argument("--config", required=True, help="TOML config (configs/multi30k-small.toml, multi30k-base.toml)")
    p.add_argument("--out", required=True, type=output_folder, help="run directory (resumes if it holds a partial run)")
    p.add_argument("--label-smoothing", type=like_setting(TranslationTraining, "label_smoothing"),
                   help="override train.label_smoothing (0: CE run, 0.1: LS run)")
    p.set_defaults(func=run_train_nmt)
    p = sub.add_parser("evaluate-nmt", help="alias of evaluate --run for a translation run")
    p.add_argument("--run", required=True, type=output_folder, help="run directory of train-nmt (writes RUN/eval)")
    p.add_argument("--split", default="test", choices=("dev", "test"), help="split to evaluate (default test)")
    add_n_boot(p)
    add_device(p)
    p.set_defaults(func=run_evaluate_nmt)
    for name, func in (("memoize-nmt", run_memoize_nmt), ("distill-nmt", run_distill_nmt)):
        p = sub.add_parser(name, help=f"alias of {name.removesuffix('-nmt')} --run for a translation run")
        p.add_argument("--run", required=True, type=output_folder,
                       help="run directory of train-nmt (writes RUN/teachers, RUN/students)")
        p.add_argument("--members", type=like_setting(TranslationDistillation, "teacher_members"),
                       help="teacher ensemble size (default distill.teacher_members)")
        add_truncation(p)
        add_device(p)
        p.set_defaults(func=func)
    p = sub.add_parser("sweep-nmt", help="alias of sweep")
    p.add_argument("--run", required=True, type=output_folder,
                   help="run directory of train-nmt (writes RUN/teachers, RUN/students, RUN/eval)")
    add_sweep_settings(p)


def run_train_ensemble(args) -> int:
    from .config import TaggingConfig
    from .pipeline import evaluate_run, train

    cfg = runnable_config(args.config, args.overrides, TaggingConfig)
    train(cfg, args.out)
    print(evaluate_run(args.out, args.split, args.n_boot))
    return 0


def run_train_nmt(args) -> int:
    from .config import TranslationConfig
    from .pipeline import train

    overrides = list(args.overrides)
    if args.label_smoothing is not None:
        overrides.append(f"train.label_smoothing={args.label_smoothing!r}")
    print(train(runnable_config(args.config, overrides, TranslationConfig), args.out))
    return 0


def run_evaluate_nmt(args) -> int:
    from .pipeline import evaluate_run

    print(evaluate_run(args.run, args.split, args.n_boot, args.device, args.overrides))
    return 0


def run_memoize_nmt(args) -> int:
    from .pipeline import memoize

    print(memoize(args.run, args.members, args.device, top_k=args.top_k, epsilon=args.epsilon,
                  overrides=args.overrides, samples=args.samples))
    return 0


def run_distill_nmt(args) -> int:
    from .pipeline import distill

    print(distill(args.run, args.members, args.device, top_k=args.top_k, epsilon=args.epsilon,
                  overrides=args.overrides, samples=args.samples))
    return 0


def quiet_progress_in_logs(seconds: int = 30) -> None:
    """Progress bars redraw at most every `seconds` when standard error is not a terminal (a log file of a run in
    the background), instead of tqdm's 0.1 s, which grows such a log by hundreds of KB a minute. tqdm reads its
    TQDM_* defaults when it is first imported, so this runs before anything imports it (main's first line); a
    TQDM_MININTERVAL the user set wins."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", str(seconds))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's or `kill`'s), raised where the command is, so that it ends as an interrupt does."""


def _terminated(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    quiet_progress_in_logs()  # first: building the parser imports tqdm, which reads TQDM_* once, at its import
    parser = build_parser()
    args = parser.parse_args(argv)
    on_term = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run(args)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)


def _run(args) -> int:
    if not args.debug:  # a warning is a line for the user, not the source line that raised it
        warnings.formatwarning = lambda message, *_, **__: f"ensemble-distill: warning: {message}\n"
    try:
        if "WORLD_SIZE" in os.environ:  # under torchrun: join its process group (torch imported only then)
            from .distributed import init_from_env

            init_from_env()
        return args.func(args) or 0
    except UserError as err:
        if args.debug:
            raise
        print(f"ensemble-distill: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of standard output left (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit either
        return 1
    except OSError as err:  # an output the system refuses mid-run (the folders were checked up front)
        if args.debug or not _refused_write(err):
            raise
        print(f"ensemble-distill: error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        what, status = ("terminated (SIGTERM)", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
        print(f"ensemble-distill: {what}; rerun the same command to go on: finished models, epochs and teacher store "
              "shards are kept", file=sys.stderr)
        return status


def _refused_write(err: OSError) -> bool:
    return err.filename is not None and (
        isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError))
        or err.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT))


if __name__ == "__main__":
    sys.exit(main())
