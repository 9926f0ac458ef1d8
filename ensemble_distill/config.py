"""Experiment configs: plain TOML files over dataclasses that hold the defaults.

`load_config(path, TaggingConfig)` reads a file, fills what it leaves out from the defaults, and refuses an
unknown key, a value of the wrong type, or one outside its valid values with one line that names the file and the
key. Each setting declares its valid values beside it (`setting(default, at_least=1)`, `choices=...`); a section's
settings that must fit together are checked by its `check()` method. `validate(config)` applies both to a config
built in code, and the pipelines' entry points call it.
"""

import dataclasses
import math
import os
import re
import tempfile
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .data.text import encoding_problem
from .errors import UserError, counted

N_TENTHS = 10  # NER: member i early-stops on tenth i of the training data (ensemble.py)
MAX_MEMBERS = N_TENTHS - 1  # the last tenth is the student's early-stopping data, no member's
MEMBER_DATA = ("nine_tenths", "eight_tenths")  # ensemble.member_data: what a member trains on (ensemble.py)
PRECISIONS = ("fp32", "bf16")  # train.precision: bf16 autocast of the training forward passes
# ensemble.kind: members that differ by seed, or snapshots of one SGDR trajectory (paper §6.1, Table 4;
# ensemble.warm_start_config, tasks/ner.py and tasks/nmt.py train_snapshots)
ENSEMBLE_KINDS = ("seeds", "snapshots")


@dataclass(frozen=True)
class Range:
    """The valid values of a number: lo <= x (lo < x when lo_open), and x <= hi (x < hi when hi_open) unless hi
    is None. Floats must also be finite."""
    lo: float
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value) -> str | None:
        """Why `value` is outside the range (a phrase: "must be at least 1, got 0"), or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        above_lo = value > self.lo if self.lo_open else value >= self.lo
        below_hi = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return None if above_lo and below_hi else f"must {self}, got {value!r}"

    def __str__(self) -> str:
        if self.hi is None:
            return f"be > {self.lo:g}" if self.lo_open else f"be at least {self.lo:g}"
        return f"lie in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def setting(default, *, at_least=None, above=None, at_most=None, below=None, choices=None, path=False):
    """A config field with its valid values beside it: a range (of each item, for a list) or a tuple of choices.
    at_least/at_most include the bound, above/below exclude it. path=True: a file or folder, which a config file
    gives relative to its own folder (`load_config` makes it absolute)."""
    metadata = {"path": True} if path else {}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if at_least is not None or above is not None:
        metadata["range"] = Range(above if at_least is None else at_least, below if at_most is None else at_most,
                                  lo_open=at_least is None, hi_open=below is not None)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class Invalid(ValueError):
    """Raised by a section's check(): settings that do not fit together; `key` is the setting to change."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"'{key}' {problem}")
        self.key, self.problem = key, problem


def _check_subset_sizes(sizes: list[int], members: int) -> None:
    """Nested ensembles of the first k members: at least one size, increasing, none above `members`."""
    if not sizes:
        raise Invalid("subset_sizes", "must name at least one ensemble size, got []")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise Invalid("subset_sizes", f"must increase (smallest ensemble first), got {sizes}")
    if sizes[-1] > members:
        raise Invalid("subset_sizes", f"holds {sizes[-1]}, more than the {counted(members, 'member')}")


def _check_encoding(encoding: str) -> None:
    if problem := encoding_problem(encoding):
        raise Invalid("encoding", f"{problem}, got {encoding!r}")


@dataclass
class TaggingData:
    train: str = setting("../shared/data/conll2003-en/eng.train", path=True)
    dev: str = setting("../shared/data/conll2003-en/eng.testa", path=True)
    test: str = setting("../shared/data/conll2003-en/eng.testb", path=True)
    token_col: int = 0
    tag_col: int = -1
    scheme: str = setting("iob1", choices=("iob1", "iob2"))  # of the files; everything inside is IOB2
    unknown_tag: str = setting("error", choices=("error", "O"))  # a test tag unseen in training
    max_train_sentences: int = setting(0, at_least=0)  # 0: all; a seeded sample otherwise (CPU-scale runs)
    max_eval_sentences: int = setting(0, at_least=0)
    encoding: str = "utf-8"  # of the CoNLL files, any Python codec name: "latin-1" for many German corpora
    comment_prefix: str = "#"  # lines starting with it before a sentence, if not token lines, are skipped; "": none
    token_prefix: str = ""  # a regex removed from the start of every token: "[a-z]+:" reads WikiANN's `en:John`

    def check(self) -> None:
        _check_encoding(self.encoding)
        try:
            re.compile(self.token_prefix)
        except re.error as err:
            raise Invalid("token_prefix", f"is not a regular expression ({err}), got {self.token_prefix!r}") from None


