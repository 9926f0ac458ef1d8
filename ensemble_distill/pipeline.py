"""The commands' stages for either task, the task read from the config or the run folder (`task = "ner" | "nmt"`).

    train(load_config("configs/conll-iid.toml"), "runs/conll-iid")     # members (+ NER individuals)
    evaluate_run("runs/conll-iid")            # members, individuals, ensembles, students -> RUN/eval/test/
    memoize("runs/conll-iid")                 # RUN/teachers/ensemble-<k>[-ts]
    distill("runs/conll-iid")                 # RUN/students/student-<k> (student-ts-<k>), memoizing if needed
    predict("new.txt", "out/", model="runs/conll-iid/students/student-3")   # a model folder on new text

Each stage is written once over the Task (tasks/base.py): ensemble.py trains, evaluation.py evaluates,
distill/memoize.py memoizes, distill/student.py trains students; the run folder is the same for both (runs.py).
"""

import warnings
from pathlib import Path

from .config import DistillConfig
from .errors import UserError, counted
from .io_utils import run_lock


def train(cfg, run_dir, progress: bool = True, member: int | None = None, individual: int | None = None) -> str:
    """Train (or resume) every member (and NER individual) of the run; returns a one-line summary. `member` or
    `individual` I: that model alone (ensemble.train_members' `only`), so K jobs of a job array train K members
    at once into one run folder. Raises ValueError when both are given."""
    if member is not None or individual is not None:
        from .ensemble import train_members, unfinished_models

        if member is not None and individual is not None:
            raise ValueError("train: give member or individual, not both (each names one model)")
        role, index = ("member", member) if member is not None else ("individual", individual)
        train_members(cfg, run_dir, progress, only=(role, index))
        left = [folder.name for folder in unfinished_models(cfg, run_dir)]
        return (f"{run_dir}: {role}-{index} trained; " + (f"not yet: {', '.join(left)}" if left else
                f"all trained; next: ensemble-distill evaluate --run {run_dir}"))
    from .ensemble import train_members
    train_members(cfg, run_dir, progress)
    individuals = getattr(cfg.ensemble, "individuals", 0)
    also = f" and {counted(individuals, 'individual')}" if individuals else ""
    return (f"{run_dir}: {counted(cfg.ensemble.members, 'member')}{also} trained; next: ensemble-distill evaluate "
            f"--run {run_dir}")


def require_trained(run_dir, individuals: bool = True) -> None:
    """Refuse a run whose members (and, `individuals`, NER individuals) are not all trained: a job array's jobs
    may still be running, or some failed. Raises UserError naming the missing models and the command to train
    them (ensemble.require_finished)."""
    from .ensemble import read_run_config, require_finished

    require_finished(read_run_config(run_dir), run_dir, individuals)


def evaluate_run(run_dir, split: str = "test", n_boot: int = 1000, device: str | None = None,
                 overrides=(), progress: bool = True, src=None, ref=None, name: str | None = None) -> str:
    """Evaluate every system of the run on `split`, raw and temperature-scaled (evaluation.evaluate_run,
    RUN/eval/<split>/); returns the Markdown table. Translation: `src` and `ref` (two line-aligned files) evaluate
    on that pair instead, in RUN/eval/<name> (default pair-<the source file's stem>), with the temperatures fitted
    on the run's dev split as always."""
    from .ensemble import open_run, run_task
    from .evaluation import evaluate_run as evaluate_systems
    from .tables import format_rows

    if (src is None) != (ref is None):
        raise UserError("evaluate: --src and --ref go together (a source file and its reference translations)")
    if src is not None and run_task(run_dir) == "ner":
        raise UserError("--src/--ref: a translation test pair; to score an NER run's models on another CoNLL "
                        "file use predict --run RUN --input FILE --tag-col -1, then evaluate its predictions")
    require_trained(run_dir)
    if src is None:
        run = open_run(run_dir, splits=tuple(dict.fromkeys(("dev", split))), progress=progress, device=device,
                       overrides=overrides)
    else:
        from .tasks.nmt import read_pair

        split = name or "pair-" + Path(str(src).removesuffix(".gz")).stem
        if split in ("train", "dev", "test") or not Path(split).name == split or split.startswith("."):
            raise UserError(f"--name {split}: not a folder name of its own under RUN/eval (train, dev and test are "
                            "the config's splits)")
        run = open_run(run_dir, splits=("dev",), progress=progress, device=device, overrides=overrides)
        run.data.splits[split] = read_pair(run.cfg, run.data.vocab, src, ref)
    with run_lock(Path(run_dir) / "eval" / split):
        rows = evaluate_systems(run, split, n_boot, progress)
    return format_rows(rows, run.task.columns, title=f"{run_dir} ({split})")


