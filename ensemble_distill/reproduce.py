"""`ensemble-distill reproduce`: every experiment of the paper from one command, at a chosen scale.

    print(reproduce("smoke", "reports/smoke", dry_run=True))   # the plan: experiments, configs, done or not, time
    reproduce("cpu", "reports/cpu")                            # trains what is missing; tables, figures, index.html

An experiment (Table 1, Figure 2, the WNUT-17 domain shift, ...) is a list of steps over run folders
OUT/runs/<run>/ of the existing pipeline (pipeline.py: train, distill, evaluate_run, predict) and a builder
(paper_report.py) that reads what the steps wrote into Markdown and CSV tables, PNG figures and OUT/index.html.
Steps shared by experiments run once. A step is done when its outputs exist: every model's result.json (train,
distill), an evaluation newer than every model it scores (evaluate), a scored predictions file (predict), decided
when its turn comes (an evaluation goes stale when the same call distils a student of its run). So a rerun
retrains nothing, and a killed one resumes: the pipeline resumes a model from its last finished epoch. Run and
student folders started with another config than the plan's are refused before anything runs (check_folders).
Several processes may run the same plan into one OUT, one per core: each step holds its run folder, and a
process skips to the runs that no other process holds (run_steps).

Each run is a config of configs/ with the scale's overrides (`Scale`), its data under the data root (`--data`,
default ../shared/data), and the command's `--set` overrides, each applied to every run whose config has that
key. An experiment whose settings need a feature the code does not have yet (FEATURES) is listed by the plan as
"needs: <feature>" and not run.

Scales (SCALES): `smoke`, tiny, minutes (the tests run it on fixture files); `cpu`, the paper's design sized
for a 2-core machine (about a day, background, resumable), NER on the full CoNLL-2003 training data; `gpu`,
the paper's sizes on one GPU. `estimate_seconds` gives each step's rough time from the per-unit costs measured
on this machine (COSTS).
"""

import dataclasses
import fcntl
import gzip
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import TASK_CONFIGS, apply_overrides, device_problem, load_config, trained_like
from .errors import FolderInUse, UserError
from .io_utils import atomic_write_json, read_json, require_same_config, run_lock
from .runs import RESULT, finished
from .tables import duration

CONFIGS = Path(__file__).resolve().parent / "configs"  # shipped with the package (the repository's configs/ links here)
RUNS, TIMINGS = "runs", "timings.json"
POLL_SECONDS = 60.0  # how often a process with nothing else to do tries the runs another process holds (run_steps)

# Data files under the data root (the layout of ../shared/data, README there).
NER_DATA = {"en": ("conll2003-en", "eng.train", "eng.testa", "eng.testb"),
            "de": ("europarl-ner-de", "train.tsv", "dev.tsv", "test.tsv")}
MULTI30K = ("multi30k-de-en", {"train": "train", "dev": "val", "test": "test_2016_flickr"})
WNUT17_TEST = "wnut17/emerging.test.annotated"


# ----------------------------------------------------------------------------------------------------------------
# Features that some experiments need and the code may not have yet


def _has_setting(cls, key: str) -> bool:
    try:
        apply_overrides(cls, {}, [f"{key}=0"])
        return True
    except UserError:
        return False


FEATURES = {
    # name: (what it is, whether the code has it)
    "ner-label-smoothing": ("label smoothing of NER members' NLL (train.label_smoothing)",
                            lambda: _has_setting(TASK_CONFIGS["ner"], "train.label_smoothing")),
    "baseline": ("the usual single model: all layers tuned, AdamW, linear schedule, full data",
                 lambda: (CONFIGS / "conll-baseline.toml").is_file()),
}


def missing_features(needs) -> list[str]:
    """The features of `needs` the code does not have (FEATURES). Raises ValueError for an unknown name."""
    unknown = [n for n in needs if n not in FEATURES]
    if unknown:
        raise ValueError(f"missing_features: unknown feature {unknown[0]!r} (known: {', '.join(FEATURES)})")
    return [n for n in needs if not FEATURES[n][1]()]


# ----------------------------------------------------------------------------------------------------------------
# Scales


@dataclass(frozen=True)
class Scale:
    """What one scale runs: overrides of every NER and translation run, the translation config, the directions,
    bootstrap resamples, and what it shrinks from the paper (said in the captions)."""
    name: str
    ner: tuple[str, ...]
    nmt_config: str
    nmt: tuple[str, ...]
    directions: tuple[str, ...]  # translation: "de-en", "en-de"
    n_boot: int
    shrunk: str  # for the captions
    baseline: tuple[str, ...] = ()  # overrides of configs/conll-baseline.toml, the usual single model
    snapshots: tuple[str, ...] = ()  # Table 4's runs (configs/multi30k-snapshots.toml), after `nmt`
    ner_snapshots: tuple[str, ...] = ()  # Table 4's NER runs (configs/conll-snapshots.toml), after `ner`
    gpu: bool = False


# Table 4 at the config's (and the paper's) size: 3 snapshots against 3 seeds, whatever the scale's ensembles
SNAPSHOT_DESIGN = ("ensemble.members=3", "ensemble.subset_sizes=[3]", "distill.teacher_members=3")
# Table 4's NER attempt: 3 snapshots (the paper's 3 cycles) against 3 seeds, no individuals (Table 1 has them)
NER_SNAPSHOT_DESIGN = ("ensemble.members=3", "ensemble.subset_sizes=[3]", "ensemble.individuals=0")
PAPER_NER = ("data.max_train_sentences=0", "data.max_eval_sentences=0", "ensemble.members=9",
             "ensemble.subset_sizes=[3, 6, 9]")  # the full data, nested ensembles 3 ⊂ 6 ⊂ 9