@dataclass
class Encoder:
    name: str = "minilm"  # a named encoder or a local Hugging Face folder
    # the paper tunes the top 4 of 12 BERT layers; 2 of MiniLM's 6 is the same third
    finetune_layers: int = setting(2, at_least=0)
    # frozen-layer outputs, shared by members and runs; "": io_utils.cache_root() / "frozen"
    cache_dir: str = setting("", path=True)

    def check(self) -> None:
        if self.cache_dir and (problem := folder_problem(self.cache_dir)):  # refused before a run starts
            raise Invalid("cache_dir", f"{problem}, got {self.cache_dir!r}")


@dataclass
class TaggerModel:
    head: str = setting("iid", choices=("iid", "crf"))
    lstm_hidden: int = setting(256, at_least=1)
    dropout: float = setting(0.1, at_least=0, below=1)


@dataclass
class WeightAveraging:
    """Stochastic weight averaging (`averaging = "swa"`, training.StochasticWeightAveraging), either task."""
    swa_start: int = setting(1, at_least=1)  # the first epoch (translation: round) whose weights are averaged
    swa_lr: float = setting(1e-4, above=0)  # the constant rate SWALR anneals to from epoch swa_start on
    swa_anneal_updates: int = setting(0, at_least=0)  # updates over which it cosine-anneals there (0: at once)


@dataclass
class WarmRestarts:
    """A snapshot ensemble's cycles (`ensemble.kind = "snapshots"`, paper §6.1), either task: after a warm start of
    the budget less the cycles (`warm_start_budget`), one cosine cycle with warm restarts per member
    (training.warm_restarts, T_mult = 1), its rate from cycle_lr down towards cycle_min_lr. A cycle's length is in
    the task's unit, a setting of the task's section: NER train.cycle_epochs, translation train.cycle_rounds;
    SNAPSHOT_KEYS names (the budget, the cycle length) of the section."""
    SNAPSHOT_KEYS: ClassVar[tuple[str, str]]
    cycle_lr: float = setting(1e-3, above=0)  # the rate each cycle restarts at
    cycle_min_lr: float = setting(0.0, at_least=0)  # the rate a cycle's cosine falls to (eta_min)

    def check(self) -> None:
        if self.cycle_min_lr >= self.cycle_lr:
            raise Invalid("cycle_min_lr", f"must be below cycle_lr = {self.cycle_lr:g}, got {self.cycle_min_lr:g}")


def warm_start_budget(train: WarmRestarts, members: int) -> int:
    """The warm start's budget of a snapshot ensemble of `members` cycles: the train section's budget (NER
    max_epochs, translation max_rounds) less members x the cycle length, in the same unit, so that the whole
    trajectory has one seed member's budget (paper §6.1: the single models' training "stopping 3 epochs earlier")."""
    budget, cycle = (getattr(train, key) for key in train.SNAPSHOT_KEYS)
    return budget - members * cycle


def _check_snapshot_budget(cfg) -> None:
    """ensemble.kind = "snapshots": a warm start of at least one unit before the cycles, and at least one cycle."""
    t, k = cfg.train, cfg.ensemble.members
    if cfg.ensemble.kind != "snapshots":
        return
    if k < 1:
        raise Invalid("ensemble.members", "must be at least 1 with kind = \"snapshots\" (one cycle a member)")
    budget, cycle = t.SNAPSHOT_KEYS
    if warm_start_budget(t, k) < 1:
        raise Invalid(f"train.{budget}", f"must exceed ensemble.members x train.{cycle} = {k * getattr(t, cycle)} "
                                         f"with ensemble.kind = \"snapshots\" (the budget is a warm start of at "
                                         f"least one {budget.removeprefix('max_')[:-1]}, then {k} cycles), got "
                                         f"{getattr(t, budget)}")