def memoize(run_dir, members: int | None = None, device: str | None = None, temperature_scaled: bool = False,
            top_k: int | None = None, epsilon: float | None = None, out=None, overrides=(),
            progress: bool = True, samples: int | None = None) -> str:
    """Write (or resume, or reuse) the teacher store of the run's nested ensemble of `members`, temperature-scaled
    or not, at `out` (default RUN/teachers/<store_name>: ensemble-<k>[-ts] for NER, whose stores keep every label;
    translation: ensemble-<k>-top<V'>, -eps<e>-max<V'> or, `samples` R > 0, -sampled<R>): distill/memoize.py, the
    settings from the task (Task.teacher_settings). Returns a one-line summary."""
    from .distill.memoize import memoize as memoize_teacher
    from .distill.memoize import teacher_name
    from .teacher_store import MANIFEST

    store_dir, members, truncation = teacher_store_dir(run_dir, members, temperature_scaled, top_k, epsilon, samples,
                                                       out, overrides)
    with run_lock(store_dir):  # a store another process writes is refused first, whatever the run holds
        require_trained(run_dir, individuals=False)
        from .ensemble import open_run

        finished_before = (store_dir / MANIFEST).is_file()  # written last: the store is reused as it is
        run = open_run(run_dir, splits=("train", "dev") if temperature_scaled else ("train",), progress=progress,
                       device=device, overrides=overrides)
        store = memoize_teacher(run, members, truncation, temperature_scaled, store_dir, progress)
    done = "reused the finished store" if finished_before else "wrote"
    return (f"{done} {store.path}: {teacher_name(store)} over {len(store)} sentences, {store.num_positions} "
            f"positions, {store.bytes_per_token():.1f} bytes/token")


def teacher_store_dir(run_dir, members: int | None = None, temperature_scaled: bool = False, top_k=None, epsilon=None,
                      samples=None, out=None, overrides=()) -> tuple:
    """Where `memoize` puts the run's teacher store (`out`, default RUN/teachers/<store_name>), with the teacher's
    ensemble size and truncation (Task.teacher_settings: the command's values, else the config's)."""
    from .distill.memoize import store_name
    from .ensemble import ensemble_member_ids, read_run_config
    from .tasks import get_task

    cfg = read_run_config(run_dir, overrides)
    members, truncation = get_task(cfg.task).teacher_settings(cfg, members, top_k, epsilon, samples)
    name = store_name(len(ensemble_member_ids(cfg, members)), truncation, temperature_scaled)
    return (Path(out) if out is not None else Path(run_dir) / "teachers" / name), members, truncation


def ner_store_dir(run_dir, members: int | None, temperature_scaled: bool) -> Path:
    """RUN/teachers/ensemble-<k>[-ts]: where `memoize` puts an NER run's store by default (teacher_store_dir)."""
    return teacher_store_dir(run_dir, members, temperature_scaled)[0]


