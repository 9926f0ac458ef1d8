"""The student stage (distill/student.py) and memoizing, on NER: memoise → store round trip, a student pulled towards
its teacher, refusals, what the stage hands the training loop."""

import copy
import dataclasses
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch

from ensemble_distill.calibration.temperature import fit_temperature
from ensemble_distill.cli import main
from ensemble_distill.config import DistillConfig, TaggingConfig, load_config, to_toml
from ensemble_distill.distill import student as student_module
from ensemble_distill.distill.losses import distillation_loss
from ensemble_distill.distill.memoize import memoize, store_temperature
from ensemble_distill.ensemble import open_run, train_members
from ensemble_distill.errors import UserError
from ensemble_distill.predictions import load_predictions
from ensemble_distill.tasks import ner as ner_module
from ensemble_distill.tasks.ner import (
    TASK,
    dataset_fingerprint,
    new_tagger,
    predict_distributions,
    tagger_loss,
    window_batch,
    window_targets,
)
from ensemble_distill.teacher_store import TeacherStore, write_store

from conftest import CONLL_SENTENCES, toy_tagging_config

# ----------------------------------------------------------------------------------------------------------------
# A tiny ensemble run, shared by the tests below


@pytest.fixture(scope="module")
def run_dir(tiny_encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    train_members(toy_tagging_config(folder, tiny_encoder), folder / "run", progress=False)
    return folder / "run"


@pytest.fixture(scope="module")
def run(run_dir):
    return open_run(run_dir, splits=("train", "dev", "test"), progress=False)


def members(run, ids):
    return [run.load(run.member_dir(i)) for i in ids]


def test_beta_zero_is_the_plain_nll(run):
    split = run.data.splits["train"]
    model = new_tagger(run.data, run.cfg, seed=3).eval()
    batch = window_batch(split, np.arange(len(split.windows)), run.data.pad_id)
    mask = batch["word_mask"]
    logits = model.emissions(batch["states"], batch["attention_mask"], batch["word_starts"], mask)
    teacher = torch.rand(*mask.shape, len(run.data.labels)).softmax(-1)
    ids = torch.arange(len(run.data.labels)).expand_as(teacher)
    loss = distillation_loss(logits, batch["word_labels"], mask, ids, teacher, torch.zeros(mask.shape), beta=0.0)
    assert loss.item() == pytest.approx(tagger_loss(model, batch)[0].item(), rel=1e-6)


def test_memoize_round_trip_and_rerun(run, tmp_path, capsys, monkeypatch):
    store_dir = tmp_path / "store"
    assert main(["memoize", "--ensemble", str(run.run_dir), "--out", str(store_dir)]) == 0
    assert "ensemble of 2 over 40 sentences" in capsys.readouterr().out
    split = run.data.splits["train"]
    store = TeacherStore.open(store_dir, expect_fingerprint=dataset_fingerprint(split),
                              expect_vocab=run.data.labels)
    assert store.manifest["truncation"]["width"] == len(run.data.labels)  # NER keeps every label
    expected = predict_distributions(members(run, [0, 1]), split, pad_id=run.data.pad_id)
    for s in range(len(store)):
        dense = torch.zeros(len(expected[s]), len(run.data.labels))
        ids, probs, remainder = store.sentence(s)
        dense.scatter_(-1, ids, probs)
        # float16: relative error <= 2**-11 above 6.1e-5, absolute <= 3e-8 below
        np.testing.assert_array_less(np.abs(dense.numpy() - expected[s]), 2 ** -11 * expected[s] + 3.1e-8)
        assert remainder.abs().max() < 1e-6
    for name in store.manifest["teachers"]:  # the member checkpoints' sha256
        path, digest = name.split(" sha256:")
        assert digest == hashlib.sha256((run.run_dir / path).read_bytes()).hexdigest()

    # a rerun reuses the finished store without running the teacher; another ensemble is refused
    manifest = (store_dir / "manifest.json").read_bytes()
    monkeypatch.setattr(type(run.task), "teacher_probs", lambda *a, **k: pytest.fail("teacher rerun"))
    assert memoize(run, store_dir=store_dir, progress=False).manifest["teachers"] == \
        store.manifest["teachers"]
    assert (store_dir / "manifest.json").read_bytes() == manifest
    with pytest.raises(UserError, match="different teachers"):
        memoize(run, store_dir=store_dir, members=1, progress=False)


def test_temperature_scaled_teacher(run, tmp_path):
    store = memoize(run, store_dir=tmp_path / "ts", temperature_scaled=True, progress=False)
    models = members(run, [0, 1])
    dev = run.data.splits["dev"]
    dev_q = np.concatenate(predict_distributions(models, dev, pad_id=run.data.pad_id))
    t = fit_temperature(np.log(dev_q), np.concatenate(dev.corpus.tag_ids))
    assert store_temperature(store) == pytest.approx(t, rel=1e-9) and t != pytest.approx(1.0, abs=1e-3)
    q = predict_distributions(models, run.data.splits["train"], pad_id=run.data.pad_id)[0].astype(np.float64)
    scaled = q ** (1 / t) / (q ** (1 / t)).sum(1, keepdims=True)  # renormalised p^(1/T)
    ids, probs, _ = store.sentence(0)
    dense = torch.zeros(scaled.shape).scatter_(-1, ids, probs).numpy()
    np.testing.assert_allclose(dense, scaled, rtol=2 ** -11, atol=3.1e-8)


def write_student_config(path, run_dir, **distill):
    cfg = DistillConfig()
    cfg.distill.ensemble_run = str(run_dir)
    for key, value in distill.items():
        setattr(cfg.distill, key, value)
    cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size = "adamw", 1e-2, 8
    cfg.train.max_epochs, cfg.train.patience = 3, 3
    path.write_text(to_toml(cfg))
    return path


def kl_to_teacher(model, run, store) -> float:
    """Mean KL(teacher || student) over the training words."""
    student = predict_distributions([model], run.data.splits["train"], pad_id=run.data.pad_id)
    total, words = 0.0, 0
    for s, p in enumerate(student):
        ids, probs, _ = store.sentence(s)
        q = torch.zeros(p.shape).scatter_(-1, ids, probs).double().numpy()
        total += float((q * (np.log(np.maximum(q, 1e-12)) - np.log(p))).sum())
        words += len(p)
    return total / words


def test_student_at_beta_one_moves_towards_its_teacher(run, tmp_path, capsys):
    store_dir = tmp_path / "one"
    store = memoize(run, store_dir=store_dir, members=1, progress=False)
    config = write_student_config(tmp_path / "student.toml", run.run_dir, beta=1.0, teacher_members=1)
    out = tmp_path / "student"
    student_cfg = TASK.student_config(run.cfg, load_config(config, DistillConfig))
    before = kl_to_teacher(new_tagger(run.data, student_cfg, seed=0), run, store)  # the student's initial weights

    assert main(["distill", "--store", str(store_dir), "--config", str(config), "--out", str(out),
                 "--n-boot", "20"]) == 0
    assert "| student (ensemble of 1) |" in capsys.readouterr().out
    model = new_tagger(run.data, student_cfg, seed=0)
    model.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    after = kl_to_teacher(model, run, store)
    assert after < 0.5 * before, (before, after)
    for name in ("config.toml", "run.json", "checkpoint.pt", "log.jsonl", "eval/test/student/predictions.npz",
                 "eval/test/student/metrics.json", "eval/test/results.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run.json").read_text())["student"]["model"]["head"] == "iid"
    # its dev-fitted T, kept in its folder for predict/export --calibrated, is its temperature-scaled evaluation's
    scaled = load_predictions(out / "eval/test/student-ts/predictions.npz")
    assert json.loads((out / "temperature.json").read_text())["temperature"] == scaled.meta["temperature"]