@dataclass
class Training(WeightAveraging):
    optimizer: str = setting("adafactor", choices=("adafactor", "adamw"))  # Adafactor: the paper's
    lr: float = setting(1e-4, above=0)
    weight_decay: float = setting(0.0, at_least=0)
    batch_size: int = setting(32, at_least=1)  # sentences
    max_epochs: int = setting(10, at_least=1)
    patience: int = setting(2, at_least=1)  # epochs without a better held-out score before stopping
    seed: int = setting(0, at_least=0)
    device: str = setting("cpu", choices=("cpu", "cuda"))  # where the tuned layers train and predict
    # the learning rate over the updates (training.make_scheduler): "constant", or "linear": warm-up from 0 over
    # warmup_ratio of all max_epochs' updates, then down to 0 at the last (the usual fine-tuning schedule)
    schedule: str = setting("constant", choices=("constant", "linear"))
    warmup_ratio: float = setting(0.0, at_least=0, below=1)
    # "bf16": the training forward passes under bf16 autocast (weights, optimiser and evaluation stay float32)
    precision: str = setting("fp32", choices=PRECISIONS)
    # each process's share of a batch run as this many pieces one after another: the same update, less memory
    accumulate: int = setting(1, at_least=1)
    # Adafactor's step lr x max(1e-3, RMS(parameter)), the reference's Adafactor (training.make_optimizer)
    scale_parameter: bool = False
    clip_norm: float = setting(0.0, at_least=0)  # > 0: the gradients' total norm clipped to this before each step
    # "swa": the model is the SWA average of its epochs from swa_start on (model.pt), not its best epoch (best.pt)
    averaging: str = setting("none", choices=("none", "swa"))

    def check(self) -> None:
        if self.warmup_ratio and self.schedule != "linear":
            raise Invalid("warmup_ratio", f"needs schedule = \"linear\" (schedule is {self.schedule!r})")
        if self.scale_parameter and self.optimizer != "adafactor":
            raise Invalid("scale_parameter", f"is an Adafactor setting (optimizer is {self.optimizer!r})")


@dataclass
class TaggerTraining(Training, WarmRestarts):
    """An NER member's or individual's training (a student's smoothing is distill.label_smoothing), and a snapshot
    ensemble's cycles (WarmRestarts; tasks/ner.py train_snapshots)."""
    SNAPSHOT_KEYS = ("max_epochs", "cycle_epochs")
    # α of the gold NLL smoothed towards uniform labels (models/tagger.py Tagger.loss); the paper's Table 7: 0.1
    label_smoothing: float = setting(0.0, at_least=0, below=1)
    cycle_epochs: int = setting(1, at_least=1)  # ensemble.kind = "snapshots": a cycle's epochs of member 0's data

    def check(self) -> None:
        Training.check(self)
        WarmRestarts.check(self)


@dataclass
class Ensemble:
    members: int = setting(9, at_least=0, at_most=MAX_MEMBERS)  # 0: individuals only (the usual single model)
    subset_sizes: list[int] = setting([3, 6, 9], at_least=1)  # nested: 3 ⊂ 6 ⊂ 9
    individuals: int = setting(0, at_least=0)  # models trained on all data with different seeds (mean ± s.e.)
    # member i trains on every tenth but its own ("nine_tenths", the paper's reference code), or also leaves out
    # the last tenth, the student's early-stopping data ("eight_tenths": no teacher saw the student's validation)
    member_data: str = setting("nine_tenths", choices=MEMBER_DATA)
    split_seed: int = setting(0, at_least=0)  # fixes the tenths of the data and the nested subsets
    # "seeds": members trained apart on their tenths; "snapshots": the weights at the end of each of the `members`
    # SGDR cycles of one training, member 0's (paper §6.1, Table 4: the NER attempt), trained by one job
    kind: str = setting("seeds", choices=ENSEMBLE_KINDS)

    def check(self) -> None:
        if self.members == 0:  # a run of individuals only, e.g. configs/conll-baseline.toml
            if self.subset_sizes:
                raise Invalid("subset_sizes", f"must be [] when members = 0 (no ensemble), got {self.subset_sizes}")
            if not self.individuals:
                raise Invalid("individuals", "must be at least 1 when members = 0 (the run trains nothing else)")
            return
        _check_subset_sizes(self.subset_sizes, self.members)