SCALES = {
    "smoke": Scale(
        "smoke",
        ner=("data.max_train_sentences=60", "data.max_eval_sentences=40", "encoder.finetune_layers=1",
             "train.max_epochs=1", "train.batch_size=16", "ensemble.members=3", "ensemble.subset_sizes=[2, 3]",
             "ensemble.individuals=2"),
        nmt_config="multi30k-small.toml",
        nmt=('model.preset="tiny"', "data.max_train_pairs=300", "data.max_eval_pairs=30", "data.vocab_size=300",
             "train.updates_per_round=8", "train.max_rounds=2", "train.warmup_steps=8", "train.lr=5e-3",
             "train.batch_tokens=600", "ensemble.members=2", "ensemble.subset_sizes=[1, 2]",
             "distill.teacher_members=2", "distill.top_k=8", "distill.sweep_top_k=[4, 8]",
             "distill.sweep_epsilon=[0.1]", "decode.beam_size=2", "decode.batch_sentences=16",
             "decode.temperature_positions=200"),
        directions=("de-en",), n_boot=20,
        snapshots=("train.max_rounds=3", "ensemble.subset_sizes=[2]", "train.swa_start=1"),
        # 2 snapshots of one epoch after a warm start of one (the smoke's NER members train one epoch)
        ner_snapshots=("ensemble.members=2", "ensemble.subset_sizes=[2]", "ensemble.individuals=0",
                       "train.max_epochs=3"),
        baseline=("data.max_train_sentences=60", "data.max_eval_sentences=40", "encoder.finetune_layers=1",
                  "train.max_epochs=1", "train.batch_size=16"),
        shrunk="smoke scale: tiny samples of the data, NER models of one epoch, a tiny Transformer of 2 rounds of 8 "
               "updates, German→English only; checks the plumbing, not the method"),
    "cpu": Scale(
        "cpu",
        ner=(*PAPER_NER, "encoder.finetune_layers=3", "train.max_epochs=5", "train.patience=1",
             "ensemble.individuals=3"),
        nmt_config="multi30k-small.toml",
        nmt=("ensemble.members=5", "ensemble.subset_sizes=[3, 5]", "distill.teacher_members=5"),
        snapshots=SNAPSHOT_DESIGN, ner_snapshots=NER_SNAPSHOT_DESIGN,
        directions=("de-en", "en-de"), n_boot=1000,
        shrunk="CPU scale: NER on the full training data with the top 3 encoder layers tuned (English: MiniLM-L6 "
               "of 6 layers; German: multilingual-e5-small of 12), at most 5 epochs, patience 1, 3 individuals "
               "(paper 9); translation: the small Transformer on Multi30k, 3 rounds of 250 updates (Table 4: 6), "
               "ensembles 3 ⊂ 5 (paper 3 ⊂ 5 ⊂ 7), no-averaging runs in the first direction only"),
    "gpu": Scale(
        "gpu",
        ner=(*PAPER_NER, "encoder.finetune_layers=4", "train.max_epochs=20", "train.patience=3",
             "ensemble.individuals=9", 'train.device="cuda"'),
        nmt_config="multi30k-small-gpu.toml",
        nmt=("ensemble.members=7", "ensemble.subset_sizes=[3, 5, 7]", "distill.teacher_members=7",
             'train.device="cuda"'),
        directions=("de-en", "en-de"), n_boot=1000, gpu=True, ner_snapshots=NER_SNAPSHOT_DESIGN,
        # the GPU members' batches and rounds (multi30k-small-gpu.toml), 24 rounds a member or trajectory: a warm
        # start of 12, then 3 cycles of 4 rounds (500 updates; the paper: 2000 of smaller batches)
        snapshots=(*SNAPSHOT_DESIGN, "train.batch_tokens=4096", "train.updates_per_round=125", "train.warmup_steps=400",
                   "train.max_rounds=24", "train.patience=3", "train.swa_start=8", "train.swa_anneal_updates=125",
                   "train.cycle_rounds=4", "decode.batch_sentences=128"),
        baseline=('train.device="cuda"',),
        shrunk="GPU scale: the top 4 encoder layers tuned of MiniLM-L6 (English) and multilingual-e5-small (German) "
               "instead of BERT-base and mBERT, Multi30k instead of WMT16"),
}


# ----------------------------------------------------------------------------------------------------------------
# Runs and steps


@dataclass(frozen=True)
class RunSpec:
    """A run folder OUT/runs/<name>: a config of configs/ with overrides (the scale's come first), and `last`,
    overrides applied after the command's --set (a setting derived from it: twice the usual model's epochs)."""
    name: str
    config: str
    overrides: tuple[str, ...] = ()
    last: tuple[str, ...] = ()

    @property
    def task(self) -> str:
        return "nmt" if self.name.startswith("nmt-") else "ner"


@dataclass(frozen=True)
class Step:
    """One stage of the pipeline on a run: train its models, distil a student of its ensemble of `members`
    (NER: `temperature_scaled`, `recipe`, the run whose training settings and encoder cut the student takes
    instead of the members', `beta`, a weight on KD other than its config's, and `label_smoothing`, the α of its
    NLL term; translation: `top_k`, `epsilon`), evaluate it on `split`, or tag a file with one of
    its systems (`system`: individual-0, ensemble-K, student-K) and score it (`predict`: WNUT-17)."""
    kind: str
    run: RunSpec
    members: int = 0
    temperature_scaled: bool = False
    top_k: int = 0
    epsilon: float = 0.0
    split: str = "test"
    system: str = ""
    recipe: RunSpec | None = None
    beta: float | None = None
    label_smoothing: float | None = None

    @property
    def key(self) -> str:
        if self.kind == "train":
            return f"train {self.run.name}"
        if self.kind == "evaluate":
            return f"evaluate {self.run.name} {self.split}"
        if self.kind == "predict":
            return f"predict {self.run.name} {self.system} {self.split}"
        return f"distill {self.run.name} {self.student}"

    @property
    def student(self) -> str:
        """The student folder a distill step trains (pipeline.distill's naming)."""
        from .distill.memoize import Truncation, store_name, student_name

        truncation = Truncation(self.top_k or None, self.epsilon)
        name = student_name(store_name(self.members, truncation, self.temperature_scaled))
        name = name if self.recipe is None else f"{name}-as-{self.recipe.name.split('-', 2)[-1]}"
        name = name if self.beta is None else f"{name}-beta{self.beta:g}"
        return name if self.label_smoothing is None else f"{name}-ls{self.label_smoothing:g}"