def test_cli_refuses_a_store_for_other_data_or_labels_or_corrupted(run, tmp_path, capsys):
    config = write_student_config(tmp_path / "student.toml", run.run_dir)
    split, labels = run.data.splits["train"], run.data.labels
    uniform = lambda batch: [np.full((3, len(labels)), 1 / len(labels))] * len(batch)  # noqa: E731
    other_data = write_store(tmp_path / "other-data", [[0, 0, 0]] * 2, uniform, vocab=labels,
                             fingerprint="sha256:other", teachers=["t"], top_k=len(labels), progress=False)
    other_labels = write_store(tmp_path / "other-labels", [[0, 0, 0]] * 2, uniform, vocab=labels[::-1],
                               fingerprint=dataset_fingerprint(split), teachers=["t"], top_k=len(labels),
                               progress=False)
    corrupted = tmp_path / "corrupted"
    shutil.copytree(memoize(run, store_dir=tmp_path / "good", progress=False).path, corrupted)
    probs = corrupted / "shard-00000-probs.npy"
    data = bytearray(probs.read_bytes())
    data[-1] ^= 1
    probs.write_bytes(bytes(data))
    for store, message in ((other_data.path, "written for dataset"), (other_labels.path, "another vocabulary"),
                           (corrupted, "fails its checksum")):
        assert main(["distill", "--store", str(store), "--config", str(config), "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_window_targets_offset_by_each_windows_first_word(tmp_path):
    """Word j of a window is word first_word + j of its sentence: a long sentence's second window reads on."""
    labels = ["O", "B-X", "I-X"]
    rows = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 0]] * 0.9 + 0.1 / 3  # word w of the corpus peaks at label w % 3
    sentences = [list(range(5)), list(range(5, 8))]  # lengths 5 and 3
    store = write_store(tmp_path / "s", sentences, lambda batch: [rows[s] for s in batch], vocab=labels,
                        fingerprint="sha256:x", teachers=["t"], top_k=3, progress=False)
    ids, probs, _ = window_targets(store, np.array([0, 0, 1]), np.array([0, 2, 0]), n_words=3)
    dense = torch.zeros(3, 3, 3).scatter_(-1, ids, probs).numpy()
    expected = np.stack([rows[[0, 1, 2]], rows[[2, 3, 4]], rows[[5, 6, 7]]])
    np.testing.assert_allclose(dense, expected, rtol=2 ** -11)


