"""Experiment configs: plain TOML files over dataclasses that hold the defaults.

`load_config(path, TaggingConfig)` reads a file, fills what it leaves out from the defaults, and refuses an
unknown key or a value of the wrong type with one line that names the file and the key.
"""

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


@dataclass
class TaggingData:
    train: str = "../shared/data/conll2003-en/eng.train"
    dev: str = "../shared/data/conll2003-en/eng.testa"
    test: str = "../shared/data/conll2003-en/eng.testb"
    token_col: int = 0
    tag_col: int = -1
    scheme: str = "iob1"  # of the files; everything inside is IOB2
    unknown_tag: str = "error"  # a test tag unseen in training: "error" or "O"
    max_train_sentences: int = 0  # 0: all; a seeded sample otherwise (CPU-scale runs)
    max_eval_sentences: int = 0
    encoding: str = "utf-8"  # of the CoNLL files, any Python codec name: "latin-1" for many German corpora
    comment_prefix: str = "#"  # lines starting with it before a sentence, if not token lines, are skipped; "": none
    token_prefix: str = ""  # a regex removed from the start of every token: "[a-z]+:" reads WikiANN's `en:John`


@dataclass
class Encoder:
    name: str = "minilm"  # a named encoder or a local Hugging Face folder
    finetune_layers: int = 2  # the paper tunes the top 4 of 12 BERT layers; 2 of MiniLM's 6 is the same third
    cache_dir: str = "runs/cache"  # frozen-layer outputs, shared by members and runs


@dataclass
class TaggerModel:
    head: str = "iid"  # "iid" or "crf"
    lstm_hidden: int = 256
    dropout: float = 0.1


@dataclass
class Training:
    optimizer: str = "adafactor"  # "adafactor" (the paper's) or "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 32  # sentences
    max_epochs: int = 10
    patience: int = 2  # epochs without a better held-out score before stopping
    seed: int = 0


@dataclass
class Ensemble:
    members: int = 9
    subset_sizes: list[int] = field(default_factory=lambda: [3, 6, 9])  # nested: 3 ⊂ 6 ⊂ 9
    individuals: int = 0  # models trained on all data with different seeds (reported as mean ± s.e.)
    split_seed: int = 0  # fixes the tenths of the data and the nested subsets


@dataclass
class TaggingConfig:
    data: TaggingData = field(default_factory=TaggingData)
    encoder: Encoder = field(default_factory=Encoder)
    model: TaggerModel = field(default_factory=TaggerModel)
    train: Training = field(default_factory=Training)
    ensemble: Ensemble = field(default_factory=Ensemble)


@dataclass
class StudentTraining(Training):
    lr: float = 5e-5  # the paper's distillation rate (members: 1e-4)


@dataclass
class Distillation:
    ensemble_run: str = ""  # the teacher's run directory: data and encoder settings come from its config.toml
    beta: float = 5 / 6  # loss = (1 - beta) NLL(gold) + beta KD (paper, NER)
    remainder: str = "drop"  # teacher mass outside the stored entries: "drop" (paper), "renormalise", "bucket"
    temperature: float = 1.0  # tau: KD between student and teacher both softened by tau, scaled by tau^2
    label_smoothing: float = 0.0  # on the NLL term only


@dataclass
class DistillConfig:
    """A student run: `ensemble-distill distill --config FILE`."""
    distill: Distillation = field(default_factory=Distillation)
    train: StudentTraining = field(default_factory=StudentTraining)


@dataclass
class ParallelData:
    """Line-aligned source/target files (plain or .gz) of each split; Multi30k de->en by default."""
    train_src: str = "../shared/data/multi30k-de-en/train.de.gz"
    train_tgt: str = "../shared/data/multi30k-de-en/train.en.gz"
    dev_src: str = "../shared/data/multi30k-de-en/val.de.gz"
    dev_tgt: str = "../shared/data/multi30k-de-en/val.en.gz"
    test_src: str = "../shared/data/multi30k-de-en/test_2016_flickr.de.gz"
    test_tgt: str = "../shared/data/multi30k-de-en/test_2016_flickr.en.gz"
    vocab_size: int = 8000  # joint sentencepiece BPE
    min_len: int = 1  # training pairs: subwords per side
    max_len: int = 100
    max_ratio: float = 9.0
    max_train_pairs: int = 0  # 0: all; a seeded sample otherwise (smoke runs)
    max_eval_pairs: int = 0
    sample_seed: int = 0


