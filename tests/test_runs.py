"""Run folders, stores and student folders: one writer at a time (a lock), one config per folder, stage markers
written last, stores tied to the teacher a student claims, and byte-reproducible weight files."""

import copy
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tasks_nmt import toy_config
from test_teacher_store import reseal

from ensemble_distill import runs as runs_module
from ensemble_distill import training as training_module
from ensemble_distill.cli import main
from ensemble_distill.config import DistillConfig, TaggingConfig, TranslationConfig, to_toml
from ensemble_distill.distill.memoize import memoize
from ensemble_distill.ensemble import Run, open_run, train_members
from ensemble_distill.errors import UserError
from ensemble_distill.io_utils import LOCK, atomic_torch_save, run_lock
from ensemble_distill.tasks.ner import new_tagger, train_tagger
from ensemble_distill.tasks.nmt import new_model, nll_loss, train_model

from conftest import CONLL_SENTENCES, write_conll

HOST = socket.gethostname()



def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


# ----------------------------------------------------------------------------------------------------------------
# The lock


@contextmanager
def held_by_another_process(folder):
    """A second process that holds run_lock(folder) until the block ends; yields its pid."""
    code = ("import sys\nfrom ensemble_distill.io_utils import run_lock\nwith run_lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def acquire_in_another_process(folder) -> int:
    """Exit status of a second process that takes and releases run_lock(folder) (0: it got the lock)."""
    code = "import sys\nfrom ensemble_distill.io_utils import run_lock\nwith run_lock(sys.argv[1]):\n    pass\n"
    return subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True).returncode


def test_a_folder_held_by_a_live_process_is_refused_naming_it(tmp_path):
    folder = tmp_path / "run"
    with held_by_another_process(folder) as pid:
        holder = json.loads((folder / LOCK).read_text())
        assert holder == {"pid": pid, "host": HOST}
        with pytest.raises(UserError, match=f"^{folder}: in use by process {pid} on {HOST} "):
            with run_lock(folder):
                pytest.fail("the lock was taken twice")
    assert not (folder / LOCK).exists()  # released and removed on exit
    with run_lock(folder):
        assert json.loads((folder / LOCK).read_text())["pid"] != pid


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK).write_text(json.dumps({"pid": dead.pid, "host": HOST}))
    with run_lock(folder):
        assert json.loads((folder / LOCK).read_text()) == {"pid": os.getpid(), "host": HOST}
        assert acquire_in_another_process(folder) != 0  # now it is ours
    assert not (folder / LOCK).exists()