# ----------------------------------------------------------------------------------------------------------------
# What `distill` hands the training loop: the student's split and its loss


class _Captured(Exception):
    """Raised by the stand-in training loop once it has recorded what the student would be trained with."""


@pytest.fixture(scope="module")
def student_call(run, tmp_path_factory):
    """The arguments `distill` passes to the training loop for a student at tau = 2, beta = 0.75 and label
    smoothing 0.2: {model, train_windows, held_out, loss_fn, store}."""
    folder = tmp_path_factory.mktemp("student-call")
    store = memoize(run, store_dir=folder / "store", progress=False)
    config = write_student_config(folder / "student.toml", run.run_dir, temperature=2.0, beta=0.75,
                                  label_smoothing=0.2)
    seen = {}

    def train_tagger(model, data, train_windows, held_out, cfg, run_dir, progress=True, loss_fn=None):
        seen.update(model=model, train_windows=np.asarray(train_windows), held_out=held_out, loss_fn=loss_fn)
        raise _Captured

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ner_module, "train_tagger", train_tagger)
        with pytest.raises(_Captured):
            student_module.distill_from_store(store.path, load_config(config, DistillConfig), folder / "student",
                                              progress=False, run=run)
    return {**seen, "store": store}


@pytest.mark.parametrize("member_data", ["eight_tenths", "nine_tenths"])
def test_student_trains_on_nine_tenths_and_early_stops_on_the_tenth_no_member_early_stopped_on(
        run, student_call, tmp_path, monkeypatch, member_data):
    """eight_tenths: no member trained on the student's validation tenth either; nine_tenths (the paper's
    reference): every member trained on it."""
    from ensemble_distill.training import TrainResult

    split = run.data.splits["train"]
    sentence_of = np.array([w.sentence for w in split.windows])
    n = len(split.corpus.sentences)
    members_saw = []  # per member: (held-out split name, training sentences, early-stopping sentences)

    def member_training(model, data, train_windows, held_out, cfg, run_dir, progress=True, **_):
        members_saw.append((held_out[0], set(sentence_of[train_windows]), set(sentence_of[held_out[1]])))
        return TrainResult(0.0, 0, 0, [])

    monkeypatch.setattr(ner_module, "train_tagger", member_training)
    cfg = copy.deepcopy(run.cfg)
    cfg.ensemble.members, cfg.ensemble.subset_sizes = 9, [3, 6, 9]  # every member the split allows
    cfg.ensemble.member_data = member_data
    train_members(cfg, tmp_path / "nine", progress=False, data=run.data)
    assert len(members_saw) == 9

    held_name, held_windows = student_call["held_out"]
    train_windows = student_call["train_windows"]
    assert held_name == "train"
    # Every window once, on one side: the student trains on 9/10 and early-stops on the other tenth.
    assert sorted([*train_windows.tolist(), *np.asarray(held_windows).tolist()]) == list(range(len(split.windows)))
    student_train, student_held = set(sentence_of[train_windows]), set(sentence_of[held_windows])
    assert not student_train & student_held and student_train | student_held == set(range(n))
    assert len(student_held) == n // 10
    for name, member_train, member_held in members_saw:
        assert name == "train" and not member_train & member_held and not member_held & student_held
        if member_data == "eight_tenths":
            assert not member_train & student_held  # no teacher saw the student's validation data
            assert member_train | member_held == student_train
        else:
            assert member_train | member_held == set(range(n))
    assert set().union(*(held for _, _, held in members_saw)) == student_train  # nine distinct tenths


