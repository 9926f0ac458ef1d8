"""The member cache (distill/member_cache.py): memoizing nested NER ensembles from each member's cached training-split
distributions writes the stores the ensemble pass writes, runs each member once, and never uses a cache file of
other weights or a damaged one."""

import shutil

import numpy as np
import pytest
import torch

from ensemble_distill.distill import member_cache
from ensemble_distill.distill.memoize import memoize
from ensemble_distill.ensemble import ensemble_member_ids, open_run, train_members
from ensemble_distill.io_utils import atomic_torch_save, atomic_write_json, read_json, sha256_file
from ensemble_distill.tasks.ner import NerTask, predict_distributions

from conftest import toy_tagging_config


@pytest.fixture(scope="module")
def run_dir(tiny_encoder, tmp_path_factory):
    """Three tiny CRF members (marginals: the head whose distributions are not a plain softmax)."""
    folder = tmp_path_factory.mktemp("member-cache")
    cfg = toy_tagging_config(folder, tiny_encoder)
    cfg.model.head, cfg.train.max_epochs = "crf", 1
    cfg.ensemble.members, cfg.ensemble.subset_sizes = 3, [2, 3]
    train_members(cfg, folder / "run", progress=False)
    return folder / "run"


@pytest.fixture
def run(run_dir, tmp_path, monkeypatch):
    """A copy of the run (its own member cache), memoized in batches of 16 of its 40 sentences, so that a pass
    crosses batch boundaries."""
    shutil.copytree(run_dir, tmp_path / "run")
    monkeypatch.setattr(NerTask, "batch_sentences", lambda self, cfg: 16)
    return open_run(tmp_path / "run", splits=("train", "dev"), progress=False)


@pytest.fixture
def passes(monkeypatch):
    """The member passes run, by the progress bar's name ("member <i>")."""
    ran = []
    original = member_cache.member_pass

    def counted(task, model, cfg, data, batch_sentences, desc, progress=True):
        ran.append(desc)
        return original(task, model, cfg, data, batch_sentences, desc, progress)

    monkeypatch.setattr(member_cache, "member_pass", counted)
    return ran


def store_files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def expected_mean(run, ids) -> list[np.ndarray]:
    """The ensemble's teacher, independently: the float64 mean of each member's own distributions."""
    split = run.data.splits["train"]
    each = [predict_distributions([run.load(run.member_dir(i))], split, pad_id=run.data.pad_id) for i in ids]
    return [np.mean([member[s].astype(np.float64) for member in each], axis=0) for s in range(len(each[0]))]


def dense(store, s, labels) -> np.ndarray:
    ids, probs, _ = store.sentence(s)
    return torch.zeros(len(ids), labels).scatter_(-1, ids, probs).numpy()


def test_cached_stores_are_the_ensemble_pass_stores_and_run_each_member_once(run, tmp_path, passes, monkeypatch):
    two, three = ensemble_member_ids(run.cfg, 2), ensemble_member_ids(run.cfg, 3)
    cached = {name: memoize(run, members=k, temperature_scaled=ts, store_dir=tmp_path / "cached" / name,
                            progress=False)
              for name, k, ts in (("ensemble-2", 2, False), ("ensemble-3", 3, False), ("ensemble-3-ts", 3, True))}
    new_in_three = [i for i in three if i not in two]
    # ensemble-2 ran its members, ensemble-3 only the one ensemble-2 lacks, the TS store none
    assert passes == [f"member {i}" for i in two + new_in_three]
    assert sorted(p.name for p in (run.run_dir / "teachers" / "members").iterdir()) == [
        f"member-{i}.safetensors" for i in range(3)]

    monkeypatch.setattr(NerTask, "caches_member_probs", False)  # the ensemble pass of every store
    for name, store in cached.items():
        direct = memoize(run, members=int(name.split("-")[1]), temperature_scaled=name.endswith("-ts"),
                         store_dir=tmp_path / "direct" / name, progress=False)
        assert store_files(direct.path) == store_files(store.path), name  # byte-identical: shards and manifest
    assert len(passes) == 3

    labels = len(run.data.labels)
    for ids, store in ((two, cached["ensemble-2"]), (three, cached["ensemble-3"])):
        for s, q in enumerate(expected_mean(run, ids)):  # float16 storage of the float32 mean
            np.testing.assert_allclose(dense(store, s, labels), q, rtol=2 ** -11, atol=3.1e-8)


def test_the_cached_mean_is_the_ensemble_pass_mean_in_float32(run):
    ids = ensemble_member_ids(run.cfg, 3)
    models = [run.load(run.member_dir(i)) for i in ids]
    names = [f"member-{i}" for i in ids]
    teacher = member_cache.cached_teacher_probs(run, ids, models, names, progress=False)
    for start in range(0, 40, 16):
        batch = list(range(start, min(start + 16, 40)))
        for got, want in zip(teacher(batch), run.task.teacher_probs(models, run.cfg, run.data, batch), strict=True):
            assert got.dtype == np.float32 and np.array_equal(got, want)


def test_a_retrained_member_runs_again_and_the_store_holds_the_new_teacher(run, tmp_path, passes):
    ids = ensemble_member_ids(run.cfg, 3)
    memoize(run, members=3, store_dir=tmp_path / "before", progress=False)
    assert len(passes) == 3
    retrained = run.member_dir(ids[1])  # other weights, recorded as the folder's own (a member trained again)
    state = torch.load(retrained / "best.pt", weights_only=True)
    state = {name: value + 0.05 * torch.randn_like(value) if value.is_floating_point() else value
             for name, value in state.items()}
    atomic_torch_save(state, retrained / "best.pt")
    result = read_json(retrained / "result.json", "")
    result["sha256"]["best.pt"] = sha256_file(retrained / "best.pt")
    atomic_write_json(retrained / "result.json", result)

    with pytest.warns(UserWarning, match=f"member-{ids[1]}.safetensors: computed for other weights; running"):
        store = memoize(run, members=3, store_dir=tmp_path / "after", progress=False)
    assert passes[3:] == [f"member {ids[1]}"]
    for s, q in enumerate(expected_mean(run, ids)):
        np.testing.assert_allclose(dense(store, s, len(run.data.labels)), q, rtol=2 ** -11, atol=3.1e-8)
    before = memoize(run, members=3, store_dir=tmp_path / "before-again", progress=False)  # now cached: no pass
    assert len(passes) == 4 and store_files(before.path) == store_files(store.path)


@pytest.mark.parametrize("damage", ["truncated", "byte flipped", "empty"])
def test_a_damaged_cache_file_is_recomputed_not_used(run, tmp_path, passes, damage):
    memoize(run, members=2, store_dir=tmp_path / "first", progress=False)
    member = ensemble_member_ids(run.cfg, 2)[0]
    path = member_cache.cache_path(run.run_dir, member)
    intact = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(intact[: len(intact) - 100])
    elif damage == "byte flipped":  # inside the probabilities, past the header: only the recorded sha256 sees it
        flipped = bytearray(intact)
        flipped[-50] ^= 0x40
        path.write_bytes(bytes(flipped))
    else:
        path.write_bytes(b"")

    with pytest.warns(UserWarning, match=f"member-{member}.safetensors: damaged"):
        store = memoize(run, members=2, store_dir=tmp_path / "second", progress=False)
    assert passes[2:] == [f"member {member}"]
    assert path.read_bytes() == intact  # written again, the same bytes
    assert store_files(store.path) == store_files(tmp_path / "first")