def test_a_lock_file_naming_a_live_process_that_holds_no_lock_is_taken_over(tmp_path):
    """The OS lock decides, not the pid in the file: a pid reused by an unrelated process (here a `sleep`) does
    not keep a folder locked forever."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": HOST}))
        with run_lock(folder):
            assert acquire_in_another_process(folder) != 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_lock_is_released_by_an_exception_reentrant_and_leaves_no_empty_folder(tmp_path):
    folder = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with run_lock(folder):
            with run_lock(folder):  # nested in one process: a sweep distils students that memoise their teachers
                (folder / "data").write_text("x")
            assert (folder / LOCK).exists()
            raise RuntimeError("killed")
    assert not (folder / LOCK).exists() and acquire_in_another_process(folder) == 0
    with run_lock(tmp_path / "empty"):
        pass
    assert not (tmp_path / "empty").exists()  # a refused run leaves no folder to refuse the corrected config


def test_a_folder_that_cannot_be_written_is_one_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=f"{tmp_path / 'file'}: exists and is not a folder"):
        with run_lock(tmp_path / "file"):
            pass
    with pytest.raises(UserError, match=f"{tmp_path / 'file' / 'run'}: cannot write here"):
        with run_lock(tmp_path / "file" / "run"):
            pass


def tagging_config_file(path, cfg: TaggingConfig):
    path.write_text(to_toml(cfg))
    return path


@pytest.mark.parametrize("command", ["train-ensemble", "train-nmt", "memoize", "distill"])
def test_every_writing_command_refuses_a_held_folder_in_one_line(tmp_path, capsys, command):
    out = tmp_path / "out"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(to_toml(TaggingConfig()))
    config = tmp_path / "config.toml"
    config.write_text(to_toml(TranslationConfig() if command == "train-nmt" else TaggingConfig()))
    distill_config = DistillConfig()
    distill_config.distill.ensemble_run = str(run)
    (tmp_path / "distill.toml").write_text(to_toml(distill_config))
    argv = {"train-ensemble": ["--config", str(config), "--out", str(out)],
            "train-nmt": ["--config", str(config), "--out", str(out)],
            "memoize": ["--ensemble", str(run), "--out", str(out)],
            "distill": ["--store", str(tmp_path / "store"), "--config", str(tmp_path / "distill.toml"),
                        "--out", str(out)]}[command]
    with held_by_another_process(out) as pid:
        assert main([command, *argv]) == 2
        err = one_line_error(capsys)
        assert f"{out}: in use by process {pid} on {HOST}" in err, err


# ----------------------------------------------------------------------------------------------------------------
# NER: a tiny ensemble


def tiny_tagging_config(folder, tiny_encoder) -> TaggingConfig:
    cfg = TaggingConfig()
    cfg.data.train = str(write_conll(folder / "train.txt", CONLL_SENTENCES, repeat=5))
    cfg.data.dev = str(write_conll(folder / "dev.txt", CONLL_SENTENCES[:4]))
    cfg.data.test = str(write_conll(folder / "test.txt", CONLL_SENTENCES[4:]))
    cfg.data.scheme = "iob2"
    cfg.encoder.name, cfg.encoder.finetune_layers, cfg.encoder.cache_dir = str(tiny_encoder), 1, str(folder / "cache")
    cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.max_epochs = "adamw", 3e-3, 8, 1
    cfg.ensemble.members, cfg.ensemble.subset_sizes = 2, [1, 2]
    return cfg


@pytest.fixture(scope="module")
def ner_run(tiny_encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    return train_members(tiny_tagging_config(folder, tiny_encoder), folder / "run", progress=False)


def test_an_ner_run_resumed_with_another_config_is_refused_naming_the_key(ner_run, tmp_path, capsys):
    files = lambda: {p: p.read_bytes() for p in ner_run.run_dir.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    for key, value, shown in (("lr", 2e-3, "'train.lr' is 0.003 in"), ("batch_size", 4, "'train.batch_size' is 8")):
        cfg = copy.deepcopy(ner_run.cfg)
        setattr(cfg.train, key, value)
        cfg.ensemble.members = 3  # differs too, but later in the file: the first key that differs is named
        config = tagging_config_file(tmp_path / "other.toml", cfg)
        assert main(["train-ensemble", "--config", str(config), "--out", str(ner_run.run_dir)]) == 2
        err = one_line_error(capsys)
        assert f"{ner_run.run_dir}: was started with another config: {shown}" in err, err
        assert f"{ner_run.run_dir / 'config.toml'}, {value!r} now" in err, err
    assert files() == before  # nothing rewritten: not config.toml, not a log


def test_a_run_recorded_with_dotdot_paths_resumes_with_the_same_files_written_otherwise(ner_run, tmp_path, capsys):
    """The demo recorded data paths with `..` left in ("/x/clone/../data/eng.train") and load_config normalises a
    file's paths, so `train --config RUN/config.toml --out RUN` refused its own run. Paths compare as the files they
    name, either way round; another file, even of the same bytes, is still refused naming the key."""
    train = Path(ner_run.cfg.data.train)
    dotted = str(train.parent / "clone" / ".." / train.name)
    for recorded, given in ((dotted, str(train)), (str(train), dotted)):
        run_dir = tmp_path / f"run-{len(recorded)}"
        shutil.copytree(ner_run.run_dir, run_dir)
        cfg = copy.deepcopy(ner_run.cfg)
        cfg.data.train = recorded
        tagging_config_file(run_dir / "config.toml", cfg)
        cfg.data.train = given
        config = tagging_config_file(tmp_path / "given.toml", cfg)
        assert "/../" in (run_dir / "config.toml").read_text() + config.read_text()
        assert main(["train", "--config", str(config), "--out", str(run_dir)]) == 0, capsys.readouterr().err
        assert f"{run_dir}: 2 members trained" in capsys.readouterr().out
    other = tmp_path / "other.txt"
    shutil.copyfile(train, other)
    cfg.data.train = str(other)
    config = tagging_config_file(tmp_path / "other.toml", cfg)
    assert main(["train", "--config", str(config), "--out", str(run_dir)]) == 2
    err = one_line_error(capsys)
    assert f"{run_dir}: was started with another config: 'data.train' is '{train}' in" in err, err


def test_an_ner_member_without_its_result_is_unfinished_and_resumed(ner_run, tmp_path, monkeypatch):
    """Killed after best.pt and checkpoint.pt, before result.json: not usable, and the rerun finishes it."""
    run_dir = tmp_path / "run"
    cfg = ner_run.cfg
    real_write = runs_module.atomic_write_json

    def killed_before_result(path, obj):
        if path.name == "result.json" and "member-1" in str(path):
            raise KeyboardInterrupt("killed")
        real_write(path, obj)

    monkeypatch.setattr(runs_module, "atomic_write_json", killed_before_result)
    with pytest.raises(KeyboardInterrupt):
        train_members(cfg, run_dir, progress=False, data=ner_run.data)
    monkeypatch.setattr(runs_module, "atomic_write_json", real_write)
    member = run_dir / "members" / "member-1"
    assert (member / "best.pt").is_file() and not (member / "result.json").exists()
    with pytest.raises(UserError, match=f"{member}: not a finished model"):
        Run(run_dir, cfg, ner_run.data).load(member)
    with pytest.raises(UserError, match=f"{member}: not a finished model"):
        memoize(Run(run_dir, ner_run.cfg, ner_run.data), store_dir=tmp_path / "store", progress=False)
    train_members(cfg, run_dir, progress=False, data=ner_run.data)
    assert json.loads((member / "result.json").read_text())["epochs"] == cfg.train.max_epochs
    # The same bytes as the uninterrupted run's member: saving is byte-reproducible.
    for name in ("best.pt", "model.safetensors", "model.json"):
        assert sha256(member / name) == sha256(ner_run.run_dir / "members" / "member-1" / name), name


def test_log_has_one_line_per_epoch_after_a_kill_between_checkpoint_and_log(ner_run, tmp_path, monkeypatch):
    cfg, data = ner_run.cfg, ner_run.data
    train_cfg = type(cfg.train)(**{**cfg.train.__dict__, "max_epochs": 3, "patience": 5})
    windows = np.arange(len(data.splits["train"].windows))
    real_save = training_module._save

    def killed_after_checkpoint_of_epoch_2(path, model, optimizer, state, scheduler=None):
        real_save(path, model, optimizer, state, scheduler)
        if state["epoch"] == 2:
            raise KeyboardInterrupt("killed")

    def fit():
        train_tagger(new_tagger(data, cfg, seed=0), data, windows, ("dev", np.arange(4)), train_cfg,
                     tmp_path / "model", progress=False)

    monkeypatch.setattr(training_module, "_save", killed_after_checkpoint_of_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit()
    monkeypatch.setattr(training_module, "_save", real_save)
    fit()
    fit()  # a finished model trained again only reloads
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "model" / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_two_identical_trainings_write_identical_weight_files(ner_run, tmp_path):
    cfg, data = ner_run.cfg, ner_run.data
    windows = np.arange(len(data.splits["train"].windows))
    for name in ("a", "b"):
        train_tagger(new_tagger(data, cfg, seed=0), data, windows, ("dev", np.arange(4)), cfg.train,
                     tmp_path / name, progress=False)
    assert sha256(tmp_path / "a" / "best.pt") == sha256(tmp_path / "b" / "best.pt")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    atomic_torch_save(a, tmp_path / "x.pt")  # the same object saved under two names: the same bytes
    atomic_torch_save(a, tmp_path / "other-name.pt")
    assert (tmp_path / "x.pt").read_bytes() == (tmp_path / "other-name.pt").read_bytes()


def write_distill_config(path, run_dir, **distill):
    cfg = DistillConfig()
    cfg.distill.ensemble_run = str(run_dir)
    for key, value in distill.items():
        setattr(cfg.distill, key, value)
    cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.max_epochs = "adamw", 1e-2, 8, 1
    path.write_text(to_toml(cfg))
    return path


def test_a_store_of_another_ensemble_than_the_student_claims_is_refused(ner_run, tmp_path, capsys):
    run_dir = ner_run.run_dir
    one = memoize(Run(run_dir, ner_run.cfg, ner_run.data), store_dir=tmp_path / "one", members=1, progress=False)
    both = memoize(Run(run_dir, ner_run.cfg, ner_run.data), store_dir=tmp_path / "both", progress=False)
    config = write_distill_config(tmp_path / "d.toml", run_dir)  # teacher_members = 0: the run's largest, 2
    out = tmp_path / "student"
    assert main(["distill", "--store", str(one.path), "--config", str(config), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"{one.path}: the store was memoized from other teachers than the ensemble of 2 of {run_dir}" in err
    assert "1 teachers in the store, 2 expected" in err, err
    assert not out.exists()

    config = write_distill_config(tmp_path / "d1.toml", run_dir, teacher_members=1)
    assert main(["distill", "--store", str(both.path), "--config", str(config), "--out", str(out)]) == 2
    assert "2 teachers in the store, 1 expected" in one_line_error(capsys)

    # The same member ids, but the weights of another run (here: member 1 retrained after memoizing).
    other = tmp_path / "other-run"
    shutil.copytree(run_dir, other)
    weights = torch.load(other / "members/member-1/best.pt", weights_only=True)
    atomic_torch_save({k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()},
                      other / "members/member-1/best.pt")
    config = write_distill_config(tmp_path / "d2.toml", other)
    assert main(["distill", "--store", str(both.path), "--config", str(config), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"(teachers[1]: 'members/member-1/best.pt sha256:{sha256(run_dir / 'members/member-1/best.pt')}' in " \
           f"the store, 'members/member-1/best.pt sha256:{sha256(other / 'members/member-1/best.pt')}' expected)" \
           in err, err


def test_an_edited_teachers_list_is_refused(ner_run, tmp_path, capsys):
    store = memoize(Run(ner_run.run_dir, ner_run.cfg, ner_run.data), store_dir=tmp_path / "store", progress=False)
    config = write_distill_config(tmp_path / "d.toml", ner_run.run_dir)
    manifest = store.path / "manifest.json"
    original = manifest.read_text()
    manifest.write_text(original.replace("members/member-1/best.pt", "members/member-0/best.pt"))
    assert main(["distill", "--store", str(store.path), "--config", str(config), "--out", str(tmp_path / "s")]) == 2
    assert f"{manifest}: the manifest fails its checksum" in one_line_error(capsys)
    manifest.write_text(original)
    reseal(manifest, lambda m: m["teachers"].pop())  # edited and resealed: still not the claimed ensemble
    assert main(["distill", "--store", str(store.path), "--config", str(config), "--out", str(tmp_path / "s")]) == 2
    assert "1 teachers in the store, 2 expected" in one_line_error(capsys)


def test_a_student_folder_resumed_with_another_config_is_refused_naming_the_key(ner_run, tmp_path, capsys):
    store = memoize(Run(ner_run.run_dir, ner_run.cfg, ner_run.data), store_dir=tmp_path / "store", progress=False)
    out = tmp_path / "student"
    config = write_distill_config(tmp_path / "d.toml", ner_run.run_dir)
    assert main(["distill", "--store", str(store.path), "--config", str(config), "--out", str(out),
                 "--n-boot", "5"]) == 0
    capsys.readouterr()
    config = write_distill_config(tmp_path / "d.toml", ner_run.run_dir, beta=0.5)
    assert main(["distill", "--store", str(store.path), "--config", str(config), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"{out}: was started with another config: 'distill.beta' is 0.8333333333333334 in" in err, err


# ----------------------------------------------------------------------------------------------------------------
# Translation: a tiny run


def write_copy_task(folder, n_train=60):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = "ant bee cat dog eel fox gnu hen".split()
    for split, n in (("train", n_train), ("dev", 8), ("test", 8)):
        lines = [" ".join(rng.choice(words, rng.integers(2, 6))) for _ in range(n)]
        for side in ("src", "tgt"):
            (folder / f"{split}.{side}").write_text("\n".join(lines) + "\n")
    return folder


def tiny_translation_config(folder) -> TranslationConfig:
    """test_tasks_nmt's toy config with a shorter budget, dropout and two rounds averaged (snapshot files)."""
    cfg = toy_config(folder, warmup_steps=4, batch_tokens=300, updates_per_round=3, max_rounds=2, patience=2,
                     average_last=2)
    cfg.model.dropout, cfg.decode.temperature_positions = 0.1, 50
    return cfg