@dataclass
class TaggingConfig:
    """An NER run (`task = "ner"`): CoNLL files, a pretrained encoder, tagger heads, an ensemble of taggers."""
    task: str = setting("ner", choices=("ner",))
    data: TaggingData = field(default_factory=TaggingData)
    encoder: Encoder = field(default_factory=Encoder)
    model: TaggerModel = field(default_factory=TaggerModel)
    train: TaggerTraining = field(default_factory=TaggerTraining)
    ensemble: Ensemble = field(default_factory=Ensemble)

    def check(self) -> None:
        _check_snapshot_budget(self)
        if self.ensemble.kind == "snapshots" and self.train.schedule != "constant":
            # a linear schedule is sized by max_epochs, which the warm start cuts short (ensemble.warm_start_config):
            # it would decay to 0 at the warm start's end, not be a member's training stopped before its last epochs
            raise Invalid("train.schedule", f"must be \"constant\" with ensemble.kind = \"snapshots\" (the warm "
                                            f"start is a member's training stopped early), got {self.train.schedule!r}")


@dataclass
class StudentTraining(Training):
    lr: float = setting(5e-5, above=0)  # the paper's distillation rate (members: 1e-4)
    # "tenth": train on the training sentences but the tenth no member early-stopped on, and stop on that tenth
    # (the paper's); "dev": train on every training sentence and stop on dev, as the usual single model does
    early_stopping: str = setting("tenth", choices=("tenth", "dev"))


def trained_like(train: Training) -> StudentTraining:
    """A student's training settings taken from its members' `train`: every field a student has (its own,
    early_stopping, keeps its default). The paper's students train as its single models do; StudentTraining's own
    defaults (the paper's BERT rate, 5e-5) would starve a student of this package's Adafactor members."""
    known = {f.name for f in dataclasses.fields(StudentTraining)}
    return StudentTraining(**{k: v for k, v in dataclasses.asdict(train).items() if k in known})


@dataclass
class Distillation:
    # the teacher's run directory: data and encoder settings come from its config.toml
    ensemble_run: str = setting("", path=True)
    # the teacher: that run's nested ensemble of this many members, which the store must hold; 0: its largest
    # configured ensemble, which is what `memoize` writes without --members
    teacher_members: int = setting(0, at_least=0, at_most=MAX_MEMBERS)
    beta: float = setting(5 / 6, at_least=0, at_most=1)  # loss = (1 - beta) NLL(gold) + beta KD (paper, NER)
    # teacher mass outside the stored entries: "drop" (the paper's), "renormalise", "bucket"
    remainder: str = setting("drop", choices=("drop", "renormalise", "bucket"))
    # tau: KD between student and teacher both softened by tau, scaled by tau^2
    temperature: float = setting(1.0, at_least=1e-2, at_most=1e2)
    label_smoothing: float = setting(0.0, at_least=0, below=1)  # on the NLL term only

    def check(self) -> None:
        if not self.ensemble_run:
            raise Invalid("ensemble_run", "is required (the teacher ensemble's run directory)")


@dataclass
class StudentEncoder:
    # the top encoder layers the student tunes over the frozen rest; 0: as many as the teacher run's members
    # (encoder.finetune_layers of its config). More gives the student the usual single model's budget (all 6 of
    # MiniLM's: configs/conll-baseline.toml) with the ensemble's targets.
    finetune_layers: int = setting(0, at_least=0)


@dataclass
class DistillConfig:
    """A student run: `ensemble-distill distill --config FILE`."""
    distill: Distillation = field(default_factory=Distillation)
    train: StudentTraining = field(default_factory=StudentTraining)
    encoder: StudentEncoder = field(default_factory=StudentEncoder)


