"""TOML configs: defaults fill gaps; unknown keys, wrong types and bad choices name the key."""

import pytest

from ensemble_distill.config import TaggingConfig, load_config, to_toml
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