def distill(run_dir, members: int | None = None, device: str | None = None, config=None,
            temperature_scaled: bool = False, top_k: int | None = None, epsilon: float | None = None,
            n_boot: int = 1000, overrides=(), progress: bool = True, samples: int | None = None,
            name: str | None = None) -> str:
    """Train (or resume) a student of the run's ensemble of `members` in RUN/students/ (its folder `name`, by
    default named after its teacher: distill/student.py student_dir), memoizing its teacher first if needed, and
    evaluate it alone on test (translation: `samples` R > 0 distils from a sampled store). The student's settings
    are the task's (Task.student_settings): NER a distillation config (`config`, a DistillConfig TOML file;
    default: DistillConfig's defaults) with `overrides`; translation the run's config with `overrides` and
    `device`, where train.* overrides but train.device are the student's own training settings
    (tasks.nmt.student_overrides). Returns the student's table (raw and temperature-scaled rows)."""
    from .distill.student import check_student_name, distill_run, evaluate_student
    from .ensemble import ensemble_member_ids, open_run, read_run_config, run_task
    from .tables import format_rows
    from .tasks import get_task

    if name is not None:
        check_student_name(name)
    task_name = run_task(run_dir)
    task = get_task(task_name)
    settings, run_overrides, device = task.student_settings(run_dir, members, config, overrides, device)
    run_cfg = read_run_config(run_dir, run_overrides)
    task.teacher_settings(run_cfg, members, top_k, epsilon, samples)  # refused first
    ensemble_member_ids(run_cfg, members)  # an ensemble larger than the run's: before its data is read
    if device is not None:  # where open_run puts the run (translation), so where a student of its own trains
        run_cfg.train.device = device
    if settings is not None:  # a student's own settings: its device and encoder cut, before anything is written
        source = "--device" if device else "distill config" if task_name == "ner" else Path(run_dir) / "config.toml"
        task.check_runnable(task.student_config(run_cfg, settings), str(source))
    require_trained(run_dir, individuals=False)
    run = open_run(run_dir, splits=("train", "dev", "test"), progress=progress, device=device,
                   overrides=run_overrides)
    store, student, model = distill_run(run, members, top_k, epsilon, samples, temperature_scaled, settings,
                                        progress, name)
    rows = evaluate_student(run, student, store, model, settings, n_boot, progress)
    return format_rows(rows, task.columns, title=f"{student} (test)")


def student_config(run_dir, members: int | None, config, overrides) -> DistillConfig:
    """The NER student's DistillConfig: the file `config` (or the defaults) with `overrides`, its teacher the
    ensemble of `members` of `run_dir` (tasks.ner.student_settings)."""
    from .tasks.ner import student_settings

    return student_settings(run_dir, members, config, overrides)


def sweep(run_dir, members=None, top_ks=None, epsilons=None, n_boot: int = 1000, device=None, overrides=(),
          progress: bool = True, samples=None) -> str:
    """One student per truncation the task sweeps (translation: each V', adaptive epsilon and sampled store's R
    in `samples`), then the run's evaluation (distill/student.sweep); returns the truncation table. Raises
    UserError for a task with nothing to sweep (NER keeps every label)."""
    from .distill.student import sweep as sweep_students
    from .ensemble import ensemble_member_ids, open_run, read_run_config
    from .tables import format_sweep
    from .tasks import get_task

    cfg = read_run_config(run_dir, overrides)
    get_task(cfg.task).sweep_truncations(cfg, top_ks, epsilons, samples, run_dir)  # refused before loading anything
    ensemble_member_ids(cfg, members)
    require_trained(run_dir, individuals=False)
    run = open_run(run_dir, splits=("train", "dev", "test"), progress=progress, device=device, overrides=overrides)
    return format_sweep(sweep_students(run, members, top_ks, epsilons, n_boot, progress, samples), run.task.columns,
                        str(run_dir))