@dataclass
class ParallelData:
    """Line-aligned source/target files (plain or .gz) of each split; Multi30k de->en by default."""
    train_src: str = setting("../shared/data/multi30k-de-en/train.de.gz", path=True)
    train_tgt: str = setting("../shared/data/multi30k-de-en/train.en.gz", path=True)
    dev_src: str = setting("../shared/data/multi30k-de-en/val.de.gz", path=True)
    dev_tgt: str = setting("../shared/data/multi30k-de-en/val.en.gz", path=True)
    test_src: str = setting("../shared/data/multi30k-de-en/test_2016_flickr.de.gz", path=True)
    test_tgt: str = setting("../shared/data/multi30k-de-en/test_2016_flickr.en.gz", path=True)
    vocab_size: int = setting(8000, at_least=5)  # joint sentencepiece BPE (4 special pieces and at least one)
    min_len: int = setting(1, at_least=1)  # training pairs: subwords per side
    max_len: int = setting(100, at_least=1)
    max_ratio: float = setting(9.0, at_least=1)  # longer side / shorter side
    max_train_pairs: int = setting(0, at_least=0)  # 0: all; a seeded sample otherwise (smoke runs)
    max_eval_pairs: int = setting(0, at_least=0)
    sample_seed: int = setting(0, at_least=0)
    encoding: str = "utf-8"  # of every split's files (and evaluate's --src/--ref), any Python codec name

    def check(self) -> None:
        if self.max_len < self.min_len:
            raise Invalid("max_len", f"must be at least min_len = {self.min_len}, got {self.max_len}")
        _check_encoding(self.encoding)


@dataclass
class TranslationModelConfig:
    preset: str = setting("small", choices=("base", "small", "tiny"))  # models/translation.py: GPU, CPU, tests
    dropout: float = setting(0.1, at_least=0, below=1)


@dataclass
class TranslationTraining(WeightAveraging, WarmRestarts):
    lr: float = setting(1e-3, above=0)  # peak rate, reached after the warm-up
    warmup_steps: int = setting(400, at_least=1)  # inverse-square-root schedule
    batch_tokens: int = setting(1024, at_least=1)  # padded tokens per batch (sentences x longest side, EOS included)
    label_smoothing: float = setting(0.1, at_least=0, below=1)  # 0.1: LS runs, 0: CE runs
    updates_per_round: int = setting(200, at_least=1)  # validation (and a snapshot for averaging) every this many
    max_rounds: int = setting(6, at_least=1)
    patience: int = setting(2, at_least=1)  # rounds without a lower validation NLL before stopping
    average_last: int = setting(3, at_least=1)  # the model is the mean of the weights of this many rounds to the best
    # "checkpoints": that mean (average_last); "swa": the SWA average of the rounds from swa_start on
    averaging: str = setting("checkpoints", choices=("checkpoints", "swa"))
    seed: int = setting(1, at_least=0)  # member i uses seed + i
    device: str = setting("cpu", choices=("cpu", "cuda"))
    precision: str = setting("fp32", choices=PRECISIONS)  # as Training's
    accumulate: int = setting(1, at_least=1)  # as Training's: batch_tokens is the update's batch whatever this is
    SNAPSHOT_KEYS = ("max_rounds", "cycle_rounds")
    cycle_rounds: int = setting(1, at_least=1)  # ensemble.kind = "snapshots": a cycle's rounds (tasks/nmt.py)


@dataclass
class TranslationEnsemble:
    members: int = setting(3, at_least=1)  # "snapshots": the number of cycles, one snapshot each
    subset_sizes: list[int] = setting([3], at_least=1)  # ensembles of the first k members
    # "seeds": members trained apart from different seeds; "snapshots": the weights at the end of each of the
    # `members` SGDR cycles of one training (paper §6.1, Table 4), trained by one job
    kind: str = setting("seeds", choices=ENSEMBLE_KINDS)

    def check(self) -> None:
        _check_subset_sizes(self.subset_sizes, self.members)


@dataclass
class Decoding:
    beam_size: int = setting(4, at_least=1)
    alpha: float = setting(0.6, at_least=0)  # GNMT length penalty
    batch_sentences: int = setting(64, at_least=1)  # beam search and teacher-forced passes
    temperature_positions: int = setting(2000, at_least=1)  # dev positions sampled for fitting the temperature


