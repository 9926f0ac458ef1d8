"""Damaged, replaced and mismatched files in run folders, for both tasks, through the command line: weights, training
checkpoints, the frozen-layer cache and JSON records cut short or swapped; a run resumed on other data or without
its config.toml; a training that diverges. Each is one line naming the file (exit 2), or a recovery that ends with
the same bytes as an untouched run."""

import copy
import hashlib
import re
import shutil
import warnings

import pytest
import torch
from test_runs import (
    one_line_error,
    tiny_tagging_config,
    tiny_translation_config,
    write_copy_task,
    write_distill_config,
)

from ensemble_distill.cli import main
from ensemble_distill.config import to_toml
from ensemble_distill.distill.memoize import memoize
from ensemble_distill.ensemble import train_members
from ensemble_distill.pipeline import memoize as memoize_command
from ensemble_distill.tasks.ner import load_tagging_data


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_line(capsys) -> str:
    """The one error line a command printed last, after its progress bars."""
    err = capsys.readouterr().err
    errors = [line for line in re.split(r"[\r\n]", err) if "error:" in line]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


def files(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def cut(path, keep=0.5) -> None:
    """The file cut short, as a full disk or an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def ner_run(tiny_encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    return train_members(tiny_tagging_config(folder, tiny_encoder), folder / "run", progress=False)


@pytest.fixture(scope="module")
def nmt_run(tmp_path_factory):
    folder = write_copy_task(tmp_path_factory.mktemp("copy"))
    return train_members(tiny_translation_config(folder), folder / "run", progress=False)


def copy_run(run, tmp_path, data_files=()):
    """A copy of the run folder in tmp_path; with `data_files` (config keys), copies of those data files too, which
    the copy's config.toml then names, so that they can be edited without touching the shared run's."""
    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy)
    config = (copy / "config.toml").read_text()
    for key in data_files:
        source = getattr(run.cfg.data, key)
        target = tmp_path / f"{key}.txt"
        shutil.copy(source, target)
        config = config.replace(f'"{source}"', f'"{target}"')
    (copy / "config.toml").write_text(config)
    return copy


# ----------------------------------------------------------------------------------------------------------------
# Weights: cut short, emptied or replaced by another member's


@pytest.mark.parametrize("name", ["model.safetensors", "best.pt", "result.json"])
def test_train_on_a_finished_run_names_a_damaged_model_file(ner_run, tmp_path, capsys, name):
    """`train` on a finished run said "trained" over a member whose model.safetensors, best.pt or result.json was
    cut short; evaluate (best.pt) and predict (model.safetensors) each noticed only their own file (trial 4)."""
    run = copy_run(ner_run, tmp_path)
    damaged = run / "members" / "member-1" / name
    cut(damaged)
    before = files(run)
    assert main(["train", "--config", str(run / "config.toml"), "--out", str(run)]) == 2
    err = one_line_error(capsys)
    assert str(damaged) in err and f"delete {damaged.parent}" in err, err
    assert files(run) == before  # nothing trained over it, nothing rewritten


@pytest.mark.parametrize("damage", ["cut", "empty", "swapped"])
def test_ner_member_weights_damaged_or_swapped_are_one_line_naming_the_file(ner_run, tmp_path, capsys, damage):
    run = copy_run(ner_run, tmp_path)
    best = run / "members" / "member-1" / "best.pt"
    {"cut": lambda: cut(best), "empty": lambda: cut(best, 0),
     "swapped": lambda: shutil.copy(run / "members" / "member-0" / "best.pt", best)}[damage]()
    before = files(run)
    commands = [["memoize", "--run", str(run)]] + [["evaluate", "--run", str(run), "--n-boot", "2"]] * (damage == "cut")
    for command in commands:
        assert main(command) == 2
        err = one_line_error(capsys)
        assert f"{best}: not the file this model was saved with" in err and "replaced or damaged" in err, err
        assert f"delete {best.parent} and rerun the command that trains it" in err, err
    assert files(run) == before  # no store, no evaluation written


def test_ner_model_folder_weights_damaged_or_swapped_are_one_line(ner_run, tmp_path, capsys):
    run = copy_run(ner_run, tmp_path)
    member = run / "members" / "member-1"
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("Peter\nBlackburn\n")
    predict = ["predict", "--model", str(member), "--input", str(tokens), "--out", str(tmp_path / "out")]
    shutil.copy(run / "members" / "member-0" / "model.safetensors", member / "model.safetensors")
    assert main(predict) == 2
    assert f"{member / 'model.safetensors'}: not the file this model was saved with" in one_line_error(capsys)
    (member / "model.json").write_text("{")
    assert main(predict) == 2
    assert f"{member / 'model.json'}: not the file this model was saved with" in one_line_error(capsys)


def test_weights_of_models_finished_without_digests_are_still_read_or_refused_in_one_line(ner_run, tmp_path,
                                                                                           capsys):
    """result.json of an older version records no sha256: a damaged file is then caught by its reader."""
    run = copy_run(ner_run, tmp_path)
    member = run / "members" / "member-1"
    (member / "result.json").write_text('{"task": "ner"}')
    cut(member / "best.pt")
    assert main(["memoize", "--run", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{member / 'best.pt'}: cannot be read, damaged or cut short (" in err, err
    cut(member / "model.safetensors")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("Peter\n")
    assert main(["predict", "--model", str(member), "--input", str(tokens), "--out", str(tmp_path / "out")]) == 2
    assert f"{member / 'model.safetensors'}: cannot be read, damaged or cut short (" in one_line_error(capsys)


def test_translation_member_weights_damaged_or_swapped_are_one_line(nmt_run, tmp_path, capsys):
    run = copy_run(nmt_run, tmp_path)
    member = run / "members" / "member-1"
    for damage in (lambda: cut(member / "model.pt"), lambda: cut(member / "model.pt", 0),
                   lambda: shutil.copy(run / "members" / "member-0" / "model.pt", member / "model.pt")):
        damage()
        assert main(["evaluate-nmt", "--run", str(run), "--n-boot", "2"]) == 2
        err = one_line_error(capsys)
        assert f"{member / 'model.pt'}: not the file this model was saved with" in err, err
    shutil.copy(run / "members" / "member-0" / "model.safetensors", member / "model.safetensors")
    source = tmp_path / "src.txt"
    source.write_text("ant bee\n")
    assert main(["translate", "--model", str(member), "--input", str(source), "--out", str(tmp_path / "t")]) == 2
    assert f"{member / 'model.safetensors'}: not the file this model was saved with" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------------------------------
# Training checkpoints of unfinished models


def test_a_damaged_checkpoint_of_an_unfinished_ner_member_is_named_and_deleting_it_retrains(ner_run, tmp_path,
                                                                                            capsys):
    run = copy_run(ner_run, tmp_path)
    member = run / "members" / "member-1"
    (member / "result.json").unlink()
    cut(member / "checkpoint.pt")
    train = ["train", "--config", str(run / "config.toml"), "--out", str(run)]
    assert main(train) == 2
    err = one_line_error(capsys)
    assert f"{member / 'checkpoint.pt'}: cannot be read, damaged or cut short (" in err, err
    assert f"delete it to train {member} again from its start" in err, err
    (member / "checkpoint.pt").unlink()
    assert main(train) == 0
    for name in ("best.pt", "model.safetensors", "result.json"):  # training is deterministic: the same bytes
        assert sha256(member / name) == sha256(ner_run.member_dir(1) / name), name


def test_a_damaged_checkpoint_of_an_unfinished_translation_member_is_named(nmt_run, tmp_path, capsys):
    run = copy_run(nmt_run, tmp_path)
    member = run / "members" / "member-1"
    (member / "result.json").unlink()
    cut(member / "checkpoint.pt", 0.3)
    assert main(["train-nmt", "--config", str(run / "config.toml"), "--out", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{member / 'checkpoint.pt'}: cannot be read, damaged or cut short (" in err, err
    assert "delete it to train" in err


# ----------------------------------------------------------------------------------------------------------------
# The frozen-layer cache: only a cache


def test_a_damaged_frozen_layer_cache_entry_is_computed_again_with_a_warning(tiny_encoder, tmp_path):
    cfg = tiny_tagging_config(tmp_path, tiny_encoder)
    first = load_tagging_data(cfg, splits=("train",), progress=False).splits["train"].frozen
    (entry,) = (tmp_path / "cache").glob("frozen-*.pt")
    original = entry.read_bytes()
    def edited(change):  # the entry's dict with one value changed, saved whole: loads and fits, but wrong
        data = torch.load(entry)
        change(data)
        torch.save(data, entry)

    def flipped_bytes():  # same size, loads, fits: only the sha256 tells (trial 4 trained on such a cache)
        data = bytearray(entry.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0x55 for b in data[middle:middle + 64])
        entry.write_bytes(bytes(data))

    for damage in (lambda: cut(entry), lambda: cut(entry, 0),
                   lambda: torch.save({"states": torch.zeros(3, 32), "offsets": torch.tensor([0, 3])}, entry),
                   lambda: torch.save([1, 2], entry), flipped_bytes,
                   lambda: edited(lambda d: d["states"].__setitem__((0, 0), 7.0)),
                   lambda: edited(lambda d: d.pop("sha256"))):  # an older cache, written without its sha256
        damage()
        with pytest.warns(UserWarning, match=f"{entry}: .*computing it again"):
            again = load_tagging_data(cfg, splits=("train",), progress=False).splits["train"].frozen
        assert torch.equal(again.states, first.states) and (again.offsets == first.offsets).all()
        assert entry.read_bytes() == original  # written again, whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact entry is read without a word
        load_tagging_data(cfg, splits=("train",), progress=False)


# ----------------------------------------------------------------------------------------------------------------
# JSON records


def test_damaged_json_records_are_one_line_naming_the_file(ner_run, tmp_path, capsys):
    run = copy_run(ner_run, tmp_path)
    (run / "run.json").write_text("{")
    assert main(["train", "--config", str(run / "config.toml"), "--out", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{run / 'run.json'}: damaged, not JSON (" in err and "delete it to have it written again" in err, err
    result = run / "members" / "member-0" / "result.json"
    result.write_bytes(b"\xff\xfe")
    assert main(["memoize", "--run", str(run)]) == 2
    assert f"{result}: damaged, not JSON (" in one_line_error(capsys)


def test_a_damaged_teacher_json_of_a_translation_student_is_one_line(nmt_run, tmp_path, capsys):
    run = copy_run(nmt_run, tmp_path)
    memoize_command(run, progress=False)
    student = run / "students" / "student-2-top4"
    student.mkdir(parents=True)
    (student / "teacher.json").write_text('{"teachers": [')
    assert main(["distill-nmt", "--run", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{student / 'teacher.json'}: damaged, not JSON (" in err and f"delete {student}" in err, err


# ----------------------------------------------------------------------------------------------------------------
# A run resumed on other data, or without its config


def test_an_ner_run_resumed_on_edited_training_data_is_refused_naming_the_file(ner_run, tmp_path, capsys):
    run = copy_run(ner_run, tmp_path, data_files=("train", "dev"))
    train = ["train", "--config", str(run / "config.toml"), "--out", str(run)]
    assert main(train) == 0  # the same data in other files: the run goes on
    capsys.readouterr()
    for key in ("train", "dev"):
        path = tmp_path / f"{key}.txt"
        original = path.read_text()
        # same labels, and every entity type still in the file (a type gone from dev is a warning line of its own)
        path.write_text(original.replace("EU NN I-NP B-ORG", "EU NN I-NP B-LOC", 1))
        assert main(train) == 2
        err = one_line_error(capsys)
        assert err.startswith(f"ensemble-distill: error: {path}: not the {key} data {run} was started on"), err
        path.write_text(original)
    assert main(train) == 0


def test_a_translation_run_resumed_on_edited_training_data_is_refused_naming_the_files(nmt_run, tmp_path, capsys):
    run = copy_run(nmt_run, tmp_path, data_files=("train_src", "train_tgt"))
    target = tmp_path / "train_tgt.txt"
    target.write_text(target.read_text().replace("ant", "bee", 1))
    vocab = sha256(run / "vocab.model")
    assert main(["train-nmt", "--config", str(run / "config.toml"), "--out", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'train_src.txt'}, {target}: not the train data {run} was started on" in err, err
    assert sha256(run / "vocab.model") == vocab


@pytest.mark.parametrize("task", ["ner", "nmt"])
def test_a_trained_run_without_its_config_is_refused(ner_run, nmt_run, tmp_path, capsys, task):
    source = {"ner": ner_run, "nmt": nmt_run}[task]
    run = copy_run(source, tmp_path)
    (run / "config.toml").unlink()
    before = files(run)
    cfg = copy.deepcopy(source.cfg)
    cfg.train.lr = 1e-3
    config = tmp_path / "other.toml"
    config.write_text(to_toml(cfg))
    assert main(["train", "--config", str(config), "--out", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{run}: holds members/member-0/checkpoint.pt but no config.toml, so the config it was trained with is " \
           "unknown" in err, err
    assert files(run) == before  # vocab.model kept, nothing written


# ----------------------------------------------------------------------------------------------------------------
# A training that diverges


@pytest.mark.parametrize("task, lr", [("ner", 1e300), ("ner", 1e30), ("nmt", 1e300), ("nmt", 1e30)])
def test_a_diverging_training_stops_at_once_and_the_folder_takes_a_corrected_lr(tiny_encoder, tmp_path, capsys,
                                                                                task, lr):
    if task == "ner":
        cfg = tiny_tagging_config(tmp_path, tiny_encoder)
    else:
        cfg = tiny_translation_config(write_copy_task(tmp_path / "data"))
    good_lr = cfg.train.lr
    config, run = tmp_path / "config.toml", tmp_path / "run"
    cfg.train.lr = lr
    config.write_text(to_toml(cfg))
    assert main(["train", "--config", str(config), "--out", str(run)]) == 2
    err = error_line(capsys)
    member = run / "members" / "member-0"
    # lr = 1e300: the first update overflows float32; lr = 1e30: the weights become inf, and the next loss NaN
    what = "the update at epoch 1, batch 1 overflows" if lr == 1e300 else "the training loss is nan at epoch 1, batch 2"
    assert f"{member}: training diverged, {what}" in err and "; lower train.lr and train again" in err, err
    assert not [p for p in member.iterdir()]  # nothing of the diverged training is kept
    cfg.train.lr = good_lr
    config.write_text(to_toml(cfg))
    assert main(["train", "--config", str(config), "--out", str(run)]) == 0
    assert f"lr = {good_lr}" in (run / "config.toml").read_text()
    assert (run / "members" / "member-1" / "result.json").is_file()


def test_a_diverging_ner_student_stops_and_its_folder_takes_a_corrected_config_not_a_lost_one(ner_run, tmp_path,
                                                                                            capsys):
    store = memoize(ner_run, store_dir=tmp_path / "store", progress=False)
    config, out = write_distill_config(tmp_path / "d.toml", ner_run.run_dir), tmp_path / "student"
    distill = ["distill", "--store", str(store.path), "--config", str(config), "--out", str(out), "--n-boot", "2"]
    config.write_text(config.read_text().replace("lr = 0.01", "lr = 1e+30"))
    assert main(distill) == 2
    assert f"{out}: training diverged, the training loss is nan at epoch 1, batch 2" in error_line(capsys)
    config.write_text(config.read_text().replace("lr = 1e+30", "lr = 0.01"))
    assert main(distill) == 0
    assert "lr = 0.01" in (out / "config.toml").read_text()
    capsys.readouterr()
    (out / "config.toml").unlink()
    assert main(distill) == 2
    assert f"{out}: holds checkpoint.pt but no config.toml" in one_line_error(capsys)
