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


CHOICES = {
    "data.scheme": ("iob1", "iob2"),
    "data.unknown_tag": ("error", "O"),
    "model.head": ("iid", "crf"),
    "train.optimizer": ("adafactor", "adamw"),
}


def load_config(path, cls):
    """Read a TOML file into `cls`, with defaults for what the file leaves out."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
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