def test_student_loss_is_the_configured_mix_at_the_configured_temperature(run, student_call):
    """(1 - beta) NLL with label smoothing eps + beta tau^2 KD(teacher q^(1/tau) rescaled to its stored mass ||
    softmax(z / tau)), by hand in float64 from the stored entries and the corpus's gold tags."""
    tau, beta, eps = 2.0, 0.75, 0.2
    split, store, labels = run.data.splits["train"], student_call["store"], len(run.data.labels)
    windows = student_call["train_windows"][:6]
    batch = {**window_batch(split, windows, run.data.pad_id), "windows": windows}
    mask = batch["word_mask"]
    logits = 3 * torch.randn(*mask.shape, labels, generator=torch.Generator().manual_seed(0))

    class Student:  # the loss sees the student only through its emissions
        def emissions(self, *args):
            return logits

    loss, n_words = student_call["loss_fn"](Student(), batch)

    def log_softmax(z):
        return z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)

    per_word = []
    for row, w in enumerate(windows):
        window, n = split.windows[w], int(mask[row].sum())
        words = slice(window.first_word, window.first_word + n)
        ids, probs, _ = store.sentence(window.sentence)
        q = np.zeros((len(ids), labels))
        np.put_along_axis(q, ids.numpy(), probs.numpy().astype(np.float64), axis=1)
        q = q[words]
        gold = split.corpus.tag_ids[window.sentence][words]
        z = logits[row, :n].double().numpy()
        log_p, log_p_tau = log_softmax(z), log_softmax(z / tau)
        nll = -((1 - eps) * log_p[np.arange(n), gold] + eps * log_p.mean(1))
        q_tau = q ** (1 / tau) / (q ** (1 / tau)).sum(1, keepdims=True) * q.sum(1, keepdims=True)
        kd = -(q_tau * log_p_tau).sum(1)
        per_word.append((1 - beta) * nll + beta * tau ** 2 * kd)
    assert n_words == sum(len(p) for p in per_word) == int(mask.sum())
    assert loss.item() == pytest.approx(np.concatenate(per_word).mean(), rel=1e-5)