@dataclass
class TranslationDistillation:
    teacher_members: int = setting(3, at_least=1)  # the teacher is the ensemble of the first k members
    top_k: int = setting(64, at_least=1)  # V'
    # > 0: adaptive truncation, the fewest entries with mass >= 1 - epsilon (at most top_k)
    epsilon: float = setting(0.0, at_least=0, below=1)
    beta: float = setting(0.5, at_least=0, at_most=1)  # loss = (1 - beta) NLL + beta KD (paper, NMT), KD at T = 1
    label_smoothing: float = setting(0.1, at_least=0, below=1)  # on the NLL term
    remainder: str = setting("drop", choices=("drop", "renormalise", "bucket"))
    # how the store keeps probabilities (teacher_store.PROBS_DTYPES); log_uint8 also bit-packs the ids
    probs_dtype: str = setting("float16", choices=("float16", "uint8", "log_uint8"))
    # > 0: a sampled store instead of top-V' (teacher_store module docstring): this many draws from the teacher a
    # position, kept as distinct ids with counts, an unbiased estimate of full KD; top_k, epsilon, probs_dtype unused
    samples: int = setting(0, at_least=0)
    sweep_top_k: list[int] = setting([32, 64, 128, 256], at_least=1)
    sweep_epsilon: list[float] = setting([0.01], above=0, below=1)  # adaptive, capped at max(sweep_top_k)

    def check(self) -> None:
        if not self.sweep_top_k:
            raise Invalid("sweep_top_k", "must name at least one V', got []")


@dataclass
class TranslationConfig:
    """A translation run (`task = "nmt"`): parallel text, a Transformer, an ensemble, decoding, distillation."""
    task: str = setting("nmt", choices=("nmt",))
    data: ParallelData = field(default_factory=ParallelData)
    model: TranslationModelConfig = field(default_factory=TranslationModelConfig)
    train: TranslationTraining = field(default_factory=TranslationTraining)
    ensemble: TranslationEnsemble = field(default_factory=TranslationEnsemble)
    decode: Decoding = field(default_factory=Decoding)
    distill: TranslationDistillation = field(default_factory=TranslationDistillation)

    def check(self) -> None:
        if self.distill.teacher_members > self.ensemble.members:
            raise Invalid("distill.teacher_members", f"is {self.distill.teacher_members}, more than the "
                                                     f"{counted(self.ensemble.members, 'member')} (ensemble.members)")
        _check_snapshot_budget(self)


def load_config(path, cls=None, overrides: list[str] = (), resolve_paths: bool = True, fixed: dict | None = None):
    """Read a TOML file into `cls` (None: the class its `task` key names, TASK_CONFIGS), with defaults for what
    the file leaves out, then `overrides` ("section.key=value", a TOML literal or else a bare string) on top;
    validated (see `validate`). Paths the file gives (settings declared with path=True) are relative to the
    file's folder, paths in overrides to the current folder; both come back absolute (resolve_paths=False: as
    written, for `make demo`, whose data paths are under a data root). `fixed`: {section: {key: value}} the
    caller sets whatever the file says (a student's teacher run, named by its command line). Raises UserError
    naming the file or the override and the key."""
    path = Path(path)
    raw = read_toml(path)
    for section, values in (fixed or {}).items():
        raw = {**raw, section: {**raw.get(section, {}), **values}}
    if cls is None:
        task = raw.get("task")
        if task not in TASK_CONFIGS:
            raise UserError(f"{path}: 'task' must be one of {', '.join(TASK_CONFIGS)} (a line task = \"ner\" at the "
                            f"top of the file), got {task!r}")
        cls = TASK_CONFIGS[task]
    elif cls in TASK_CONFIGS.values() and raw.get("task") in TASK_CONFIGS and TASK_CONFIGS[raw["task"]] is not cls:
        # a config of the other task: say so, rather than "unknown key" of its first section
        wanted = next(name for name, c in TASK_CONFIGS.items() if c is cls)
        raise UserError(f"{path}: task = {raw['task']!r}: this command reads a {wanted!r} config")
    if resolve_paths:
        raw = _absolute_paths(cls, raw, path.parent)
    source = str(path)
    if overrides:
        raw = apply_overrides(cls, raw, overrides)
        source += " with --set " + " ".join(overrides)
    config = from_dict(cls, raw, source=source)
    if resolve_paths:
        _absolute_defaults(config)
    return config