def predict(input_path, out_dir, model=None, run=None, members: int | None = None, device: str = "cpu",
            calibrated: bool = False, **options) -> list[Path]:
    """Run a model folder (`model`) or an NER run's ensemble of `members` (`run`: its member folders, default the
    largest configured ensemble), loaded on `device` ("cpu", "cuda"), on a file; `options`: the task's reader and
    output settings (READER_OPTIONS; NER: tag_text.predict's, `temperature` among them). `calibrated`: NER,
    temperature-scaled at the T evaluation fitted on dev for that model or ensemble (calibrated.py). Reads only the
    model folders (and RUN/config.toml and the ensemble's recorded T for the ensemble's members). Returns the files
    written."""
    from .runs import read_model_spec
    from .tasks import get_task

    if (model is None) == (run is None):
        raise UserError("predict: give --model FOLDER (a member, individual or student) or --run RUN")
    if run is not None:
        from .ensemble import ensemble_member_ids, read_run_config, run_task

        if run_task(run) != "ner":
            raise UserError(f"{run}: predict --run tags with an NER ensemble; for translation use --model FOLDER")
        from .runs import model_dir
        from .tag_text import predict as tag_file
        from .tasks.ner import load_model

        _only_options("ner", options, run)
        ids = ensemble_member_ids(read_run_config(run), members)
        folders = [model_dir(run, "member", i) for i in ids]
        options = _calibrated(options, calibrated, folders, run, f"ensemble-{len(ids)}")
        models = [load_model(folder, read_model_spec(folder), device) for folder in folders]
        return _without_stale(out_dir, tag_file(models, input_path, out_dir, meta={"run": str(run), "ensemble": ids},
                                                **options))
    spec = read_model_spec(model)
    task = get_task(spec["task"])
    _only_options(spec["task"], {**options, **({"calibrated": True} if calibrated else {})}, model)
    options = _calibrated(options, calibrated, [model])
    return _without_stale(out_dir, task.predict(task.load_model(model, spec, device), input_path, out_dir, **options))


PREDICT_OUTPUTS = ("entities.jsonl", "predictions.conll", "predictions.npz", "threshold.json", "translations.txt")


def _without_stale(out_dir, written: list[Path]) -> list[Path]:
    """`written`, after removing from `out_dir` what an earlier predict left there and this one did not write (a
    predictions.npz of another input beside this input's entities, an old threshold.json), so that the folder
    holds one prediction. The folder `evaluate` made of its predictions.npz is another command's output: it is
    kept, with a warning that it scores the earlier file."""
    out_dir, names = Path(out_dir), {p.name for p in written}
    stale = [out_dir / name for name in PREDICT_OUTPUTS if name not in names and (out_dir / name).is_file()]
    for path in stale:
        path.unlink()
    if stale:
        warnings.warn(f"{out_dir}: removed {', '.join(p.name for p in stale)} of an earlier predict (not written "
                      "this time)")
    scored = out_dir / "predictions-eval"
    if scored.is_dir():
        warnings.warn(f"{scored} scores an earlier predictions.npz; run `ensemble-distill evaluate "
                      f"{out_dir / 'predictions.npz'}` again")
    return written


def _calibrated(options: dict, calibrated: bool, folders: list, run=None, system: str | None = None) -> dict:
    """`options` with `temperature` the T evaluation fitted for the system of `folders` (calibrated.py) when
    `calibrated`. Raises UserError when a temperature is also given, or none was fitted."""
    if not calibrated:
        return options
    if options.get("temperature") is not None:
        raise UserError("--temperature and --calibrated: give one (--calibrated takes the T evaluation fitted on dev)")
    from .calibrated import fitted_temperature

    return {**options, "temperature": fitted_temperature(folders, run, system)}


def _only_options(task: str, options: dict, source) -> None:
    other = sorted(set(options) - READER_OPTIONS[task])
    if other:
        raise UserError(f"{_flag(other[0])}: not for {_a(task)} model ({source})")