@dataclass(frozen=True)
class Experiment:
    """A table or figure of the paper: the steps that produce its numbers, and the features it needs."""
    name: str
    title: str
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = ()
    notes: str = ""

    @property
    def missing(self) -> list[str]:
        """The features it needs that the code does not have."""
        return missing_features(self.needs)


@dataclass
class Plan:
    """Every experiment of a scale over OUT, with the data root and the command's --set overrides."""
    scale: Scale
    out: Path
    data_root: Path
    overrides: tuple[str, ...] = ()
    experiments: list[Experiment] = field(default_factory=list)
    _configs: dict = field(default_factory=dict, repr=False)

    def run_dir(self, run: RunSpec) -> Path:
        return self.out / RUNS / run.name

    def overrides_of(self, run: RunSpec) -> list[str]:
        """The run's overrides: scale and data first, then its own, then the command's that its config has, then
        those it derives from them (run.last)."""
        cls = TASK_CONFIGS[run.task]
        command = (o for o in self.overrides if _has_setting(cls, o.partition("=")[0].strip()))
        return [*run.overrides, *command, *run.last]

    def config(self, run: RunSpec):
        """The run's resolved, validated config."""
        if run.name not in self._configs:
            self._configs[run.name] = load_config(CONFIGS / run.config, TASK_CONFIGS[run.task], self.overrides_of(run))
        return self._configs[run.name]

    def wnut_file(self) -> Path:
        return self.out / "data" / "wnut17-test-conll.txt"

    def predict_dir(self, step: Step) -> Path:
        return self.out / step.split / f"{step.run.name}-{step.system}"

    def done(self, step: Step) -> bool:
        """Whether the step's outputs exist (and, for an evaluation, are newer than every model it scores)."""
        run_dir = self.run_dir(step.run)
        if step.kind == "train":
            from .ensemble import unfinished_models

            return (run_dir / "config.toml").is_file() and not unfinished_models(self.config(step.run), run_dir)
        if step.kind == "distill":
            return finished(run_dir / "students" / step.student)
        if step.kind == "evaluate":
            results = run_dir / "eval" / step.split / "results.json"
            return results.is_file() and results.stat().st_mtime >= _latest_result(run_dir)
        return (self.predict_dir(step) / "metrics.json").is_file()

    @staticmethod
    def steps(experiments: list[Experiment]) -> list[Step]:
        """The steps of the experiments whose features exist, each once, run by run: training, students,
        evaluations (an evaluation scores every student its run has)."""
        steps = list(dict.fromkeys(s for e in experiments if not e.missing for s in e.steps))
        runs = list(dict.fromkeys(s.run.name for s in steps))
        phase = {"train": 0, "distill": 1, "evaluate": 2, "predict": 3}
        return sorted(steps, key=lambda s: (runs.index(s.run.name), phase[s.kind]))


# settings the plan gives each run to tell it from the others, and what they tell apart
AVERAGING = "runs with and without weight averaging"
RUN_DEFINING = {"model.head": "IID and CRF runs", "ensemble.kind": "Table 4's snapshot and seed runs",
                "train.label_smoothing": "CE and LS runs", "train.average_last": AVERAGING,
                "train.averaging": AVERAGING,
                **{f"data.{split}": "each language's files, from --data" for split in ("train", "dev", "test")},
                **{f"data.{split}_{side}": "each direction's files, from --data" for split in ("train", "dev", "test")
                   for side in ("src", "tgt")}}


def build_plan(scale: str, out, data_root="../shared/data", overrides=()) -> Plan:
    """The plan of `scale` over output folder `out`. Raises UserError for an unknown scale, a --set key that no
    run's config has, or a config the overrides make invalid (naming the key)."""
    if scale not in SCALES:
        raise UserError(f"--scale {scale}: one of {', '.join(SCALES)}")
    for o in overrides:
        key = o.partition("=")[0].strip()
        if not any(_has_setting(cls, key) for cls in TASK_CONFIGS.values()):
            raise UserError(f"--set {o}: no run of the plan has the setting '{key}'")
        if key in RUN_DEFINING:
            raise UserError(f"--set {o}: the plan sets '{key}' per run ({RUN_DEFINING[key]}), so one value for "
                            "every run would leave runs that differ only by name")
    plan = Plan(SCALES[scale], Path(out), Path(os.path.abspath(data_root)), tuple(overrides))
    plan.experiments = experiments(plan)
    return plan


def _ner_data(plan: Plan, language: str) -> tuple[str, ...]:
    folder, train, dev, test = NER_DATA[language]
    root = plan.data_root / folder
    return f'data.train="{root / train}"', f'data.dev="{root / dev}"', f'data.test="{root / test}"'


def _ner_run(plan: Plan, language: str, head: str, suffix: str = "", extra=()) -> RunSpec:
    config = "conll-iid.toml" if language == "en" else "europarl-iid.toml"
    return RunSpec(f"ner-{language}-{head}{suffix}", config,
                   (*plan.scale.ner, *_ner_data(plan, language), f'model.head="{head}"', *extra))


def _nmt_data(plan: Plan, direction: str) -> list[str]:
    folder, stems = MULTI30K
    src, tgt = direction.split("-")
    return [f'data.{split}_{side}="{plan.data_root / folder / f"{stem}.{lang}.gz"}"'
            for split, stem in stems.items() for side, lang in (("src", src), ("tgt", tgt))]


