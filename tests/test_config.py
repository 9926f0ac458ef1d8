"""TOML configs: defaults fill gaps; unknown keys, wrong types, bad choices and values outside their range name the
file and the key, in files and in configs built in code."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from ensemble_distill.config import (
    Distillation,
    DistillConfig,
    Ensemble,
    TaggingConfig,
    Training,
    TranslationConfig,
    TranslationDistillation,
    folder_problem,
    load_config,
    setting_problem,
    to_toml,
    validate,
)
from ensemble_distill.data.text import read_text_lines
from ensemble_distill.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_fill_what_the_file_leaves_out(tmp_path):
    cfg = load_config(write(tmp_path, "[train]\nlr = 5e-5\n[ensemble]\nsubset_sizes = [3]\n"), TaggingConfig)
    assert cfg.train.lr == 5e-5 and cfg.train.optimizer == "adafactor"
    assert cfg.ensemble.subset_sizes == [3] and cfg.ensemble.members == 9
    assert cfg.encoder.finetune_layers == 2


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, '[model]\nhead = "crf"\n[train]\nlr = 1\n'), TaggingConfig)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    again = load_config(write(tmp_path, to_toml(cfg)), TaggingConfig)
    assert again == cfg


@pytest.mark.parametrize("text, message", [
    ("[train]\nlrr = 1e-4\n", "unknown key 'train.lrr'"),
    ("[trian]\nlr = 1e-4\n", "unknown key 'trian'"),
    ('[train]\nlr = "fast"\n', "'train.lr' must be float"),
    ("[train]\nbatch_size = 3.5\n", "'train.batch_size' must be int"),
    ("[train]\nbatch_size = true\n", "'train.batch_size' must be int"),
    ('[model]\nhead = "hmm"\n', "'model.head' must be one of iid, crf"),
    ('[ensemble]\nsubset_sizes = [3, "six"]\n', "'ensemble.subset_sizes[1]' must be int"),
    ("train = 3\n", "'train' must be a table"),
    ("[train\n", "not valid TOML"),
])
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_config(path, TaggingConfig)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="no such config file"):
        load_config(tmp_path / "nope.toml", TaggingConfig)


# ----------------------------------------------------------------------------------------------------------------
# Valid values: every numeric setting has a range, declared beside it and checked on load and in code


CONFIG_CLASSES = (TaggingConfig, DistillConfig, TranslationConfig)
FREE_INTS = {("TaggingData", "token_col"), ("TaggingData", "tag_col")}  # column indices: negative counts from the end


def sections(cls):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type):
            yield f.type


@pytest.mark.parametrize("cls", CONFIG_CLASSES)
def test_every_numeric_setting_declares_its_range(cls):
    for section in sections(cls):
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            kind = hints[f.name]
            kind = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
            if kind in (int, float) and (section.__name__, f.name) not in FREE_INTS:
                assert "range" in f.metadata, f"{section.__name__}.{f.name} has no declared range"


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cls = TranslationConfig if "multi30k" in path.name else DistillConfig if "distill" in path.name else TaggingConfig
    load_config(path, cls)


def test_defaults_are_valid():
    validate(TaggingConfig())
    validate(TranslationConfig())


TAGGING_BAD = [  # (TOML, the key, the expected message), each message worked out by hand from the range
    ("[train]\nlr = -1e-3\n", "train.lr", "must be > 0, got -0.001"),
    ("[train]\nlr = 0\n", "train.lr", "must be > 0, got 0.0"),
    ("[train]\nlr = nan\n", "train.lr", "must be a finite number, got nan"),
    ("[train]\nlr = inf\n", "train.lr", "must be a finite number, got inf"),
    ("[train]\nbatch_size = 0\n", "train.batch_size", "must be at least 1, got 0"),
    ("[train]\nmax_epochs = 0\n", "train.max_epochs", "must be at least 1, got 0"),
    ("[train]\npatience = 0\n", "train.patience", "must be at least 1, got 0"),
    ("[train]\nweight_decay = -0.1\n", "train.weight_decay", "must be at least 0, got -0.1"),
    ("[train]\nseed = -1\n", "train.seed", "must be at least 0, got -1"),
    ("[train]\nlabel_smoothing = 1\n", "train.label_smoothing", "must lie in [0, 1), got 1.0"),
    ("[train]\nwarmup_ratio = 0.1\n", "train.warmup_ratio", 'needs schedule = "linear" (schedule is \'constant\')'),
    ('[train]\noptimizer = "adamw"\nscale_parameter = true\n', "train.scale_parameter",
     "is an Adafactor setting (optimizer is 'adamw')"),
    ("[train]\nclip_norm = -1\n", "train.clip_norm", "must be at least 0, got -1.0"),
    ('[train]\nschedule = "cosine"\n', "train.schedule", "must be one of constant, linear, got 'cosine'"),
    ("[ensemble]\nmembers = 0\n", "ensemble.subset_sizes", "must be [] when members = 0 (no ensemble), got [3, 6, 9]"),
    ("[ensemble]\nmembers = 0\nsubset_sizes = []\n", "ensemble.individuals", "must be at least 1 when members = 0"),
    ("[train]\nlabel_smoothing = -0.1\n", "train.label_smoothing", "must lie in [0, 1), got -0.1"),
    ("[model]\ndropout = 1.0\n", "model.dropout", "must lie in [0, 1), got 1.0"),
    ("[model]\ndropout = -0.1\n", "model.dropout", "must lie in [0, 1), got -0.1"),
    ("[model]\nlstm_hidden = 0\n", "model.lstm_hidden", "must be at least 1, got 0"),
    ("[encoder]\nfinetune_layers = -1\n", "encoder.finetune_layers", "must be at least 0, got -1"),
    ("[data]\nmax_train_sentences = -5\n", "data.max_train_sentences", "must be at least 0, got -5"),
    ('[data]\nunknown_tag = "o"\n', "data.unknown_tag", "must be one of error, O, got 'o'"),
    ("[ensemble]\nmembers = -1\nsubset_sizes = []\n", "ensemble.members", "must lie in [0, 9], got -1"),
    ("[ensemble]\nmembers = 10\nsubset_sizes = [3]\n", "ensemble.members", "must lie in [0, 9], got 10"),
    ("[ensemble]\nmembers = 3\nsubset_sizes = []\n", "ensemble.subset_sizes", "must name at least one ensemble size"),
    ("[ensemble]\nmembers = 3\nsubset_sizes = [4]\n", "ensemble.subset_sizes", "holds 4, more than the 3 members"),
    ("[ensemble]\nsubset_sizes = [6, 3]\n", "ensemble.subset_sizes",
     "must increase (smallest ensemble first), got [6, 3]"),
    ("[ensemble]\nsubset_sizes = [3, 3]\n", "ensemble.subset_sizes", "must increase"),
    ("[ensemble]\nsubset_sizes = [0, 3]\n", "ensemble.subset_sizes[0]", "must be at least 1, got 0"),
    ("[ensemble]\nindividuals = -1\n", "ensemble.individuals", "must be at least 0, got -1"),
]
DISTILL_BAD = [
    ('[distill]\nensemble_run = "r"\n[train]\nlr = -5e-5\n', "train.lr", "must be > 0, got -5e-05"),
    ('[distill]\nensemble_run = "r"\nbeta = 1.5\n', "distill.beta", "must lie in [0, 1], got 1.5"),
    ('[distill]\nensemble_run = "r"\ntemperature = 0.001\n', "distill.temperature",
     "must lie in [0.01, 100], got 0.001"),
    ('[distill]\nensemble_run = "r"\nlabel_smoothing = 1\n', "distill.label_smoothing", "must lie in [0, 1), got 1.0"),
    ("[distill]\nbeta = 0.5\n", "distill.ensemble_run", "is required"),
]


def test_a_student_smooths_with_distill_label_smoothing_not_train(tmp_path):
    path = write(tmp_path, '[distill]\nensemble_run = "r"\n[train]\nlabel_smoothing = 0.1\n')
    with pytest.raises(UserError, match="unknown key 'train.label_smoothing'"):
        load_config(path, DistillConfig)
TRANSLATION_BAD = [
    ("[train]\nlr = -1e-3\n", "train.lr", "must be > 0, got -0.001"),
    ("[train]\nbatch_tokens = 0\n", "train.batch_tokens", "must be at least 1, got 0"),
    ("[train]\nwarmup_steps = 0\n", "train.warmup_steps", "must be at least 1, got 0"),
    ("[train]\nlabel_smoothing = 1.0\n", "train.label_smoothing", "must lie in [0, 1), got 1.0"),
    ("[train]\naverage_last = 0\n", "train.average_last", "must be at least 1, got 0"),
    ('[train]\ndevice = "gpu"\n', "train.device", "must be one of cpu, cuda, got 'gpu'"),
    ("[model]\ndropout = 1.5\n", "model.dropout", "must lie in [0, 1), got 1.5"),
    ("[data]\nvocab_size = 0\n", "data.vocab_size", "must be at least 5, got 0"),
    ("[data]\nmin_len = 0\n", "data.min_len", "must be at least 1, got 0"),
    ("[data]\nmin_len = 20\nmax_len = 10\n", "data.max_len", "must be at least min_len = 20, got 10"),
    ("[data]\nmax_ratio = 0.5\n", "data.max_ratio", "must be at least 1, got 0.5"),
    ("[ensemble]\nmembers = 0\nsubset_sizes = []\n", "ensemble.members", "must be at least 1, got 0"),
    ("[ensemble]\nmembers = 3\nsubset_sizes = [2, 5]\n", "ensemble.subset_sizes", "holds 5, more than the 3 members"),
    ("[decode]\nbeam_size = 0\n", "decode.beam_size", "must be at least 1, got 0"),
    ("[decode]\nalpha = -0.6\n", "decode.alpha", "must be at least 0, got -0.6"),
    ("[decode]\nbatch_sentences = 0\n", "decode.batch_sentences", "must be at least 1, got 0"),
    ("[distill]\ntop_k = 0\n", "distill.top_k", "must be at least 1, got 0"),
    ("[distill]\nepsilon = 1.0\n", "distill.epsilon", "must lie in [0, 1), got 1.0"),
    ("[distill]\nbeta = -0.5\n", "distill.beta", "must lie in [0, 1], got -0.5"),
    ("[distill]\nsweep_top_k = []\n", "distill.sweep_top_k", "must name at least one V'"),
    ("[distill]\nsweep_epsilon = [0.01, 0.0]\n", "distill.sweep_epsilon[1]", "must lie in (0, 1), got 0.0"),
    ('[distill]\nprobs_dtype = "float32"\n', "distill.probs_dtype",
     "must be one of float16, uint8, log_uint8, got 'float32'"),
    ("[distill]\nteacher_members = 4\n", "distill.teacher_members", "is 4, more than the 3 members (ensemble.members)"),
]


@pytest.mark.parametrize("cls, text, key, message", [(TaggingConfig, *case) for case in TAGGING_BAD]
                         + [(DistillConfig, *case) for case in DISTILL_BAD]
                         + [(TranslationConfig, *case) for case in TRANSLATION_BAD])
def test_values_outside_their_range_name_the_file_and_key(tmp_path, cls, text, key, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_config(path, cls)
    assert str(err.value).startswith(f"{path}: '{key}' {message}") and "\n" not in str(err.value)


@pytest.mark.parametrize("cls, text", [
    (TaggingConfig, "[train]\nlr = 1e-9\npatience = 1\nmax_epochs = 1\nbatch_size = 1\nseed = 0\n"),
    (TaggingConfig, "[model]\ndropout = 0.0\n[ensemble]\nmembers = 9\nsubset_sizes = [1, 9]\n"),
    (TaggingConfig, "[ensemble]\nmembers = 1\nsubset_sizes = [1]\nindividuals = 0\n[encoder]\nfinetune_layers = 0\n"),
    (DistillConfig, '[distill]\nensemble_run = "r"\nbeta = 0\ntemperature = 0.01\nlabel_smoothing = 0.0\n'),
    (DistillConfig, '[distill]\nensemble_run = "r"\nbeta = 1\ntemperature = 100\n'),
    (TranslationConfig, "[data]\nmin_len = 5\nmax_len = 5\nmax_ratio = 1\n[distill]\nepsilon = 0\n"),
    (TranslationConfig, "[distill]\nsweep_epsilon = []\nsweep_top_k = [1]\n"),
    (TranslationConfig, "[ensemble]\nmembers = 1\nsubset_sizes = [1]\n[distill]\nteacher_members = 1\n"),
])
def test_values_at_the_edges_of_their_range_are_read(tmp_path, cls, text):
    load_config(write(tmp_path, text), cls)


def test_configs_built_in_code_are_validated():
    cfg = TaggingConfig()
    cfg.train.batch_size = 0
    with pytest.raises(UserError, match=r"^config: 'train.batch_size' must be at least 1, got 0$"):
        validate(cfg)
    cfg = TranslationConfig()
    cfg.ensemble.members, cfg.ensemble.subset_sizes = 2, [2]  # distill.teacher_members is 3 by default
    with pytest.raises(UserError, match=r"'distill.teacher_members' is 3, more than the 2 members"):
        validate(cfg, "demo")
    cfg = TaggingConfig()
    cfg.train.lr = "fast"
    with pytest.raises(UserError, match="'train.lr' must be float, got 'fast'"):
        validate(cfg)
    assert validate(DistillConfig(Distillation(ensemble_run="r"))).distill.ensemble_run == "r"


def test_a_section_check_is_a_value_error_in_python():
    with pytest.raises(ValueError, match="'subset_sizes' must increase"):
        Ensemble(members=9, subset_sizes=[9, 3]).check()


def test_setting_problem_is_the_declared_range():
    assert setting_problem(TranslationDistillation, "top_k", 0) == "must be at least 1, got 0"
    assert setting_problem(TranslationDistillation, "top_k", 1) is None
    assert setting_problem(TranslationDistillation, "sweep_epsilon", 1.0) == "must lie in (0, 1), got 1.0"
    assert setting_problem(Training, "optimizer", "sgd") == "must be one of adafactor, adamw, got 'sgd'"


# ----------------------------------------------------------------------------------------------------------------
# task, paths relative to the config file, --set overrides


def test_the_task_key_picks_the_config_class_and_is_required_without_one(tmp_path):
    assert isinstance(load_config(write(tmp_path, 'task = "nmt"\n')), TranslationConfig)
    assert isinstance(load_config(write(tmp_path, 'task = "ner"\n')), TaggingConfig)
    with pytest.raises(UserError, match=r"'task' must be one of ner, nmt .* got None"):
        load_config(write(tmp_path, "[train]\nlr = 1\n"))
    with pytest.raises(UserError, match=r"task = 'nmt': this command reads a 'ner' config"):
        load_config(write(tmp_path, 'task = "nmt"\n'), TaggingConfig)


def test_paths_are_relative_to_the_config_files_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # not where the file's paths point from
    cfg = load_config(write(folder, '[data]\ntrain = "../data/a.txt"\n[encoder]\ncache_dir = "cache"\n'), TaggingConfig)
    assert cfg.data.train == str(tmp_path / "data" / "a.txt")
    assert cfg.encoder.cache_dir == str(folder / "cache")
    assert cfg.data.dev == str(tmp_path.parent / "shared/data/conll2003-en/eng.testa")  # a default: from the cwd
    (tmp_path / "elsewhere").mkdir()
    again = load_config(write(tmp_path / "elsewhere", to_toml(cfg)), TaggingConfig)  # absolute: read anywhere
    assert again == cfg


def test_overrides_are_toml_literals_validated_and_recorded(tmp_path):
    path = write(tmp_path, 'task = "ner"\n[train]\nlr = 1\n')
    cfg = load_config(path, overrides=["train.lr=0.5", "ensemble.subset_sizes=[2, 4]", "train.device=cuda",
                                       'data.scheme="iob2"', "data.test=t.txt"])
    assert (cfg.train.lr, cfg.ensemble.subset_sizes, cfg.train.device, cfg.data.scheme) == (0.5, [2, 4], "cuda",
                                                                                           "iob2")
    assert cfg.data.test == str(Path.cwd() / "t.txt")  # a path on the command line: from the cwd
    assert "lr = 0.5" in to_toml(cfg) and "subset_sizes = [2, 4]" in to_toml(cfg)
    for override, message in [("train.lrr=1", "--set train.lrr=1: unknown key 'train.lrr'"),
                              ("train=1", "--set train=1: 'train' is a section"),
                              ("train.batch_size=0", "'train.batch_size' must be at least 1, got 0"),
                              ("train.lr.x=1", "'train.lr' is a setting, not a section"),
                              ("lr", "expected section.key=value")]:
        with pytest.raises(UserError, match=re.escape(message)):
            load_config(path, overrides=[override])


# ----------------------------------------------------------------------------------------------------------------
# Settings checked against the system: a text encoding, a cache folder that can be written


@pytest.mark.parametrize("name", ["hex", "rot13", "base64", "zlib", "bz2", "uu", "quopri"])
def test_a_codec_that_is_not_a_text_encoding_is_refused_naming_the_key(tmp_path, name):
    # codecs.lookup knows these, but they map bytes to bytes or text to text: bytes.decode refuses each of them.
    with pytest.raises(LookupError, match="not a text encoding"):
        b"x".decode(name)
    path = write(tmp_path, f'[data]\nencoding = "{name}"\n')
    with pytest.raises(UserError, match=rf"^{path}: 'data.encoding' is a [\w-]+ codec, not a text encoding .*got "
                                        rf"'{name}'$"):
        load_config(path, TaggingConfig)
    with pytest.raises(UserError, match=rf"^data.encoding: '{name}' is a [\w-]+ codec, not a text encoding"):
        read_text_lines(path, name, setting="data.encoding")  # the reader refuses it too, before reading
    for text_encoding in ("utf-8", "latin-1", "cp1252", "utf-16", "UTF8", "iso-8859-15"):
        load_config(write(tmp_path, f'[data]\nencoding = "{text_encoding}"\n'), TaggingConfig)


SYSTEM_FOLDERS = [folder for folder in ("/proc", "/proc/sys", "/sys") if Path(folder).is_dir()]


def test_a_cache_folder_that_cannot_be_written_is_refused_naming_the_key(tmp_path):
    precious = tmp_path / "train.txt"
    precious.write_text("EU B-ORG\n")
    bad = {str(precious): "exists and is not a folder",
           str(precious / "cache"): f"cannot be created, {precious} is a file",
           **{f"{folder}/cache": f"cannot write in {folder} (" for folder in SYSTEM_FOLDERS}}
    for cache_dir, problem in bad.items():
        path = write(tmp_path, f'[encoder]\ncache_dir = "{cache_dir}"\n')
        with pytest.raises(UserError) as err:
            load_config(path, TaggingConfig)
        assert str(err.value).startswith(f"{path}: 'encoder.cache_dir' {problem}"), str(err.value)
        assert str(err.value).endswith(f"got {cache_dir!r}") and "\n" not in str(err.value)
        with pytest.raises(UserError, match="'encoder.cache_dir'"):
            load_config(write(tmp_path, ""), TaggingConfig, overrides=[f"encoder.cache_dir={cache_dir}"])
    assert precious.read_text() == "EU B-ORG\n"
    cfg = load_config(write(tmp_path, '[encoder]\ncache_dir = "cache/frozen"\n'), TaggingConfig)
    assert cfg.encoder.cache_dir == str(tmp_path / "cache" / "frozen")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "train.txt"]  # checked, not created


def test_folders_probed_by_several_processes_at_once_are_writable(tmp_path):
    """Jobs started together (train --member I) probe the same new run folder at once: one job's probe creating
    and removing the missing folders must never make another's fail."""
    import concurrent.futures

    targets = [tmp_path / f"round-{i}" / "run" for i in range(40) for _ in range(4)]  # each path 4 times at once
    with concurrent.futures.ProcessPoolExecutor(4) as pool:
        problems = list(pool.map(folder_problem, targets))
    assert problems == [None] * len(targets)


def test_counts_in_messages_agree_with_their_noun(tmp_path):
    from ensemble_distill.errors import counted

    assert [counted(n, "member") for n in (0, 1, 2)] == ["0 members", "1 member", "2 members"]
    config = tmp_path / "c.toml"
    config.write_text('task = "nmt"\n[ensemble]\nmembers = 1\nsubset_sizes = [2]\n')
    with pytest.raises(UserError, match=r"'ensemble.subset_sizes' holds 2, more than the 1 member$"):
        load_config(config)
