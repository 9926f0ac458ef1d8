"""Snapshot ensembles (SGDR, paper §6.1, Table 4): cosine warm restarts, one translation trajectory whose cycles'
snapshots are the run's members, resumed after a kill, read by evaluate and memoize like a seed ensemble."""

import json
import math

import pytest
import torch
from test_tasks_nmt import toy_config, write_copy_task

from ensemble_distill.cli import main
from ensemble_distill.config import to_toml, validate
from ensemble_distill.distill.memoize import memoize
from ensemble_distill.ensemble import open_run, train_members
from ensemble_distill.errors import UserError
from ensemble_distill.evaluation import evaluate_run
from ensemble_distill.tasks import load_model
from ensemble_distill.tasks.nmt import TASK as NMT
from ensemble_distill.training import warm_restarts


def test_warm_restarts_follow_the_cosine_and_restart_each_cycle():
    """Cycles of 4 updates from 0.1 down towards 0.02: 0.02 + 0.08 (1 + cos(pi u / 4)) / 2 for u = 0..3, then
    again from 0.1 (cos(pi/4) = 0.70711: 0.088284 and 0.031716)."""
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    scheduler = warm_restarts(optimizer, cycle_updates=4, min_lr=0.02)
    rates = []
    for _ in range(9):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.088284, 0.06, 0.031716, 0.1, 0.088284, 0.06, 0.031716, 0.1], abs=1e-6)
    assert rates[1] == pytest.approx(0.02 + 0.08 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)


def snapshot_config(folder, **train):
    """3 snapshots of cycles of one 4-update round after a warm start of 2 rounds (budget 5 rounds)."""
    cfg = toy_config(folder, **{"updates_per_round": 4, "max_rounds": 5, "patience": 5, "average_last": 1,
                                "cycle_rounds": 1, "cycle_lr": 7e-3, "cycle_min_lr": 1e-4, **train})
    cfg.ensemble.kind, cfg.ensemble.members, cfg.ensemble.subset_sizes = "snapshots", 3, [2, 3]
    cfg.distill.teacher_members = 3
    return validate(cfg)


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    folder = write_copy_task(tmp_path_factory.mktemp("copy"), (("train", 60), ("dev", 8), ("test", 8)))
    cfg = snapshot_config(folder)
    train_members(cfg, folder / "run", progress=False)
    return cfg, folder


def weights(folder):
    return load_model(folder).model.state_dict()


def test_the_members_are_the_snapshots_after_each_cycle_of_one_warm_started_training(snapshot_run):
    cfg, folder = snapshot_run
    run_dir = folder / "run"
    warm = json.loads((run_dir / "snapshots" / "warm-start" / "result.json").read_text())
    assert warm["role"] == "warm-start" and warm["epochs"] == 2  # 5 rounds less 3 cycles of 1 round
    cycles = run_dir / "snapshots" / "cycles"
    log = [json.loads(line) for line in (cycles / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3  # every cycle, no early stopping
    checkpoint = torch.load(cycles / "checkpoint.pt", weights_only=False)
    scheduler = checkpoint["scheduler"]  # the cycles' schedule is SGDR with the configured cycle and rates
    assert (scheduler["T_0"], scheduler["T_mult"], scheduler["eta_min"], scheduler["base_lrs"]) == (4, 1, 1e-4, [7e-3])
    members = [run_dir / "members" / f"member-{i}" for i in range(3)]
    states = [weights(m) for m in members]
    for i, (member, state) in enumerate(zip(members, states)):
        result = json.loads((member / "result.json").read_text())
        assert (result["snapshot"], result["epochs"], result["averaging"]) == (i + 1, 3 + i, "snapshot")
        assert result["best_score"] == log[i]["held_out_score"] and result["cycle_updates"] == 4
        snapshot = torch.load(cycles / f"epoch-{i + 1}.pt", weights_only=True)
        assert all(torch.equal(state[key], snapshot[key]) for key in state)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert any(not torch.equal(states[a][key], states[b][key]) for key in states[a]), (a, b)
    # trained again: nothing to do, the same folders
    before = (members[0] / "model.safetensors").read_bytes()
    train_members(cfg, run_dir, progress=False)
    assert (members[0] / "model.safetensors").read_bytes() == before


def test_a_snapshot_run_killed_after_a_cycle_resumes_to_the_same_members(snapshot_run, tmp_path, monkeypatch):
    from ensemble_distill.tasks import nmt

    cfg, folder = snapshot_run
    run_dir = tmp_path / "run"
    real = nmt.train_snapshots

    def killed_after_cycle_two(cfg, data, run_dir, progress=True):
        def after_cycle(cycle):
            if cycle == 2:
                raise KeyboardInterrupt
        return real(cfg, data, run_dir, progress, after_cycle)

    monkeypatch.setattr(nmt, "train_snapshots", killed_after_cycle_two)
    with pytest.raises(KeyboardInterrupt):
        train_members(cfg, run_dir, progress=False)
    assert not (run_dir / "members").exists()  # written at the end, from the cycles' kept snapshots
    monkeypatch.setattr(nmt, "train_snapshots", real)
    train_members(cfg, run_dir, progress=False)
    scores = [[json.loads(line)["held_out_score"] for line in (run / "snapshots/cycles/log.jsonl").open()]
              for run in (run_dir, folder / "run")]
    assert scores[0] == scores[1] and len(scores[0]) == 3
    for i in range(3):
        name = f"members/member-{i}/model.safetensors"
        assert (run_dir / name).read_bytes() == (folder / "run" / name).read_bytes(), i


def test_evaluate_and_memoize_take_a_snapshot_run(snapshot_run):
    _, folder = snapshot_run
    run = open_run(folder / "run", splits=("train", "dev", "test"), progress=False)
    rows = evaluate_run(run, n_boot=10, progress=False)
    assert [r["system"] for r in rows] == ["members (3, mean ± s.e.)", "members (3, mean ± s.e.) + TS",
                                          "ensemble of 2", "ensemble of 2 + TS", "ensemble of 3",
                                          "ensemble of 3 + TS"]
    store = memoize(run, *NMT.teacher_settings(run.cfg), progress=False)
    assert len(store) == len(run.data.splits["train"].pairs)


def test_a_job_array_member_and_a_budget_without_a_warm_start_are_refused(snapshot_run, tmp_path, capsys):
    cfg, _ = snapshot_run
    config = tmp_path / "snapshots.toml"
    config.write_text(to_toml(cfg))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r"), "--member", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--member 1" in err and "snapshots" in err and "\n" not in err
    with pytest.raises(UserError, match="'train.max_rounds' must exceed ensemble.members x train.cycle_rounds = 3"):
        snapshot_config(tmp_path, max_rounds=3)
    with pytest.raises(UserError, match="'train.cycle_min_lr' must be below cycle_lr"):
        snapshot_config(tmp_path, cycle_min_lr=1e-2)