def _snapshot_run(plan: Plan, kind: str) -> RunSpec:
    """Table 4: configs/multi30k-snapshots.toml (CE + SWA) as a snapshot ensemble (SGDR) or, with the same
    budget per member, a seed ensemble, in the first direction."""
    direction = plan.scale.directions[0]
    return RunSpec(f"nmt-{direction}-{kind}", "multi30k-snapshots.toml",
                   (*plan.scale.nmt, *_nmt_data(plan, direction), *plan.scale.snapshots, f'ensemble.kind="{kind}"'))


def _ner_snapshot_run(plan: Plan, kind: str) -> RunSpec:
    """Table 4's NER attempt: configs/conll-snapshots.toml (conll-iid.toml's settings) at the scale's NER settings
    (Table 1's English IID run's) as a snapshot ensemble (SGDR) or, with the same budget per member, a seed
    ensemble."""
    return RunSpec(f"ner-en-iid-{kind}", "conll-snapshots.toml", (*plan.scale.ner, *_ner_data(plan, "en"),
                                                                   'model.head="iid"', *plan.scale.ner_snapshots,
                                                                   f'ensemble.kind="{kind}"'))


def _nmt_run(plan: Plan, direction: str, smoothing: bool, averaging: bool = True) -> RunSpec:
    data = _nmt_data(plan, direction)
    own = [f"train.label_smoothing={0.1 if smoothing else 0.0}"] + ([] if averaging else ["train.average_last=1"])
    name = f"nmt-{direction}-{'ls' if smoothing else 'ce'}" + ("" if averaging else "-noavg")
    return RunSpec(name, plan.scale.nmt_config, (*plan.scale.nmt, *data, *own))


def _ner_steps(plan: Plan, run: RunSpec, splits=("test",), temperature_scaled=False,
               label_smoothing=(None,)) -> tuple[Step, ...]:
    """Train a run, a student of each nested ensemble for each α of `label_smoothing` (None: the student's
    config's, 0) and one of the largest, temperature-scaled, evaluate."""
    sizes = plan.config(run).ensemble.subset_sizes
    students = [Step("distill", run, members=k, label_smoothing=a) for a in label_smoothing for k in sizes]
    if temperature_scaled:
        students.append(Step("distill", run, members=sizes[-1], temperature_scaled=True))
    return (Step("train", run), *students, *(Step("evaluate", run, split=s) for s in splits))


def _nmt_steps(plan: Plan, run: RunSpec, students: bool, sweep: bool = False) -> tuple[Step, ...]:
    """Train a translation run, students of each nested ensemble at V' = distill.top_k (`students`), the
    truncation sweep of the largest (`sweep`: distill.sweep_top_k, and adaptive at each distill.sweep_epsilon
    capped at the largest V'), evaluate on test."""
    cfg = plan.config(run)
    d, sizes = cfg.distill, cfg.ensemble.subset_sizes
    steps = [Step("train", run)]
    if students:
        steps += [Step("distill", run, members=k, top_k=d.top_k) for k in sizes]
    if sweep:
        steps += [Step("distill", run, members=sizes[-1], top_k=v) for v in d.sweep_top_k]
        steps += [Step("distill", run, members=sizes[-1], top_k=max(d.sweep_top_k), epsilon=e)
                  for e in d.sweep_epsilon]
    return (*steps, Step("evaluate", run))


def _usual_recipe(cfg) -> str:
    """The usual single model's recipe as its config `cfg` has it, for the baseline experiment's title."""
    from .encoders import MINILM_NAMES  # imports torch: only when the plan is built

    tuned = cfg.encoder.finetune_layers
    data = f"{cfg.data.max_train_sentences} training sentences" if cfg.data.max_train_sentences else "full data"
    encoder = "MiniLM-L6" if cfg.encoder.name in MINILM_NAMES else Path(cfg.encoder.name).name
    optimizer = {"adamw": "AdamW", "adafactor": "Adafactor"}[cfg.train.optimizer]
    return (f"{encoder}, {tuned} layer{'s' if tuned != 1 else ''} tuned, {optimizer}, {cfg.train.schedule} "
            f"schedule, {data}")


