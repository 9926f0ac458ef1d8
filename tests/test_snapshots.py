"""Snapshot ensembles (SGDR, paper §6.1, Table 4): cosine warm restarts, one trajectory (translation, and NER's
attempt) whose cycles' snapshots are the run's members, resumed after a kill, read by evaluate and memoize like a
seed ensemble."""

import json
import math

import pytest
import torch
from test_tasks_nmt import toy_config, write_copy_task

from ensemble_distill.cli import main
from ensemble_distill.config import to_toml, validate
from ensemble_distill.distill.memoize import memoize
from ensemble_distill.ensemble import member_sentences, open_run, train_members
from ensemble_distill.errors import UserError
from ensemble_distill.evaluation import evaluate_run
from ensemble_distill.tasks import load_model
from ensemble_distill.tasks.nmt import TASK as NMT
from ensemble_distill.training import warm_restarts

from conftest import CONLL_SENTENCES, write_conll


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


# ----------------------------------------------------------------------------------------------------------------
# NER: snapshots of member 0's training (tasks/ner.py train_snapshots), on the tiny encoder and CoNLL fixture


def ner_snapshot_config(folder, tiny_encoder, **train):
    """3 snapshots, cycles of one epoch, after a warm start of 4 - 3 x 1 = 1 epoch. Member 0 trains on nine
    tenths of the 40 fixture sentences (36, one window each): 5 batches of at most 8, so a cycle is 5 updates."""
    from test_tasks_ner import make_config

    files = (write_conll(folder / "train.txt", CONLL_SENTENCES, repeat=5),
             write_conll(folder / "dev.txt", CONLL_SENTENCES[:4]),
             write_conll(folder / "test.txt", CONLL_SENTENCES[4:]))
    cfg = make_config(tiny_encoder, files, folder, "iid", **{"max_epochs": 4, "cycle_epochs": 1, "cycle_lr": 8e-3,
                                                            "cycle_min_lr": 1e-3, **train})
    cfg.ensemble.kind, cfg.ensemble.members, cfg.ensemble.subset_sizes = "snapshots", 3, [2, 3]
    return validate(cfg)


def spy_on_cycles(monkeypatch, rates, kill_at_update=None):
    """Record the rate of every update of the cycles (an optimiser step pre-hook); with kill_at_update = n, stop the
    process (KeyboardInterrupt) in the n-th update's loss of this call."""
    from ensemble_distill import training
    from ensemble_distill.tasks import ner

    real = training.train_cycles

    def spied(model, batches, loss_fn, score_fn, loop, run_dir, cycles, cycle_updates, min_lr, optimizer, *rest):
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"]))
        calls = []

        def loss(m, batch):
            calls.append(1)
            if len(calls) == kill_at_update:
                raise KeyboardInterrupt
            return loss_fn(m, batch)

        return real(model, batches, loss, score_fn, loop, run_dir, cycles, cycle_updates, min_lr, optimizer, *rest)

    monkeypatch.setattr(ner, "train_cycles", spied)


@pytest.fixture(scope="module")
def ner_snapshot_run(tmp_path_factory, tiny_encoder):
    folder = tmp_path_factory.mktemp("ner-snapshots")
    cfg, rates = ner_snapshot_config(folder, tiny_encoder), []
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy_on_cycles(monkeypatch, rates)
        train_members(cfg, folder / "run", progress=False)
    return cfg, folder / "run", rates


def test_ner_cycles_follow_cosine_annealing_with_warm_restarts(ner_snapshot_run):
    """Cycles of 5 updates from 8e-3 down towards 1e-3, by hand: 1e-3 + 7e-3 (1 + cos(pi u / 5)) / 2 at update u
    of a cycle (cos(pi/5) = 0.809017, cos(2 pi/5) = 0.309017), restarting at 8e-3 for each of the 3 cycles."""
    _, _, rates = ner_snapshot_run
    cycle = [8e-3, 1e-3 + 3.5e-3 * 1.809017, 1e-3 + 3.5e-3 * 1.309017, 1e-3 + 3.5e-3 * 0.690983,
             1e-3 + 3.5e-3 * 0.190983]
    assert rates == pytest.approx(cycle * 3, rel=1e-5)