@pytest.mark.parametrize("text, message", [
    ("[distill]\nbeta = 1.5\n", "'distill.beta' must lie in [0, 1], got 1.5"),
    ('[distill]\nremainder = "keep"\n', "'distill.remainder' must be one of drop, renormalise, bucket"),
    ("[distill]\ntemperature = 0\n", "'distill.temperature' must lie in"),
    ("[train]\nlr = 1e-3\nlrr = 1\n", "unknown key 'train.lrr'"),
])
def test_distill_config_names_the_bad_key(tmp_path, text, message):
    (tmp_path / "d.toml").write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(tmp_path / "d.toml", DistillConfig)
    assert DistillConfig().train.lr == 5e-5 and DistillConfig().distill.beta == 5 / 6  # the paper's defaults


def test_demo_adds_a_student_of_a_crf_ensemble_to_the_table(run_dir, tmp_path):
    from ensemble_distill.config import load_config
    from ensemble_distill.demo import demo

    cfg = load_config(run_dir / "config.toml", TaggingConfig)
    cfg.train.max_epochs, cfg.ensemble.members, cfg.ensemble.subset_sizes = 1, 1, [1]
    (tmp_path / "demo.toml").write_text(to_toml(cfg))
    table = demo(tmp_path / "unused-root", tmp_path / "demo", tmp_path / "demo.toml", heads=("crf",), n_boot=10,
                 progress=False)
    assert "| ensemble of 1 |" in table and "| student (ensemble of 1) |" in table
    assert (tmp_path / "demo/crf-student/eval/test/student/metrics.json").is_file()


def test_a_student_folder_begun_from_another_teacher_is_refused(tmp_path):
    """teacher.json binds a student folder to its store's teachers, truncation and data, for both tasks."""
    labels = ["O", "B-X", "I-X"]
    rows = lambda batch: [np.full((2, 3), 1 / 3)] * len(batch)  # noqa: E731

    def store(name, teachers, top_k=3, fingerprint="sha256:x"):
        return write_store(tmp_path / name, [[0, 0]] * 2, rows, vocab=labels, fingerprint=fingerprint,
                           teachers=teachers, top_k=top_k, progress=False)

    folder = tmp_path / "student"
    folder.mkdir()
    first = store("a", ["member-0 sha256:1"])
    student_module.record_student(folder, first)
    recorded = json.loads((folder / "teacher.json").read_text())
    assert recorded["teachers"] == ["member-0 sha256:1"] and recorded["dataset"] == "sha256:x"
    assert recorded["bytes_per_token"] == first.bytes_per_token()
    student_module.record_student(folder, first)  # the same teacher: resumed
    for other, key in ((store("b", ["member-1 sha256:2"]), "teachers"), (store("c", ["member-0 sha256:1"], 2),
                                                                            "truncation"),
                       (store("d", ["member-0 sha256:1"], fingerprint="sha256:y"), "dataset")):
        with pytest.raises(UserError, match=f"was begun from another teacher \\(its teacher.json's {key} differ"):
            student_module.record_student(folder, other)