def experiments(plan: Plan) -> list[Experiment]:
    """The paper's experiments (its numbering), and the domain shift of its future work."""
    en_iid, en_crf = _ner_run(plan, "en", "iid"), _ner_run(plan, "en", "crf")
    de_iid, de_crf = _ner_run(plan, "de", "iid"), _ner_run(plan, "de", "crf")
    baseline = RunSpec("ner-en-baseline", "conll-baseline.toml", (*plan.scale.baseline, *_ner_data(plan, "en")))
    de_iid_ls = _ner_run(plan, "de", "iid", "-ls", ("train.label_smoothing=0.1",))
    ner_runs = (en_iid, en_crf, de_iid, de_crf)
    ner = tuple(s for run in ner_runs for s in _ner_steps(plan, run, ("test", "dev")))
    first = plan.scale.directions[0]
    nmt = []
    for direction in plan.scale.directions:
        for smoothing in (False, True):
            nmt += _nmt_steps(plan, _nmt_run(plan, direction, smoothing), students=not smoothing,
                              sweep=direction == first and not smoothing)
    noavg = _nmt_steps(plan, _nmt_run(plan, first, False, False), False)
    de_en_ce, de_en_ls = _nmt_run(plan, first, False), _nmt_run(plan, first, True)
    k = plan.config(en_iid).ensemble.subset_sizes[-1]
    # the usual single model's rows in Table 5 where the code has its config (evaluation scores every system
    # raw and temperature-scaled, so its TS row comes with it)
    usual = () if missing_features(("baseline",)) else (Step("train", baseline), Step("evaluate", baseline))
    # the lever issue 12 names (student budget): a student of the largest ensemble trained as the usual model is
    usual_students = tuple(Step("distill", run, members=k, recipe=baseline) for run in (en_iid, en_crf))
    # and the lever beta: the same student on KD alone (beta = 1; the paper's NER weight is 5/6), chosen on dev
    beta_student = Step("distill", en_iid, members=k, recipe=baseline, beta=1.0)
    # the student budget further: twice the usual model's epochs (patience 2), the student of the stronger CRF
    # teacher and the usual model alike, so that a gain of the student is not the budget's alone
    long = RunSpec("ner-en-baseline-long", baseline.config, baseline.overrides,
                   (f"train.max_epochs={2 * plan.config(baseline).train.max_epochs}", "train.patience=2"))
    long_steps = (Step("distill", en_crf, members=k, recipe=long), Step("train", long), Step("evaluate", long))
    shift = tuple(Step("predict", run, system=system, split="wnut17")
                  for run in (en_iid, en_crf) for system in ("individual-0", f"ensemble-{k}", f"student-{k}"))
    # out of domain too, what a user would pick instead (the usual models) and the students trained as them
    usual_shift = () if missing_features(("baseline",)) else (*usual, *usual_students, *long_steps, *(
        Step("predict", run, system=system, split="wnut17") for run, system in (
            (en_iid, f"student-{k}-as-baseline"), (en_crf, f"student-{k}-as-baseline"),
            (en_crf, f"student-{k}-as-baseline-long"), (baseline, "individual-0"), (long, "individual-0"))))
    return [
        Experiment("table1", "Table 1: NER ensembles and students, test (CoNLL-2003 English, Europarl German; "
                   "IID and CRF)", ner),
        Experiment("table8", "Table 8: the same systems on dev", ner),
        Experiment("table2", "Table 2: translation with weight averaging, CE and LS: individuals, nested ensembles, "
                   "students of the CE ensembles (Multi30k)", tuple(nmt)),
        Experiment("table6", f"Table 6: translation without weight averaging (CE, {first})", noavg),
        Experiment("table3", f"Table 3: truncation V' of the teacher store, students of the largest CE ensemble "
                   f"({first})", _nmt_steps(plan, de_en_ce, students=False, sweep=True)),
        Experiment("table4", f"Table 4: a snapshot ensemble (SGDR) against a seed ensemble of the same size, "
                   f"each member with the trajectory's budget: translation (CE + SWA, {first}) and the NER attempt "
                   "(English, IID)",
                   (*_nmt_steps(plan, _snapshot_run(plan, "snapshots"), False),
                    *_nmt_steps(plan, _snapshot_run(plan, "seeds"), False),
                    *(Step(step, _ner_snapshot_run(plan, kind)) for kind in ("snapshots", "seeds")
                      for step in ("train", "evaluate")))),
        Experiment("table5", "Table 5: temperature scaling (T fitted on dev) of individuals, ensembles, students, "
                   "and a student of the temperature-scaled ensemble, test (IID; CoNLL-2003 English, Europarl German)",
                   (*usual, *_ner_steps(plan, en_iid, temperature_scaled=True), *usual_students[:1],
                    *_ner_steps(plan, de_iid, temperature_scaled=True))),
        # the paper's Table 7: label-smoothed students ("LS Distilled") of the ensembles without and with it,
        # beside Table 1's students of the former
        Experiment("table7", "Table 7: NER members and students trained with label smoothing (α = 0.1), against "
                   "those without (Europarl German, IID)",
                   (*_ner_steps(plan, de_iid, label_smoothing=(None, 0.1)),
                    *_ner_steps(plan, de_iid_ls, label_smoothing=(0.1,))), needs=("ner-label-smoothing",)),
        Experiment("figure1", f"Figure 1: BLEU and ECE-1 against ensemble size ({first}, CE)",
                   _nmt_steps(plan, de_en_ce, students=True)),
        Experiment("figure2", f"Figure 2: reliability of an individual and the ensemble, with and without label "
                   f"smoothing ({first})", (*_nmt_steps(plan, de_en_ce, False), *_nmt_steps(plan, de_en_ls, False))),
        Experiment("figure3", "Figure 3: precision-recall of entity-type confidences (CoNLL-2003 English test)",
                   _ner_steps(plan, en_iid) + _ner_steps(plan, en_crf)),
        Experiment("domain-shift", "Domain shift: English NER systems on WNUT-17 test (types mapped onto "
                   "PER/LOC/ORG/MISC)", _ner_steps(plan, en_iid) + _ner_steps(plan, en_crf) + shift + usual_shift),
        Experiment("baseline", f"The usual single model ({_usual_recipe(plan.config(baseline))}) against the "
                   "English students and ensembles, test",
                   # the IID run first: its student trained as the usual model is the comparison issue 12 asks
                   (*_ner_steps(plan, en_iid), usual_students[0], Step("train", baseline),
                    Step("evaluate", baseline), beta_student, *_ner_steps(plan, en_crf), usual_students[1],
                    *long_steps),
                   needs=("baseline",)),
    ]


# ----------------------------------------------------------------------------------------------------------------
# Doing a step, and knowing it is done


def _latest_result(run_dir: Path) -> float:
    """The newest result.json of the run's models (0 when none): an evaluation older than it is stale."""
    stamps = [p.stat().st_mtime for role in ("members", "individuals", "students")
              for p in (run_dir / role).glob(f"*/{RESULT}")]
    return max(stamps, default=0.0)


def do_step(plan: Plan, step: Step, progress: bool = True) -> None:
    """Run one step through the pipeline's public functions (each resumes what a killed run left)."""
    from . import pipeline

    run_dir, n_boot = plan.run_dir(step.run), plan.scale.n_boot
    if step.kind == "train":
        pipeline.train(plan.config(step.run), run_dir, progress)
    elif step.kind == "distill" and step.run.task == "ner":
        pipeline.distill(run_dir, step.members, temperature_scaled=step.temperature_scaled, n_boot=n_boot,
                         overrides=student_overrides(plan, step), progress=progress, name=step.student)
    elif step.kind == "distill":
        pipeline.distill(run_dir, step.members, top_k=step.top_k, epsilon=step.epsilon, n_boot=n_boot,
                         progress=progress)
    elif step.kind == "evaluate":
        pipeline.evaluate_run(run_dir, step.split, n_boot, progress=progress)
    else:
        _predict(plan, step, progress)