def _absolute_defaults(section) -> None:
    """Path settings still relative (defaults the file left alone) made absolute against the current folder, so
    that a run's recorded config.toml names the same files from anywhere."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _absolute_defaults(value)
        elif f.metadata.get("path") and isinstance(value, str) and value and not os.path.isabs(value):
            setattr(section, f.name, os.path.abspath(Path(value).expanduser()))


def same_files(config):
    """A copy of `config` whose path settings (path=True) name their files canonically (os.path.realpath: `..`
    and symbolic links resolved, "" kept): two configs naming the same files, however written, compare equal.
    For comparing a recorded config with a new one (io_utils.require_same_config); a run records paths as they
    were given, e.g. "/x/clone/../data/eng.train"."""
    changes = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = same_files(value)
        elif f.metadata.get("path") and isinstance(value, str) and value:
            changes[f.name] = os.path.realpath(Path(value).expanduser())
    return dataclasses.replace(config, **changes)


def read_toml(path: Path) -> dict:
    """A TOML file as a dict; UserError naming the file when it cannot be read or parsed."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # TOML is UTF-8; editors may add a byte-order mark
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (TOML files are UTF-8): byte {err.object[err.start]:#04x} "
                        f"at offset {err.start}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    return raw


def _absolute_paths(cls, raw: dict, base: Path) -> dict:
    """`raw` with each relative path setting (path=True) joined to `base`, made absolute."""
    out = dict(raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        f = fields.get(name)
        if f is None:
            continue  # refused by from_dict, naming the key
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            out[name] = _absolute_paths(hints[name], value, base)
        elif f.metadata.get("path") and isinstance(value, str) and value:
            out[name] = os.path.normpath(Path(base).absolute() / Path(value).expanduser())
    return out


def apply_overrides(cls, raw: dict, overrides: list[str]) -> dict:
    """`raw` with "section.key=value" settings on top (the command line's --set). The value is read as a TOML
    literal (5, 0.1, "iob2", [3, 6]), or else taken as a bare string (--set train.device=cuda); a path is taken
    relative to the current folder. Raises UserError naming the override for a malformed one or an unknown key."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise UserError(f"--set {item}: expected section.key=value, e.g. --set train.batch_size=16")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        section, target = cls, out
        for depth, name in enumerate(parts):
            known = {f.name: f for f in dataclasses.fields(section)}
            if name not in known:
                where = ".".join(parts[:depth + 1])
                raise UserError(f"--set {item}: unknown key '{where}' (known: {', '.join(sorted(known))})")
            kind = typing.get_type_hints(section)[name]
            if depth == len(parts) - 1:
                if dataclasses.is_dataclass(kind):
                    raise UserError(f"--set {item}: '{key}' is a section; set one of its keys")
                if known[name].metadata.get("path") and isinstance(value, str) and value:
                    value = os.path.abspath(Path(value).expanduser())
                target[name] = value
            elif not dataclasses.is_dataclass(kind):
                raise UserError(f"--set {item}: '{'.'.join(parts[:depth + 1])}' is a setting, not a section")
            else:
                target = target.setdefault(name, {})
                section = kind
    return out


def from_dict(cls, raw: dict, source: str = "config", prefix: str = ""):
    """`cls` from a dict of TOML values; the whole config is validated at the top level (prefix "")."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in raw.items():
        key, kind = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{key}' must be a table [{key}]")
            values[name] = from_dict(kind, value, source, prefix=f"{key}.")
        else:
            values[name] = _checked_value(source, key, kind, value)
    config = cls(**values)
    return validate(config, source) if not prefix else config


def validate(config, source: str = "config"):
    """Check every setting of `config` (read from a file or built in code) against its type and the range or
    choices declared beside it, then each section's check(), innermost first. Returns `config`; raises UserError
    "SOURCE: 'section.key' must ..., got VALUE" for the first setting that is wrong."""
    _validate(config, source, "")
    return config


def _validate(section, source: str, prefix: str) -> None:
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key, kind, value = f"{prefix}{f.name}", hints[f.name], getattr(section, f.name)
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, kind):
                raise UserError(f"{source}: '{key}' must be a {kind.__name__} section, got {value!r}")
            _validate(value, source, f"{key}.")
            continue
        _checked_value(source, key, kind, value)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            problem = _problem(f, item)
            if problem:
                raise UserError(f"{source}: '{key}{'' if i is None else f'[{i}]'}' {problem}")
    if hasattr(section, "check"):
        try:
            section.check()
        except Invalid as err:
            raise UserError(f"{source}: '{prefix}{err.key}' {err.problem}") from None


def _problem(f: dataclasses.Field, value) -> str | None:
    """Why `value` is not a valid value (or list item) of field `f`, or None."""
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}, got {value!r}"
    value_range = f.metadata.get("range")
    return value_range.problem(value) if value_range is not None else None