def translate(input_path="-", output=None, model=None, run=None, members: int | None = None,
              beam_size: int | None = None, jsonl: bool = False, device: str = "cpu",
              length_penalty: float | None = None, encoding: str = "utf-8") -> int:
    """Translate text (one sentence a line; "-": standard input) with a model folder (`model`) or the ensemble of
    a translation run's first `members` members (`run`; default the largest configured), to `output` (None:
    standard output; a name ending in .gz is written through gzip): tasks.nmt.translate_text, at `beam_size` and
    GNMT `length_penalty` α (default: the model's decode.beam_size and decode.alpha; α = 0 scores hypotheses by
    their summed log-probability, as CTranslate2's length_penalty=0); the input is read as `encoding`. Reads only
    the model folders (and
    RUN/config.toml). Returns the number of sentences. Raises UserError for a tagging model or run, members of
    another vocabulary or not trained yet, and an output that is the input file."""
    from .tasks import load_model
    from .tasks.nmt import translate_text

    if (model is None) == (run is None):
        raise UserError("translate: give --model FOLDER (a member or student) or --run RUN")
    if output is not None and str(output) != "-" and str(input_path) != "-" and _same_file(input_path, output):
        raise UserError(f"--output {output}: is the input file {input_path}; write the translations to another file")
    if run is not None:
        from .ensemble import ensemble_member_ids, read_run_config, run_task

        if run_task(run) != "nmt":
            raise UserError(f"{run}: an NER run; translate takes a translation run (tag text with predict)")
        from .runs import model_dir, require_finished_models

        folders = [model_dir(run, "member", i) for i in ensemble_member_ids(read_run_config(run), members)]
        require_finished_models(run, folders)
        loaded = [load_model(folder, device) for folder in folders]
        vocab = loaded[0].vocab
        other = next((m for m in loaded if m.vocab.path.read_bytes() != vocab.path.read_bytes()), None)
        if other is not None:
            raise UserError(f"{other.folder}/vocab.model: differs from {loaded[0].folder}'s; the members of an "
                            "ensemble share one vocabulary")
    else:
        loaded = [load_model(model, device)]
        if loaded[0].spec["task"] != "nmt":
            raise UserError(f"{model}: {_a(loaded[0].spec['task'])} model; translate takes a translation model (tag "
                            "text with predict)")
    return translate_text([m.model for m in loaded], loaded[0].vocab, loaded[0].spec["decode"], input_path, output,
                          beam_size, jsonl, length_penalty, encoding)


def _same_file(a, b) -> bool:
    """Whether paths `a` and `b` name one file (through symbolic links and relative paths)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or Path(a).samefile(b)
    except OSError:  # one of them does not exist yet
        return False


def _a(task: str) -> str:
    """The task's name with its article, as said aloud: "an NER", "an NMT"."""
    return f"an {task.upper()}"


def export(model, fmt: str, out_dir, temperature: float | None = None, calibrated: bool = False) -> Path:
    """A model folder in another runtime's format: "hf" (an IID tagger as a Hugging Face token-classification
    folder, its classifier temperature-scaled at `temperature`, or with `calibrated` at the T evaluation fitted on
    dev: calibrated.py) or "ctranslate2" (a translation model). Raises UserError for a format the model's task has
    not, or a temperature for a format other than hf."""
    from .calibrated import weights_digest
    from .export import export_ctranslate2, export_hf_token_classification
    from .tasks import load_model

    loaded = load_model(model)
    task = loaded.spec["task"]
    if (task, fmt) == ("ner", "hf"):
        if loaded.spec["model"]["head"] != "iid":
            raise UserError(f"{model}: a CRF tagger has no Hugging Face token-classification form; export an IID "
                            "member or a student")
        temperature = _calibrated({"temperature": temperature}, calibrated, [model])["temperature"]
        source = {"model": str(Path(model).resolve()), "weights_sha256": weights_digest(model)}
        return export_hf_token_classification(loaded.tagger, loaded.encoder_path, loaded.labels, out_dir,
                                              temperature=temperature, source=source)
    if temperature is not None or calibrated:
        raise UserError(f"--{'calibrated' if calibrated else 'temperature'}: only for --format hf (a tagger's "
                        "classifier); a CTranslate2 model's scores are the model's own")
    if (task, fmt) == ("nmt", "ctranslate2"):
        return export_ctranslate2(loaded.model, Path(model) / loaded.spec["vocab"], out_dir)
    wanted = {"ner": "hf", "nmt": "ctranslate2"}[task]
    raise UserError(f"{model}: {_a(task)} model exports to --format {wanted}, not {fmt}")


READER_OPTIONS = {"ner": {"fmt", "tag_col", "token_col", "scheme", "encoding", "comment_prefix", "token_prefix",
                          "min_confidence", "target_precision", "dev", "temperature", "calibrated", "unknown_tag",
                          "decode"},
                  "nmt": {"ref", "beam_size"}}


def _flag(option: str) -> str:
    return "--format" if option == "fmt" else "--" + option.replace("_", "-")