def student_overrides(plan: Plan, step: Step) -> list[str]:
    """The --set overrides of an NER distill step's student: the members' training settings, those a student has
    (configs/distill-conll.toml), or with a recipe that run's settings and encoder cut (the usual single model's:
    all layers, AdamW, linear schedule) and its data (every training sentence, early-stopped on dev); the step's
    beta and label smoothing where it has them."""
    recipe = plan.config(step.run if step.recipe is None else step.recipe)
    train = dataclasses.asdict(trained_like(recipe.train))
    student = [f"train.{key}={json.dumps(value)}" for key, value in train.items() if key != "early_stopping"]
    if step.recipe is not None:
        student += [f"encoder.finetune_layers={recipe.encoder.finetune_layers}", 'train.early_stopping="dev"']
    if step.beta is not None:
        student.append(f"distill.beta={step.beta!r}")
    if step.label_smoothing is not None:
        student.append(f"distill.label_smoothing={step.label_smoothing!r}")
    return student


def check_folders(plan: Plan, steps: list[Step]) -> None:
    """Refuse (UserError, one line naming the folder and the first key that differs: io_utils.require_same_config,
    the check `train` and `distill` make) a run folder of the steps started with another config than the plan
    gives it (another --set or --data), or an NER student folder with other settings than its step would use, so
    that no step counts as done with models trained under another config. Changes no file."""
    from .distill.student import STUDENT_LOCATION
    from .tasks.ner import student_settings

    for run in dict.fromkeys(s.run for s in steps):
        if plan.run_dir(run).is_dir():
            require_same_config(plan.run_dir(run), plan.config(run), dry=True)
    for step in steps:
        folder = plan.run_dir(step.run) / "students" / step.student
        if step.kind == "distill" and step.run.task == "ner" and (folder / "config.toml").is_file():
            settings = student_settings(plan.run_dir(step.run), step.members, None, student_overrides(plan, step))
            require_same_config(folder, settings, dry=True, moves_with=STUDENT_LOCATION)


def check_data(plan: Plan, steps: list[Step]) -> None:
    """Refuse (UserError, one line naming --data and the first missing file) a data file that a step still to do
    reads: each such run's data files (its config's [data] paths) and WNUT-17 test for a prediction on it, before
    anything runs, in --dry-run too (whose estimates count sentences). Changes no file."""
    todo = [s for s in steps if not plan.done(s)]
    configs = [plan.config(run) for run in dict.fromkeys(s.run for s in todo)]
    needed = [Path(getattr(cfg.data, f.name)) for cfg in configs for f in dataclasses.fields(cfg.data)
              if f.metadata.get("path")]
    needed += [plan.data_root / WNUT17_TEST] * any(s.kind == "predict" for s in todo)
    missing = next((path for path in needed if not path.is_file()), None)
    if missing is not None:
        folders = sorted({NER_DATA["en"][0], NER_DATA["de"][0], MULTI30K[0], Path(WNUT17_TEST).parent.name})
        raise UserError(f"--data {plan.data_root}: {missing}: no such file (the data root holds "
                        f"{', '.join(f + '/' for f in folders)} as ../shared/data does)")


def check_devices(plan: Plan, steps: list[Step]) -> None:
    """Refuse (UserError naming the scale and the run) a step still to do whose run computes on a device this
    machine lacks (config.device_problem: the gpu scale's "cuda" without a CUDA GPU), before anything runs, so
    that no run folder is started; not in --dry-run, whose plan a CPU machine may read."""
    todo = dict.fromkeys(s.run for s in steps if not plan.done(s))
    for run in todo:
        if problem := device_problem(plan.config(run).train.device):
            raise UserError(f"--scale {plan.scale.name}: run {run.name}: 'train.device' {problem}: run this scale "
                            "on a machine with one, or --set train.device=cpu")


def _predict(plan: Plan, step: Step, progress: bool) -> None:
    """Tag the mapped WNUT-17 test file with one system of an NER run and score its predictions."""
    from . import pipeline
    from .calibration.report import evaluate
    from .predictions import load_predictions

    run_dir, out = plan.run_dir(step.run), plan.predict_dir(step)
    role, size = step.system.split("-")[:2]  # ensemble-9, individual-0, student-9[-as-baseline...]
    source = ({"run": run_dir, "members": int(size)} if role == "ensemble" else
              {"model": run_dir / ("students" if role == "student" else f"{role}s") / step.system})
    wnut = write_wnut17(plan.data_root / WNUT17_TEST, plan.wnut_file())
    pipeline.predict(wnut, out, fmt="conll", token_col=0, tag_col=1, scheme="iob2", **source)
    evaluate(load_predictions(out / "predictions.npz"), out_dir=out, n_boot=plan.scale.n_boot)


# WNUT-17's six types onto CoNLL-2003's four (documented in the README): people are PER, places LOC, companies
# and groups (bands, teams, organisations) ORG, and creative works and products, which CoNLL tags as MISC, MISC.
WNUT17_TYPES = {"person": "PER", "location": "LOC", "corporation": "ORG", "group": "ORG", "creative-work": "MISC",
                "product": "MISC"}


def write_wnut17(source, target) -> Path:
    """WNUT-17 (token TAB tag, IOB2) with its types mapped by WNUT17_TYPES, as a two-column CoNLL file. Raises
    UserError naming file:line for a type outside the mapping or a line that is not two columns."""
    from .io_utils import atomic_write_text

    source, target = Path(source), Path(target)
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    lines = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            lines.append("")
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise UserError(f"{source}:{number}: expected 'token<TAB>tag', got {line!r}")
        token, tag = parts
        if tag != "O":
            prefix, _, kind = tag.partition("-")
            if kind not in WNUT17_TYPES:
                raise UserError(f"{source}:{number}: type {kind!r} is not one of WNUT-17's "
                                f"({', '.join(WNUT17_TYPES)})")
            tag = f"{prefix}-{WNUT17_TYPES[kind]}"
        lines.append(f"{token}\t{tag}")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target


