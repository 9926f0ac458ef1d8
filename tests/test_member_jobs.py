"""Members as independent jobs: `train --member I` (and NER `--individual I`) trains one model of a run, so a job
array trains K at once into one run folder; the stages that read the members refuse a run with any missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_runs import one_line_error, sha256, tiny_tagging_config, tiny_translation_config, write_copy_task

from ensemble_distill.cli import main
from ensemble_distill.config import load_config, to_toml
from ensemble_distill.ensemble import train_members
from ensemble_distill.errors import UserError
from ensemble_distill.io_utils import LOCK, run_lock
from ensemble_distill.pipeline import train

WEIGHTS = ("model.safetensors", "best.pt")  # both tasks write these; NMT also model.pt


def config_file(path: Path, cfg) -> Path:
    path.write_text(to_toml(cfg))
    return path


def assert_same_models(run_a: Path, run_b: Path, folders: list[str], names=WEIGHTS) -> None:
    for folder in folders:
        for name in names:
            assert sha256(run_a / folder / name) == sha256(run_b / folder / name), f"{folder}/{name}"


@pytest.fixture(scope="module")
def ner(tiny_encoder, tmp_path_factory):
    """A plain `train` of two members and one individual, and its config file."""
    folder = tmp_path_factory.mktemp("ner-jobs")
    cfg = tiny_tagging_config(folder, tiny_encoder)
    cfg.ensemble.individuals = 1
    run = train_members(cfg, folder / "plain", progress=False)
    return run.run_dir, config_file(folder / "config.toml", cfg)


@pytest.fixture(scope="module")
def nmt(tmp_path_factory):
    folder = write_copy_task(tmp_path_factory.mktemp("nmt-jobs"))
    cfg = tiny_translation_config(folder)
    run = train_members(cfg, folder / "plain", progress=False)
    return run.run_dir, config_file(folder / "config.toml", cfg)


def test_ner_members_trained_as_separate_jobs_equal_a_plain_train_and_evaluate_waits_for_all(ner, tmp_path,
                                                                                            capsys):
    plain, config = ner
    run = tmp_path / "jobs"
    assert main(["train", "--config", str(config), "--out", str(run), "--member", "1"]) == 0
    assert "member-1 trained; not yet: member-0, individual-0" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"{run}: not trained yet: member-0, individual-0 (no result.json)" in err, err
    assert f"train --config {run / 'config.toml'} --out {run} --member 0" in err, err
    assert main(["memoize", "--run", str(run)]) == 2
    assert f"{run}: not trained yet: member-0 (no result.json)" in one_line_error(capsys)  # members only
    assert main(["train", "--config", str(config), "--out", str(run), "--member", "0"]) == 0
    assert main(["evaluate", "--run", str(run)]) == 2
    assert f"{run}: not trained yet: individual-0 (no result.json)" in one_line_error(capsys)
    assert main(["train", "--config", str(config), "--out", str(run), "--individual", "0"]) == 0
    assert "all trained; next: ensemble-distill evaluate" in capsys.readouterr().out
    assert_same_models(plain, run, ["members/member-0", "members/member-1", "individuals/individual-0"])
    assert (run / "run.json").read_bytes() == (plain / "run.json").read_bytes()


def test_translation_members_trained_as_separate_jobs_equal_a_plain_train(nmt, tmp_path, capsys):
    plain, config = nmt
    run = tmp_path / "jobs"
    assert main(["train", "--config", str(config), "--out", str(run), "--member", "0"]) == 0
    for command in (["evaluate", "--run", str(run)], ["memoize", "--run", str(run)], ["distill", "--run", str(run)]):
        assert main(command) == 2
        err = one_line_error(capsys)
        assert f"{run}: not trained yet: member-1 (no result.json)" in err, (command, err)
        assert "--member 1`" in err, err
    assert main(["train", "--config", str(config), "--out", str(run), "--member", "1"]) == 0
    assert (run / "vocab.model").read_bytes() == (plain / "vocab.model").read_bytes()
    assert_same_models(plain, run, ["members/member-0", "members/member-1"], WEIGHTS + ("model.pt",))


def test_two_member_jobs_started_at_once_on_a_fresh_folder_both_succeed(nmt, tmp_path):
    plain, config = nmt
    run = tmp_path / "jobs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, "-m", "ensemble_distill.cli", "train", "--config", str(config),
                              "--out", str(run), "--member", str(i)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    assert not (run / ".lock").exists() and not (run / "members" / "member-0" / ".lock").exists()
    assert (run / "vocab.model").read_bytes() == (plain / "vocab.model").read_bytes()  # trained once, by the first
    assert_same_models(plain, run, ["members/member-0", "members/member-1"], WEIGHTS + ("model.pt",))


@pytest.mark.parametrize(("flag", "index", "shown"), [
    ("--member", "2", "--member 2: outside the config's ensemble.members = 2 (0..1)"),
    ("--individual", "0", "--individual 0: outside the config's ensemble.individuals = 0 (none to train)")])
def test_a_model_outside_the_config_is_refused_in_one_line_before_anything_is_written(nmt, tmp_path, capsys, flag,
                                                                                      index, shown):
    run = tmp_path / "jobs"
    assert main(["train", "--config", str(nmt[1]), "--out", str(run), flag, index]) == 2
    assert shown in one_line_error(capsys)
    assert not run.exists()


def test_member_and_individual_together_and_a_negative_member_are_refused(nmt, tmp_path, capsys):
    config, run = str(nmt[1]), str(tmp_path / "jobs")
    for extra, shown in ((["--member", "0", "--individual", "0"], "not allowed with argument --member"),
                         (["--member", "-1"], "argument --member: ")):
        with pytest.raises(SystemExit) as exited:
            main(["train", "--config", config, "--out", run, *extra])
        assert exited.value.code == 2
        assert shown in one_line_error(capsys)


def test_a_waiting_lock_takes_the_folder_once_its_holder_releases_it(tmp_path):
    folder = tmp_path / "run"
    code = ("import sys, time\nfrom ensemble_distill.io_utils import run_lock\nwith run_lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(1)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match="in use by process"):
        with run_lock(folder):
            pytest.fail("taken while held")
    with run_lock(folder, wait=True):
        assert json.loads((folder / LOCK).read_text())["pid"] == os.getpid()
    holder.wait(timeout=60)
    holder.stdout.close()


def test_train_given_both_a_member_and_an_individual_is_a_value_error(nmt, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        train(load_config(nmt[1]), tmp_path / "run", progress=False, member=0, individual=0)