@pytest.fixture(scope="module")
def nmt_run(tmp_path_factory):
    folder = write_copy_task(tmp_path_factory.mktemp("copy"))
    return train_members(tiny_translation_config(folder), folder / "run", progress=False)


def test_a_translation_run_resumed_with_another_config_is_refused_naming_the_key(nmt_run, tmp_path, capsys):
    config = tmp_path / "other.toml"
    config.write_text(to_toml(nmt_run.cfg).replace("lr = 0.007", "lr = 0.002"))
    before = (nmt_run.run_dir / "config.toml").read_bytes()
    assert main(["train-nmt", "--config", str(config), "--out", str(nmt_run.run_dir)]) == 2
    err = one_line_error(capsys)
    assert f"{nmt_run.run_dir}: was started with another config: 'train.lr' is 0.007 in" in err, err
    assert (nmt_run.run_dir / "config.toml").read_bytes() == before


def test_a_translation_member_killed_before_its_result_is_unfinished_and_resumed(nmt_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_write = runs_module.atomic_write_json

    def killed_before_result(path, obj):
        if path.name == "result.json" and "member-1" in str(path):
            raise KeyboardInterrupt("killed")
        real_write(path, obj)

    monkeypatch.setattr(runs_module, "atomic_write_json", killed_before_result)
    with pytest.raises(KeyboardInterrupt):
        train_members(nmt_run.cfg, run_dir, progress=False, data=nmt_run.data)
    monkeypatch.setattr(runs_module, "atomic_write_json", real_write)
    member = run_dir / "members" / "member-1"
    assert (member / "model.pt").is_file() and not (member / "result.json").exists()
    shutil.copy(nmt_run.run_dir / "vocab.model", run_dir / "vocab.model")
    with pytest.raises(UserError, match=f"{member}: not a finished model"):
        open_run(run_dir, splits=("dev",), progress=False).members(2)
    train_members(nmt_run.cfg, run_dir, progress=False, data=nmt_run.data)
    assert json.loads((member / "result.json").read_text())["epochs"] == nmt_run.cfg.train.max_rounds
    # identical to the uninterrupted run's, byte for byte
    for name in ("model.pt", "best.pt", "epoch-2.pt", "model.safetensors"):
        assert sha256(member / name) == sha256(nmt_run.member_dir(1) / name), name


def test_two_identical_translation_trainings_write_identical_files(nmt_run, tmp_path):
    for name in ("a", "b"):
        model = new_model(nmt_run.cfg, len(nmt_run.data.vocab), seed=5)
        train_model(model, nmt_run.data, nmt_run.cfg, tmp_path / name, nll_loss(0.1), 5, progress=False)
    files = sorted(p.name for p in (tmp_path / "a").glob("*.pt"))
    assert files == ["best.pt", "checkpoint.pt", "epoch-1.pt", "epoch-2.pt", "model.pt"]
    for name in files:
        if name != "checkpoint.pt":  # the checkpoint also holds each round's wall-clock seconds
            assert sha256(tmp_path / "a" / name) == sha256(tmp_path / "b" / name), name


def test_a_translation_store_with_edited_teachers_is_refused(nmt_run, capsys):
    store = memoize(nmt_run, *nmt_run.task.teacher_settings(nmt_run.cfg), progress=False)
    manifest = store.path / "manifest.json"
    original = manifest.read_text()
    reseal(manifest, lambda m: m["teachers"].reverse())
    assert main(["distill-nmt", "--run", str(nmt_run.run_dir)]) == 2
    err = one_line_error(capsys)
    assert f"{manifest}: this store was written with different teachers (teachers[0]: " in err, err
    manifest.write_text(original)


@pytest.mark.parametrize("command", ["memoize-nmt", "distill-nmt", "sweep-nmt"])
def test_every_translation_writing_command_refuses_a_held_folder_in_one_line(nmt_run, capsys, command):
    store = nmt_run.run_dir / "teachers" / "ensemble-2-top4"
    held = store if command == "memoize-nmt" else nmt_run.run_dir / "students" / "student-2-top4"
    argv = [command, "--run", str(nmt_run.run_dir)] + (["--top-k", "4"] if command == "sweep-nmt" else [])
    with held_by_another_process(held) as pid:
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert f"{held}: in use by process {pid} on {HOST}" in err, err


def test_a_translation_student_folder_begun_from_other_teachers_is_refused(nmt_run, capsys):
    memoize(nmt_run, *nmt_run.task.teacher_settings(nmt_run.cfg, top_k=3), progress=False)
    student = nmt_run.run_dir / "students" / "student-2-top3"
    student.mkdir(parents=True)
    (student / "teacher.json").write_text(json.dumps({"teachers": ["members/member-0/model.pt sha256:0"],
                                                      "truncation": {"top_k": 3, "epsilon": None, "width": 3}}))
    assert main(["distill-nmt", "--run", str(nmt_run.run_dir), "--top-k", "3"]) == 2
    err = one_line_error(capsys)
    assert f"{student}: was begun from another teacher (its teacher.json's teachers differ from" in err, err
    assert not (student / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------------------------------
# Model folders (runs.py)


class Tied(torch.nn.Module):
    """Two names for one matrix, as a translation model's embedding and output projection."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(5, 3)
        self.projection = torch.nn.Linear(3, 5, bias=False)
        self.projection.weight = self.embedding.weight


def test_a_model_folder_round_trips_with_shared_weights_stored_once_and_the_same_bytes(tmp_path):
    from ensemble_distill.runs import load_weights, read_model_spec, save_model, write_result

    torch.manual_seed(0)
    model = Tied()
    for folder in (tmp_path / "a", tmp_path / "b"):
        save_model(folder, model, {"task": "nmt", "role": "member"})
        write_result(folder, task="nmt", role="member", seed=0, best_epoch=1, epochs=1, best_score=0.0, score="s")
    assert sha256(tmp_path / "a" / "model.safetensors") == sha256(tmp_path / "b" / "model.safetensors")
    assert read_model_spec(tmp_path / "a") == {"format": 1, "task": "nmt", "role": "member"}
    loaded = load_weights(tmp_path / "a", Tied())
    assert torch.equal(loaded.embedding.weight, model.embedding.weight)
    assert loaded.projection.weight is loaded.embedding.weight


def test_a_folder_that_is_not_a_finished_model_is_refused_in_one_line(tmp_path):
    from ensemble_distill import load_model
    from ensemble_distill.runs import save_model

    with pytest.raises(UserError, match="not a model folder"):
        load_model(tmp_path)
    save_model(tmp_path, Tied(), {"task": "nmt"})
    with pytest.raises(UserError, match="an unfinished model"):
        load_model(tmp_path)
    (tmp_path / "result.json").write_text("{}")
    (tmp_path / "model.json").write_text('{"format": 1, "task": "pos"}')
    with pytest.raises(UserError, match="unknown task 'pos'"):
        load_model(tmp_path)


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_load_model_on_a_gpu_torch_does_not_see_is_refused_in_one_line(tmp_path, monkeypatch, device):
    """Before, torch's own AssertionError ("Torch not compiled with CUDA enabled") came from deep inside loading."""
    from ensemble_distill import load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=f"load_model: device is '{device}' but torch sees no CUDA GPU here"):
        load_model(tmp_path, device=device)