# ----------------------------------------------------------------------------------------------------------------
# Rough time of a step


# Per-unit costs on the 2-core development machine, one torch thread (README "Benchmarks" and issue 12):
COSTS = {
    # a training sentence through one tuned encoder layer, forward and backward: MiniLM-L6 fine-tuned with all
    # 6 layers takes ~10 min for one CoNLL-2003 epoch of 14,041 sentences
    "ner_sentence_layer": 600 / (14041 * 6),
    # one update of 1,024 tokens: the small Transformer 750 updates in 12-15 min; the tiny one in the tests
    "nmt_update": {"tiny": 0.02, "small": 1.1, "base": 10.0},
    "nmt_beam_sentence": 0.01,  # beam 4, cached, one model (bench_translation: ~160 sentences/s)
    "boot_replicate": 40e-3 / 3453,  # a whole tagging report per test sentence (bench_bootstrap)
    "gpu_speedup": 50,  # H200 against one CPU thread (README: ~160K vs ~1K target tokens/s for translation)
}


def _count_sentences(path, limit: int) -> int:
    """Sentences of a CoNLL file (blank-line separated) or lines of a parallel file, at most `limit` (0: all)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        n = sum(1 for line in f if not line.strip()) if path.suffix != ".gz" else sum(1 for _ in f)
    return min(n, limit) if limit else n


def _trajectories(cfg) -> int:
    """The members' trainings of a run, each of one member's budget: one for a snapshot ensemble."""
    return 1 if cfg.ensemble.kind == "snapshots" else cfg.ensemble.members


def estimate_seconds(plan: Plan, step: Step) -> float:
    """A rough wall time of the step at its config's sizes, from COSTS (the step's own measured time, once done,
    is in OUT/timings.json)."""
    cfg = plan.config(step.run)
    if step.run.task == "ner":
        d, layers, epochs = cfg.data, cfg.encoder.finetune_layers, cfg.train.max_epochs
        n_train = _count_sentences(d.train, d.max_train_sentences)
        n_eval = _count_sentences(d.test if step.split == "test" else d.dev, d.max_eval_sentences)
        per_epoch = n_train * layers * COSTS["ner_sentence_layer"]
        if step.kind == "train":
            seconds = epochs * per_epoch * (0.9 * _trajectories(cfg) + cfg.ensemble.individuals)
        elif step.kind == "distill":
            seconds = epochs * per_epoch * 0.9 + step.members * per_epoch / 3
            if step.recipe is not None:  # the recipe's epochs over its cut
                recipe = plan.config(step.recipe)
                seconds += 0.9 * (recipe.train.max_epochs * recipe.encoder.finetune_layers - epochs * layers) * (
                    n_train * COSTS["ner_sentence_layer"])
        else:
            models = cfg.ensemble.members + cfg.ensemble.individuals + len(cfg.ensemble.subset_sizes)
            systems = models + len(cfg.ensemble.subset_sizes)
            if step.kind == "predict":
                n_eval, models, systems = 1287, 1, 1  # WNUT-17 test
            seconds = (models * n_eval * layers * COSTS["ner_sentence_layer"] / 3
                       + plan.scale.n_boot * systems * n_eval * COSTS["boot_replicate"])
    else:
        t = cfg.train
        update = COSTS["nmt_update"][cfg.model.preset] * t.batch_tokens / 1024
        member = t.max_rounds * t.updates_per_round * update
        if step.kind == "train":
            seconds = _trajectories(cfg) * member
        elif step.kind == "distill":
            seconds = member * (1 + step.members / 4)
        else:
            n_test = _count_sentences(cfg.data.test_src, cfg.data.max_eval_pairs)
            models = cfg.ensemble.members + sum(cfg.ensemble.subset_sizes) + 4
            seconds = models * n_test * COSTS["nmt_beam_sentence"] * (1 + update)
    return seconds / (COSTS["gpu_speedup"] if plan.scale.gpu else 1)


# ----------------------------------------------------------------------------------------------------------------
# The command


def selected(plan: Plan, only=None) -> list[Experiment]:
    """The experiments `only` names (all when None). Raises UserError naming an unknown one."""
    names = [e.name for e in plan.experiments]
    if only is None:
        return plan.experiments
    if not only:
        raise UserError(f"--only: names no experiment (known: {', '.join(names)})")
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UserError(f"--only {unknown[0]}: not an experiment (known: {', '.join(names)})")
    return [e for e in plan.experiments if e.name in only]


def describe(plan: Plan, experiments: list[Experiment], timings: dict) -> str:
    """The dry run's text: each experiment with its status and steps (done, or to do with the estimated time: an
    evaluation that a step before it makes stale is to do, expected_to_run), each run's config, and the total
    time left."""
    steps = plan.steps(experiments)
    todo = {s for s, runs in zip(steps, expected_to_run(plan, steps)) if runs}
    lines = [f"reproduce --scale {plan.scale.name} --out {plan.out} (data {plan.data_root})", ""]
    for e in experiments:
        missing = e.missing
        status = ("needs: " + ", ".join(f"{n} ({FEATURES[n][0]})" for n in missing) if missing else
                  "to do" if todo.intersection(e.steps) else "done")
        lines.append(f"{e.name}: {e.title} [{status}]")
        for s in ([] if missing else list(dict.fromkeys(e.steps))):
            took = f"took {duration(timings[s.key])}" if s.key in timings else ""
            lines.append(f"    {'todo' if s in todo else 'done'}  {s.key}  "
                         f"{'~' + duration(estimate_seconds(plan, s)) if s in todo else took}")
    lines += ["", "runs (config file, then overrides):"]
    for run in dict.fromkeys(s.run for s in steps):
        lines.append(f"  {run.name}: configs/{run.config} " + " ".join(f"--set {o}" for o in plan.overrides_of(run)))
    left = sum(estimate_seconds(plan, s) for s in todo)
    lines.append(f"\nestimated time left: {duration(left)} (rough: COSTS in reproduce.py; one process, one step "
                 "at a time; processes sharing OUT split it)")
    return "\n".join(lines)


@contextmanager
def timed(path: Path, key: str, every: float = 60.0, clock=time.monotonic):
    """Add the wall time (seconds) of the block to `key` in the JSON file `path`: at the end of the block (also by
    an exception) and every `every` seconds while it runs, so a step killed with the machine (SIGKILL, no handler
    runs) keeps all but its last `every` seconds, and a step resumed over several sessions sums them. Each write
    reads the file again under a lock and changes only `key`, so processes timing other steps in the same folder
    (a side job beside reproduce) keep each other's times."""
    start, base = clock(), None
    stop = threading.Event()

    def write() -> None:
        nonlocal base
        with _locked(path):
            times = read_json(path, "delete it (it only records times)") if path.is_file() else {}
            if base is None:
                base = times.get(key, 0.0)
            atomic_write_json(path, times | {key: base + clock() - start})

    def beat() -> None:
        while not stop.wait(every):
            write()

    write()
    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()
        write()