@dataclass
class TranslationModelConfig:
    preset: str = "small"  # models/translation.py: base (GPU), small (CPU), tiny (tests)
    dropout: float = 0.1


@dataclass
class TranslationTraining:
    lr: float = 1e-3  # peak rate, reached after the warm-up
    warmup_steps: int = 400  # inverse-square-root schedule
    batch_tokens: int = 1024  # padded tokens per batch (sentences x longest side, EOS included)
    label_smoothing: float = 0.1  # 0.1: LS runs, 0: CE runs
    updates_per_round: int = 200  # validation (and a snapshot for averaging) every this many updates
    max_rounds: int = 6
    patience: int = 2  # rounds without a lower validation NLL before stopping
    average_last: int = 3  # the model is the mean of the weights after this many rounds, ending at the best
    seed: int = 1  # member i uses seed + i
    device: str = "cpu"


@dataclass
class TranslationEnsemble:
    members: int = 3
    subset_sizes: list[int] = field(default_factory=lambda: [3])  # ensembles of the first k members


@dataclass
class Decoding:
    beam_size: int = 4
    alpha: float = 0.6  # GNMT length penalty
    batch_sentences: int = 64  # beam search and teacher-forced passes
    temperature_positions: int = 2000  # dev positions sampled for fitting the temperature


@dataclass
class TranslationDistillation:
    teacher_members: int = 3  # the teacher is the ensemble of the first k members
    top_k: int = 64  # V'
    epsilon: float = 0.0  # > 0: adaptive truncation, the fewest entries with mass >= 1 - epsilon (at most top_k)
    beta: float = 0.5  # loss = (1 - beta) NLL + beta KD (paper, NMT), KD at temperature 1
    label_smoothing: float = 0.1  # on the NLL term
    remainder: str = "drop"
    probs_dtype: str = "float16"
    sweep_top_k: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    sweep_epsilon: list[float] = field(default_factory=lambda: [0.01])  # adaptive, capped at max(sweep_top_k)


@dataclass
class TranslationConfig:
    data: ParallelData = field(default_factory=ParallelData)
    model: TranslationModelConfig = field(default_factory=TranslationModelConfig)
    train: TranslationTraining = field(default_factory=TranslationTraining)
    ensemble: TranslationEnsemble = field(default_factory=TranslationEnsemble)
    decode: Decoding = field(default_factory=Decoding)
    distill: TranslationDistillation = field(default_factory=TranslationDistillation)


CHOICES = {
    "data.scheme": ("iob1", "iob2"),
    "data.unknown_tag": ("error", "O"),
    "model.head": ("iid", "crf"),
    "train.optimizer": ("adafactor", "adamw"),
    "distill.remainder": ("drop", "renormalise", "bucket"),
    "model.preset": ("base", "small", "tiny"),
    "train.device": ("cpu", "cuda"),
    "distill.probs_dtype": ("float16", "uint8"),
}
BOUNDS = {  # inclusive
    "distill.beta": (0.0, 1.0),
    "distill.temperature": (1e-2, 1e2),
    "distill.label_smoothing": (0.0, 1.0),
}


def load_config(path, cls):
    """Read a TOML file into `cls`, with defaults for what the file leaves out."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # TOML is UTF-8; editors may add a byte-order mark
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (TOML files are UTF-8): byte {err.object[err.start]:#04x} "
                        f"at offset {err.start}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    return from_dict(cls, raw, source=str(path))


def from_dict(cls, raw: dict, source: str = "config", prefix: str = ""):
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
    return cls(**values)


def _checked_value(source, key, kind, value):
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
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"{source}: '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in BOUNDS and not BOUNDS[key][0] <= value <= BOUNDS[key][1]:
        raise UserError(f"{source}: '{key}' must lie in [{BOUNDS[key][0]}, {BOUNDS[key][1]}], got {value!r}")
    return value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_toml(config) -> str:
    """The resolved config as TOML, recorded beside a run's outputs."""
    lines = []
    for section, values in to_dict(config).items():
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
