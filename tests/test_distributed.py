"""Data parallelism (distributed.py): two CPU processes under torchrun (gloo) train a member of either task to the
loss curve of one process, and only rank 0 writes; accumulation steps and bf16 autocast (training.py)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_worker import toy_store
from test_runs import tiny_tagging_config, tiny_translation_config
from test_tasks_nmt import write_copy_task

from ensemble_distill import distributed
from ensemble_distill.cli import main
from ensemble_distill.config import Training, to_toml
from ensemble_distill.ensemble import train_members
from ensemble_distill.models.translation import collate
from ensemble_distill.tasks.nmt import new_model, nll_loss, train_model
from ensemble_distill.training import train

ROOT = Path(__file__).resolve().parents[1]


def torchrun(watched: Path, commands: list[list[str]], processes: int = 2, kill_after: str | None = None,
             ) -> list[list[str]]:
    """Run CLI commands in `processes` ranks under torchrun; returns, per rank, the files it wrote under
    `watched` (tests/distributed_worker.py). kill_after "TEXT:N": rank 0 is killed after epoch N of the training
    in a folder whose path holds TEXT (the run fails)."""
    spec, log = watched.parent / "commands.json", watched.parent / "written"
    spec.write_text(json.dumps(commands))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", **({"KILL_AFTER": kill_after} if kill_after else {})}
    # Its own process group, killed whole when it overruns: killing torchrun alone (subprocess.run's timeout)
    # left its two workers waiting at a barrier for hours on a loaded machine.
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc-per-node={processes}", str(ROOT / "tests" / "distributed_worker.py"),
                                 str(watched), str(log), str(spec)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None or kill_after:  # overran, or a killed rank's peers may outlive torchrun
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert (launcher.returncode != 0) == bool(kill_after), stderr[-3000:]
    return [json.loads(Path(f"{log}.{r}.json").read_text()) for r in range(processes)]


def no_dropout(encoder: Path, folder: Path) -> Path:
    """A copy of the tiny encoder without dropout: ranks draw their own dropout masks, so only a model without
    dropout follows one process's loss curve exactly."""
    shutil.copytree(encoder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def losses(member: Path) -> list[dict]:
    return [json.loads(line) for line in (member / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_ranks(tiny_encoder, tmp_path_factory):
    """A translation member and a CRF tagger member, each trained by 2 ranks and by one process; the data, the
    frozen-layer cache and the runs all lie under `watched`, the files each rank wrote there are recorded."""
    watched = tmp_path_factory.mktemp("dp") / "watched"
    nmt = tiny_translation_config(write_copy_task(watched / "copy"))
    nmt.model.dropout, nmt.train.batch_tokens, nmt.train.updates_per_round = 0.0, 200, 4
    nmt.ensemble.members, nmt.ensemble.subset_sizes, nmt.distill.teacher_members = 1, [1], 1  # a run to distil
    ner = tiny_tagging_config(watched, no_dropout(tiny_encoder, watched / "encoder"))
    ner.model.head, ner.model.dropout, ner.train.batch_size, ner.train.max_epochs = "crf", 0.0, 5, 2
    configs = {}
    for name, cfg in (("nmt", nmt), ("ner", ner)):
        configs[name] = watched / f"{name}.toml"
        configs[name].write_text(to_toml(cfg))

    def commands(out, names=tuple(configs)):
        return [["train", "--config", str(configs[name]), "--out", str(watched / out / name), "--member", "0"]
                for name in names]

    def distill(out):  # memoizes the teacher store (sharded) and trains the student
        return [["distill", "--run", str(watched / out / "nmt")]]

    def ner_run(out):  # every member in turn, each data-parallel; then the NER teacher store and student
        run = str(watched / out / "ner-all")
        return [["train", "--config", str(configs["ner"]), "--out", run], ["distill", "--run", run]]

    stores = [["toy-store", str(watched / "two-ranks" / "stores")]]
    written = torchrun(watched, stores + commands("two-ranks") + distill("two-ranks") + ner_run("two-ranks")
                       + commands("killed", ["nmt"]), kill_after="killed:1")
    torchrun(watched, commands("killed", ["nmt"]))  # resumed
    for argv in commands("one-process") + distill("one-process") + ner_run("one-process"):
        assert main(argv) == 0
    toy_store(watched / "one-process" / "stores")
    return watched, written


@pytest.mark.parametrize("task", ["nmt", "ner"])
def test_two_ranks_follow_the_loss_curve_of_one_process(two_ranks, task):
    watched, _ = two_ranks
    one, two = (losses(watched / run / task / "members" / "member-0") for run in ("one-process", "two-ranks"))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=1e-6)
        assert b["held_out_score"] == pytest.approx(a["held_out_score"], rel=1e-4, abs=1e-5)
    assert one[0]["train_loss"] != pytest.approx(one[1]["train_loss"], rel=1e-3)  # it learnt: the curve moves


def test_two_ranks_distil_a_translation_student_like_one_process(two_ranks):
    watched, _ = two_ranks
    one, two = (watched / run / "nmt" for run in ("one-process", "two-ranks"))
    # The teachers are the members each run trained (equal within float rounding, not bytes): so are the students.
    assert (two / "teachers" / "ensemble-1-top4" / "manifest.json").is_file()
    student = "students/student-1-top4"
    for a, b in zip(losses(one / student), losses(two / student), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert (two / student / "result.json").is_file()


def test_two_ranks_train_every_member_then_memoize_and_distil_an_ner_student_like_one_process(two_ranks):
    """`train` without --member under torchrun trains the members in turn, each data-parallel; `distill` then
    writes the NER teacher store (every label of every word; one shard here, the shards' split over ranks is the
    toy stores' test) and trains the IID student data-parallel."""
    watched, _ = two_ranks
    one, two = (watched / run / "ner-all" for run in ("one-process", "two-ranks"))
    for member in ("member-0", "member-1"):
        a, b = losses(one / "members" / member), losses(two / "members" / member)
        assert len(a) == len(b) == 2
        for x, y in zip(a, b):
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5, abs=1e-6)
    store = "teachers/ensemble-2"
    shards = sorted(p.name for p in (one / store).glob("shard-*-probs.npy"))
    assert shards and sorted(p.name for p in (two / store).glob("shard-*-probs.npy")) == shards
    for name in shards:  # the teachers are equal within float rounding, so are their distributions
        np.testing.assert_allclose(np.load(two / store / name), np.load(one / store / name), atol=1e-4)
    for a, b in zip(losses(one / "students" / "student-2"), losses(two / "students" / "student-2"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert (two / "students" / "student-2" / "result.json").is_file()


def test_two_ranks_killed_after_an_epoch_resume_to_the_same_weights(two_ranks):
    watched, _ = two_ranks
    killed, whole = (watched / run / "nmt" / "members" / "member-0" for run in ("killed", "two-ranks"))
    assert [r["train_loss"] for r in losses(killed)] == [r["train_loss"] for r in losses(whole)]
    for name in ("best.pt", "model.pt", "model.safetensors"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name


def test_two_ranks_write_a_teacher_store_byte_identical_to_one_process(two_ranks):
    watched, (rank0, rank1) = two_ranks
    one, two = watched / "one-process" / "stores", watched / "two-ranks" / "stores"
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file()) == files
    assert {str(p) for p in files if p.name == "manifest.json"} == {f"{s}/manifest.json" for s in ("top8", "log8",
                                                                                                  "sampled6")}
    for name in files:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    shards = [f"two-ranks/stores/top8/shard-{i:05d}-ids.npy" for i in range(5)]
    assert [s in rank0 for s in shards] == [True, False, True, False, True]  # rounds of two shards, one a rank
    assert [s in rank1 for s in shards] == [False, True, False, True, False]
    assert "two-ranks/stores/top8/manifest.json" in rank0


def test_only_rank_0_writes_files(two_ranks):
    watched, (rank0, rank1) = two_ranks
    assert [path for path in rank1 if "/stores/" not in path and "/teachers/" not in path] == []
    for task in ("nmt", "ner", "ner-all"):
        run = watched / "two-ranks" / task
        finished = {str(p.relative_to(watched)) for p in run.rglob("*") if p.is_file()}
        assert finished <= set(rank0)
        one = watched / "one-process" / task
        # one process also keeps its NER members' distributions (distill/member_cache.py), which ranks never write
        assert {p.relative_to(run) for p in run.rglob("*")} == {
            p.relative_to(one) for p in one.rglob("*") if not p.is_relative_to(one / "teachers" / "members")}
    assert any(path.startswith("cache/frozen-") for path in rank0)  # the frozen-layer cache too


def test_pieces_weight_uneven_and_empty_shares_to_the_batch_mean():
    batch = {"x": torch.arange(3.0)[:, None], "ids": np.arange(3)}
    pieces = distributed.my_pieces(batch, lambda b: len(b["ids"]) * 2, accumulate=4)  # one process: 4 pieces
    assert [p["ids"].tolist() for p, _ in pieces] == [[0], [1], [2], [0]]
    assert [w for _, w in pieces] == [pytest.approx(1 / 3)] * 3 + [0.0]  # the empty 4th: row 0 at weight 0
    assert distributed.my_pieces(batch, len) == [(batch, 1.0)]


def test_accumulation_steps_give_the_update_of_the_whole_batch(tmp_path):
    """Two half batches (accumulate = 2: pieces of different numbers of target tokens) make the update of the whole
    batch: plain SGD, whose update is the gradient itself (Adam's g / sqrt(v) would magnify float rounding where a
    gradient is near 0)."""
    folder = write_copy_task(tmp_path / "copy", sizes=(("train", 60), ("dev", 8), ("test", 8)))
    cfg = tiny_translation_config(folder)
    cfg.model.dropout = 0.0
    data = train_members(cfg, tmp_path / "vocab-run", progress=False).data
    pairs = data.splits["train"].pairs
    batches = [[pairs[i] for i in range(start, start + 15)] for start in (0, 15, 30)]
    weights, curves = {}, {}
    for accumulate in (1, 2):
        model = new_model(cfg, len(data.vocab), seed=3)
        loop = Training(max_epochs=2, patience=2, accumulate=accumulate)
        result = train(model, lambda epoch: [(None, collate(b)) for b in batches], nll_loss(0.1), lambda m: 0.0,
                       loop, tmp_path / f"acc{accumulate}", progress=False,
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                       units=lambda batch: batch[1].n_target_tokens)
        weights[accumulate], curves[accumulate] = model.state_dict(), [r["train_loss"] for r in result.history]
    assert curves[2] == pytest.approx(curves[1], rel=1e-6) and curves[1][1] < curves[1][0]
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[2][name], value, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains_on_a_cpu_with_a_loss_close_to_fp32(tmp_path):
    folder = write_copy_task(tmp_path / "copy", sizes=(("train", 60), ("dev", 8), ("test", 8)))
    cfg = tiny_translation_config(folder)
    cfg.model.dropout, cfg.train.updates_per_round, cfg.train.max_rounds, cfg.train.average_last = 0.0, 3, 1, 1
    data = train_members(cfg, tmp_path / "vocab-run", progress=False).data
    loss = {}
    for precision in ("fp32", "bf16"):
        cfg.train.precision = precision
        model = new_model(cfg, len(data.vocab), seed=3)
        train_model(model, data, cfg, tmp_path / precision, nll_loss(0.1), 3, progress=False)
        loss[precision] = losses(tmp_path / precision)[0]["train_loss"]
    assert loss["bf16"] != loss["fp32"]  # autocast ran: bf16 rounds the activations
    assert loss["bf16"] == pytest.approx(loss["fp32"], rel=2e-2)