@contextmanager
def _locked(path: Path):
    """An exclusive lock on the folder of `path` itself (flock on a directory's descriptor), so no lock file is
    left beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def read_timings(plan: Plan) -> dict:
    """{step key: seconds} of the steps run so far in OUT (OUT/timings.json)."""
    path = plan.out / TIMINGS
    return read_json(path, "delete it (it only records times)") if path.is_file() else {}


class StepsLeft(Exception):
    """Steps of the selection still not done after `reproduce` took its turn at each (the CLI: exit status 1)."""


def expected_to_run(plan: Plan, steps: list[Step]) -> list[bool]:
    """Which of `steps` (in plan.steps' order) will run: those not done now, and an evaluation of a run whose
    models an earlier step trains or distils (its results.json then becomes older than them, so stale)."""
    expected, changed = [], set()
    for step in steps:
        runs = not plan.done(step) or (step.kind == "evaluate" and step.run in changed)
        if runs and step.kind in ("train", "distill"):
            changed.add(step.run)
        expected.append(runs)
    return expected


def run_steps(plan: Plan, steps: list[Step], progress: bool = True) -> int:
    """Run the steps not done, in order, each holding its run folder (io_utils.run_lock); returns how many ran.

    Several processes may share one OUT (one per core, or per machine on a shared disk): a step whose run folder
    another process holds is put off with the later steps of its run, the steps of other runs go on, and what
    was put off is tried again after each pass, every POLL_SECONDS once nothing else is left. Whether a step
    is done is decided when its turn comes, so the steps another process finished meanwhile are skipped."""
    expected, ran, pending, said = sum(expected_to_run(plan, steps)), 0, list(steps), ""
    while pending:
        put_off, busy = [], {}
        for step in pending:
            if step.run in busy:
                put_off.append(step)
                continue
            try:
                with run_lock(plan.run_dir(step.run)):
                    if plan.done(step):
                        continue
                    ran += 1
                    print(f"[{ran}/{max(expected, ran)}] {step.key}", flush=True)
                    with timed(plan.out / TIMINGS, step.key):
                        do_step(plan, step, progress)
            except FolderInUse as held:
                busy[step.run] = str(held)
                put_off.append(step)
        if len(put_off) == len(pending):  # nothing else to do: wait for the others, saying so once per change
            waiting = f"waiting for run folders another process holds: {'; '.join(busy.values())}"
            if waiting != said:
                print(waiting, flush=True)
                said = waiting
            time.sleep(POLL_SECONDS)
        pending = put_off
    return ran


def reproduce(scale: str, out, only=None, dry_run: bool = False, data_root="../shared/data", overrides=(),
              progress: bool = True, report_only: bool = False) -> str:
    """Run (or resume) every step of the selected experiments (`only`: their names; None: all), recording each
    step's wall time in OUT/timings.json, then write the tables, figures and OUT/index.html of every experiment
    of the plan that is done (paper_report.write_report); `dry_run`: only describe the plan. Whether a step is
    done is decided when its turn comes, so an evaluation made stale by a student trained earlier in the same
    call is redone. `report_only`: run nothing, only write the report of what is done now (while other
    processes go on running the plan). Processes given the same OUT share the work (run_steps: one writer per
    run folder; each skips to the runs nobody holds). Returns the plan's description (dry run) or a summary of
    what was run and written.

    Raises:
        UserError: an unknown scale or experiment, an empty `only`, a bad --set, a run or student folder of the
            plan started with another config (check_folders), missing data (check_data) or, unless `dry_run` or
            `report_only`, a device this machine lacks (check_devices), before anything runs.
        StepsLeft: a selected step still not done at the end (the report is written first).
    """
    plan = build_plan(scale, out, data_root, overrides)
    chosen = selected(plan, only)
    steps = plan.steps(chosen)
    check_folders(plan, steps)
    check_data(plan, steps)
    if dry_run:
        return describe(plan, chosen, read_timings(plan))
    if not report_only:
        check_devices(plan, steps)
    ran = 0 if report_only else run_steps(plan, steps, progress)
    from .paper_report import write_report

    written = write_report(plan, chosen, read_timings(plan))
    summary = f"{ran} of {len(steps)} steps run, the others reused; wrote {written}"
    left = [s.key for s in steps if not plan.done(s)]
    if report_only:
        finished = sum(not e.missing and all(plan.done(s) for s in e.steps) for e in chosen)
        return f"ran nothing (--report-only); {finished} of {len(chosen)} experiments done; wrote {written}"
    if left:
        raise StepsLeft(f"{summary}; still not done: {', '.join(left[:3])}"
                        f"{f' and {len(left) - 3} more' if len(left) > 3 else ''} (rerun reproduce)")
    return summary