def test_a_student_may_tune_more_encoder_layers_than_its_teachers(run, tmp_path, capsys):
    """The members tune the top layer of the 3-layer encoder; a student with [encoder] finetune_layers = 2 trains
    and is evaluated over the frozen states of the lower cut (TaggingData.with_layers), records that cut in its
    model.json, and its test distributions equal those of its folder loaded on its own (load_model runs the
    encoder's bottom itself). A cut the encoder lacks is one line naming it."""
    from ensemble_distill.tasks import load_model

    store_dir = tmp_path / "store"
    memoize(run, store_dir=store_dir, members=2, progress=False)
    config = write_student_config(tmp_path / "student.toml", run.run_dir, teacher_members=2)
    assert "finetune_layers = 0" in config.read_text()  # the default: the members' cut
    config.write_text(config.read_text().replace("finetune_layers = 0", "finetune_layers = 2"))
    out = tmp_path / "student"
    assert main(["distill", "--store", str(store_dir), "--config", str(config), "--out", str(out),
                 "--n-boot", "20"]) == 0
    capsys.readouterr()
    assert json.loads((out / "model.json").read_text())["encoder"]["finetune_layers"] == 2
    alone = load_model(out)
    assert len(alone.tagger.top.layers) == 2
    test_sentences = [s.tokens for s in run.data.splits["test"].corpus.sentences]
    with np.load(out / "eval" / "test" / "student" / "predictions.npz") as saved:
        np.testing.assert_allclose(saved["probs"], np.concatenate(alone.distributions(test_sentences)), atol=1e-5)

    assert main(["evaluate", "--run", str(out)]) == 2  # a student's folder is named as one, not as a bad run
    assert f"{out}: a student's folder, not a run" in capsys.readouterr().err

    config.write_text(config.read_text().replace("finetune_layers = 2", "finetune_layers = 4"))
    assert main(["distill", "--store", str(store_dir), "--config", str(config), "--out", str(tmp_path / "s4"),
                 "--n-boot", "20"]) == 2
    err = capsys.readouterr().err
    assert "distill config: 'encoder.finetune_layers' must be at most 3, the layers of the encoder" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "s4").exists()  # refused before the folder is made


@pytest.mark.parametrize("setting", ["encoder.finetune_layers=4", 'train.device="cuda"'])
def test_a_student_setting_this_machine_cannot_run_is_refused_before_its_folder_is_written(run_dir, setting,
                                                                                            capsys, monkeypatch):
    """distill --name student-x --set encoder.finetune_layers=9 on a 6-layer encoder wrote the student's
    config.toml, run.json and teacher.json before the refusal; so did a CUDA student without a GPU. Now neither
    is created, nor is a teacher store."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert main(["distill", "--run", str(run_dir), "--name", "student-x", "--set", setting]) == 2
    err = capsys.readouterr().err
    expected = ("'encoder.finetune_layers' must be at most 3, the layers of the encoder" if "layers" in setting
                else "'train.device' is 'cuda' but torch sees no CUDA GPU here")
    assert err.startswith(f"ensemble-distill: error: distill config: {expected}") and err.count("\n") == 1, err
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_run_moved_whole_goes_on_distilling_its_students(run_dir, tmp_path, capsys):
    """A student's config records its run's path (distill.ensemble_run): after `mv RUN elsewhere`, distill refused
    the student's own folder over that key, which the user never set (trial 4)."""
    shutil.copytree(run_dir, tmp_path / "here")
    assert main(["distill", "--run", str(tmp_path / "here"), "--name", "student-m", "--n-boot", "20"]) == 0
    shutil.move(tmp_path / "here", tmp_path / "there")
    (tmp_path / "there" / "students" / "student-m" / "result.json").unlink()  # unfinished: it trains on
    capsys.readouterr()
    assert main(["distill", "--run", str(tmp_path / "there"), "--name", "student-m", "--n-boot", "20"]) == 0, \
        capsys.readouterr().err
    recorded = load_config(tmp_path / "there" / "students" / "student-m" / "config.toml", DistillConfig)
    assert recorded.distill.ensemble_run == str(tmp_path / "there")


def test_a_student_without_a_config_file_trains_as_its_members(run_dir):
    """distill --run RUN without --config took StudentTraining's defaults (the paper's BERT rate 5e-5) under the
    members' Adafactor: on WNUT-17 its held-out F1 stayed 0.0 for 3 epochs (trial 4). Now the members' settings,
    as reproduce and the demo train students, with --set on top."""
    from ensemble_distill.config import StudentTraining
    from ensemble_distill.ensemble import read_run_config
    from ensemble_distill.tasks.ner import student_settings

    members = read_run_config(run_dir).train
    assert members.lr != StudentTraining().lr  # the fixture tells the two defaults apart
    settings = student_settings(run_dir, None)
    shared = {f.name for f in dataclasses.fields(StudentTraining)} - {"early_stopping"}
    assert {k: getattr(settings.train, k) for k in shared} == {k: getattr(members, k) for k in shared}
    assert settings.train.early_stopping == "tenth"  # the paper's: the tenth no member early-stopped on
    overridden = student_settings(run_dir, None, overrides=["train.lr=0.002"])
    assert overridden.train.lr == 0.002 and overridden.train.optimizer == members.optimizer