def setting_problem(cls, name: str, value) -> str | None:
    """Why `value` is not a valid value of setting `name` of section `cls` (for a list setting: of one item), or
    None: for command arguments and function arguments that override a config setting."""
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return _problem(f, value)


def folder_problem(path) -> str | None:
    """Why this process cannot write files in folder `path` (an existing folder, or one to create), as a phrase
    ("exists and is not a folder"), or None when it can: the valid values of a folder setting (encoder.cache_dir)
    and of a command's output folder (cli.writable_folder).

    Tried, not guessed from permission bits: root passes every os.access check, yet nothing can be created under
    /proc or /sys, nor on a read-only mount. A probe of a unique name (tempfile) is created in the folder or, when
    it is missing, in its nearest existing ancestor (a folder there, then a file in that), and removed again, so
    the file system is left as it was. Nothing of the path itself is created: jobs started together
    (train --member I) probe the same new run folder at once, and a probe that created and removed the missing
    folders would pull them from under another's. Under torchrun only rank 0 tries (distributed.py: the other
    ranks write nothing); the others take any folder."""
    if not os.fspath(path):
        return "the path is empty"
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 probes; the others write nothing (io_utils)
        return None
    existing, missing = Path(path).absolute(), False
    while not os.path.lexists(existing):
        existing, missing = existing.parent, True
    if not os.path.isdir(existing):
        return "exists and is not a folder" if not missing else f"cannot be created, {existing} is a file"
    # named like io_utils.atomic_path's temporary files, which a killed process's successor cleans up
    folder = None
    try:
        folder = tempfile.mkdtemp(prefix=".probe.", suffix=".tmp", dir=existing) if missing else existing
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror})"
    finally:
        if missing and folder is not None:
            os.rmdir(folder)
    return None


def require_data_files(data, keys) -> None:
    """Refuse a data file the config names under `keys` (of its [data] section) that is not a file, naming the key
    (a reader would name the path alone, and the user may not know which setting gave it). Raises UserError."""
    for key in keys:
        path = Path(getattr(data, key))
        if not path.is_file():
            problem = "is a folder, not a file" if path.is_dir() else "no such file"
            raise UserError(f"data.{key}: {path}: {problem} (set data.{key} in the config, or --set data.{key}=PATH)")


def device_problem(device: str) -> str | None:
    """Why this machine cannot compute on `device`, as a phrase ("is 'cuda' but torch sees no CUDA GPU here"), or
    None: the valid values of train.device and of the commands' --device on this machine, tried when a command
    starts, before it reads or writes anything (Task.check_runnable; torch is imported only for "cuda")."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return None if torch.cuda.is_available() else f"is {device!r} but torch sees no CUDA GPU here"


def require_device(device: str, source: str | None = None) -> str:
    """`device` (train.device), once this machine has it (device_problem). Raises UserError "SOURCE: 'train.device'
    is 'cuda' but torch sees no CUDA GPU here: ..." naming the remedy."""
    if problem := device_problem(device):
        where = f"{source}: " if source else ""
        raise UserError(f"{where}'train.device' {problem}: set train.device = \"cpu\" (--set train.device=cpu, or "
                        "--device cpu where the command has it)")
    return device


def _checked_value(source, key, kind, value):
    """`value` as type `kind` (an int is taken for a float), or UserError."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise UserError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_checked_value(source, f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{source}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_toml(config) -> str:
    """The resolved config as TOML, recorded beside a run's outputs: top-level settings (`task`), then sections."""
    tree = to_dict(config)
    lines = [f"{key} = {_toml_value(value)}" for key, value in tree.items() if not isinstance(value, dict)]
    lines += [""] if lines else []
    for section, values in ((k, v) for k, v in tree.items() if isinstance(v, dict)):
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


TASK_CONFIGS = {"ner": TaggingConfig, "nmt": TranslationConfig}  # `task = ...` in a config file picks its class