def test_ner_members_are_the_snapshots_of_member_0s_warm_started_training(ner_snapshot_run):
    from ensemble_distill.tasks.ner import SWA_WEIGHTS, member_plans

    cfg, run_dir, _ = ner_snapshot_run
    warm = json.loads((run_dir / "snapshots" / "warm-start" / "result.json").read_text())
    assert (warm["role"], warm["epochs"]) == ("warm-start", 1)  # 4 epochs less 3 cycles of 1 epoch
    cycles = run_dir / "snapshots" / "cycles"
    log = [json.loads(line) for line in (cycles / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and [r["tokens"] for r in log] == [log[0]["tokens"]] * 3  # every cycle: one epoch
    train_ids, _ = member_sentences(40, 0, cfg.ensemble.split_seed)  # member 0's nine tenths: its words a cycle
    assert log[0]["tokens"] == sum(len(CONLL_SENTENCES[j % 8].split("|")) for j in train_ids)
    members = [run_dir / "members" / f"member-{i}" for i in range(3)]
    states = [load_model(m).tagger.state_dict() for m in members]
    plan = member_plans(cfg, open_run(run_dir, splits=("train",), progress=False).data)[0]
    for i, (member, state) in enumerate(zip(members, states)):
        result = json.loads((member / "result.json").read_text())
        assert (result["snapshot"], result["epochs"], result["averaging"]) == (i + 1, 2 + i, "snapshot")
        assert (result["seed"], result["cycle_updates"], result["weights"]) == (plan.seed, 5, "best.pt")
        assert result["best_score"] == log[i]["held_out_score"] and not (member / SWA_WEIGHTS).exists()
        snapshot = torch.load(cycles / f"epoch-{i + 1}.pt", weights_only=True)
        assert all(torch.equal(state[key], snapshot[key]) for key in state)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert any(not torch.equal(states[a][key], states[b][key]) for key in states[a]), (a, b)
    # the run's members as evaluate sees them: a snapshot ensemble of 2 and 3
    run = open_run(run_dir, splits=("train", "dev", "test"), progress=False)
    rows = evaluate_run(run, n_boot=5, progress=False)
    assert [r["system"] for r in rows][::2] == ["members (3, mean ± s.e.)", "ensemble of 2", "ensemble of 3"]
    before = (members[0] / "model.safetensors").read_bytes()
    train_members(cfg, run_dir, progress=False)  # trained again: nothing to do
    assert (members[0] / "model.safetensors").read_bytes() == before


def test_an_ner_snapshot_run_killed_mid_cycle_resumes_to_the_same_members(ner_snapshot_run, tmp_path, monkeypatch,
                                                                         tiny_encoder):
    _, straight, _ = ner_snapshot_run
    cfg = ner_snapshot_config(tmp_path, tiny_encoder)
    rates = []
    spy_on_cycles(monkeypatch, rates, kill_at_update=8)  # cycle 2's third update
    with pytest.raises(KeyboardInterrupt):
        train_members(cfg, tmp_path / "run", progress=False)
    cycles = tmp_path / "run" / "snapshots" / "cycles"
    assert sorted(p.name for p in cycles.glob("epoch-*.pt")) == ["epoch-1.pt"]
    assert not (tmp_path / "run" / "members").exists()
    rates.clear()
    spy_on_cycles(monkeypatch, rates)
    train_members(cfg, tmp_path / "run", progress=False)
    assert len(rates) == 10 and rates[0] == pytest.approx(8e-3)  # cycles 2 and 3 again, from the restart
    for i in range(3):
        name = f"members/member-{i}/model.safetensors"
        assert (tmp_path / "run" / name).read_bytes() == (straight / name).read_bytes(), i


def test_an_ner_snapshot_budget_without_a_warm_start_and_a_member_job_are_refused(tiny_encoder, tmp_path, capsys):
    cfg = ner_snapshot_config(tmp_path, tiny_encoder)
    config = tmp_path / "snapshots.toml"
    config.write_text(to_toml(cfg))
    out = str(tmp_path / "r")
    assert main(["train", "--config", str(config), "--out", out, "--set", "train.max_epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'train.max_epochs' must exceed ensemble.members x train.cycle_epochs = 3" in err and "\n" not in err
    assert main(["train", "--config", str(config), "--out", out, "--set", "train.cycle_epochs=2"]) == 2
    assert "'train.max_epochs' must exceed ensemble.members x train.cycle_epochs = 6" in capsys.readouterr().err
    # a linear schedule, sized by max_epochs, would decay to 0 at the end of the shortened warm start
    assert main(["train", "--config", str(config), "--out", out, "--set", 'train.schedule="linear"']) == 2
    err = capsys.readouterr().err.strip()
    assert "'train.schedule' must be \"constant\" with ensemble.kind = \"snapshots\"" in err and "\n" not in err
    assert main(["train", "--config", str(config), "--out", out, "--member", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--member 0" in err and "snapshots" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_conll_snapshots_toml_is_conll_iid_toml_but_for_the_snapshot_settings():
    """reproduce compares its snapshot ensemble with Table 1's English IID run (configs/conll-iid.toml at the same
    scale), so only the budget and the snapshot settings may differ."""
    from pathlib import Path

    from ensemble_distill.config import load_config, to_dict

    configs = Path(__file__).resolve().parents[1] / "configs"
    snapshots, seeds = (to_dict(load_config(configs / name)) for name in ("conll-snapshots.toml", "conll-iid.toml"))
    differ = {f"{section}.{key}" for section, values in snapshots.items() if isinstance(values, dict)
              for key, value in values.items() if seeds[section][key] != value}
    assert differ <= {"train.max_epochs", "train.cycle_epochs", "train.cycle_lr", "train.cycle_min_lr", "ensemble.kind"}
    assert (snapshots["ensemble"]["kind"], snapshots["train"]["max_epochs"], snapshots["ensemble"]["members"]) == (
        "snapshots", 5, 3)