@pytest.mark.parametrize("name", ["bad", "student-3-ts", "student-3/../x", "student-"])
def test_a_students_own_folder_name_is_checked_first(run_dir, name, capsys):
    assert main(["distill", "--run", str(run_dir), "--name", name]) == 2
    err = capsys.readouterr().err
    assert f"--name {name!r}: a student's folder name starts with 'student-'" in err and err.count("\n") == 1
    assert not (run_dir / "students" / name).exists()


def test_a_student_early_stopped_on_dev_trains_on_every_training_sentence(run, tmp_path, capsys):
    """train.early_stopping = "dev": each epoch sees every training word (counted here from the CoNLL file), and
    the best held-out score is seqeval's strict span F1 of the kept weights on dev (worked out here from the saved
    folder); the paper's default sees nine tenths."""
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    from ensemble_distill.tasks import load_model

    store_dir = tmp_path / "store"
    memoize(run, store_dir=store_dir, members=2, progress=False)
    config = write_student_config(tmp_path / "student.toml", run.run_dir, teacher_members=2)
    words = {}
    for mode in ("dev", "tenth"):
        config.write_text(re.sub(r'early_stopping = "\w+"', f'early_stopping = "{mode}"', config.read_text()))
        out = tmp_path / f"student-{mode}"
        assert main(["distill", "--store", str(store_dir), "--config", str(config), "--out", str(out),
                     "--n-boot", "20"]) == 0
        capsys.readouterr()
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        words[mode] = log[0]["tokens"]
    train_words = sum(len(s.split("|")) for s in CONLL_SENTENCES) * 5  # the run's train file: 5 times over
    assert words["dev"] == train_words > words["tenth"]

    model, dev = load_model(tmp_path / "student-dev"), run.data.splits["dev"].corpus
    names = np.asarray(run.data.labels)
    predicted = [names[d.argmax(1)].tolist() for d in model.distributions([s.tokens for s in dev.sentences])]
    gold = [names[ids].tolist() for ids in dev.tag_ids]
    result = json.loads((tmp_path / "student-dev" / "result.json").read_text())
    assert result["best_score"] == pytest.approx(f1_score(gold, predicted, mode="strict", scheme=IOB2))



def test_evaluate_names_a_student_left_unfinished_in_one_warning_line(run_dir):
    import warnings

    unfinished = run_dir / "students" / "student-killed"
    unfinished.mkdir(parents=True)
    try:
        with pytest.warns(UserWarning, match=r"students: not scored, not finished \(no result.json\): student-killed"):
            assert main(["evaluate", "--run", str(run_dir), "--n-boot", "5"]) == 0
    finally:
        unfinished.rmdir()
    # the command line prints a warning as one line of its own, not with the source line that raised it
    assert warnings.formatwarning("a message", UserWarning, "x.py", 1) == "ensemble-distill: warning: a message\n"


def test_a_teacher_larger_than_the_run_is_refused_before_its_data_is_read(run_dir, capsys, monkeypatch):
    def not_read(*args, **kwargs):
        raise AssertionError("the run's data was read before the refusal")

    monkeypatch.setattr(ner_module, "load_tagging_data", not_read)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert main(["distill", "--run", str(run_dir), "--members", "3"]) == 2
    err = capsys.readouterr().err
    assert err == "ensemble-distill: error: ensemble of 3: the run has 2 members\n", err
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
