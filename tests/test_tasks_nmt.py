"""The translation task (tasks/nmt.py) on a toy copy task: training members, resume, ensembles, evaluation,
memoize → distill, and the CLI's refusal of bad parallel files. Tiny models on files written in tmp_path."""

import copy
import json
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ensemble_distill.calibration.report import evaluate
from ensemble_distill.cli import main
from ensemble_distill.config import TranslationConfig, load_config, to_toml
from ensemble_distill.data.vocab import PAD_ID
from ensemble_distill.distill.memoize import memoize
from ensemble_distill.distill.student import distill_run
from ensemble_distill.ensemble import train_members
from ensemble_distill.errors import UserError
from ensemble_distill.evaluation import evaluate_run
from ensemble_distill.models.beam_search import beam_search
from ensemble_distill.models.translation import collate
from ensemble_distill.predictions import load_predictions
from ensemble_distill.tasks.nmt import TASK as NMT
from ensemble_distill.tasks.nmt import (
    mean_of_members,
    new_model,
    nll_loss,
    round_batches,
    teacher_forced,
    token_batches,
    train_model,
    translate,
    validation_nll,
)
from ensemble_distill.teacher_store import to_dense

WORDS = "ant bee cat dog eel fox gnu hen".split()



def write_copy_task(folder, sizes=(("train", 400), ("dev", 40), ("test", 40))):
    """Source and target files of a copy task: 2-5 random words, the target the same words."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(sizes):
        rng = random.Random(seed)
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) for _ in range(n)]
        for side in ("src", "tgt"):
            (folder / f"{split}.{side}").write_text("\n".join(lines) + "\n")
    return folder


def toy_config(folder, **train) -> TranslationConfig:
    cfg = TranslationConfig()
    for split in ("train", "dev", "test"):
        setattr(cfg.data, f"{split}_src", str(folder / f"{split}.src"))
        setattr(cfg.data, f"{split}_tgt", str(folder / f"{split}.tgt"))
    cfg.data.vocab_size = 48
    cfg.model.preset, cfg.model.dropout = "tiny", 0.0
    t = cfg.train
    t.lr, t.warmup_steps, t.batch_tokens, t.updates_per_round, t.max_rounds, t.patience, t.average_last = (
        7e-3, 20, 600, 35, 5, 5, 1)
    for key, value in train.items():
        setattr(t, key, value)
    cfg.ensemble.members, cfg.ensemble.subset_sizes = 2, [2]
    cfg.decode.batch_sentences, cfg.decode.temperature_positions = 16, 100
    cfg.distill.teacher_members, cfg.distill.top_k = 2, 4
    return cfg


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """Two members trained on the copy task through the pipeline's entry point."""
    folder = write_copy_task(tmp_path_factory.mktemp("copy"))
    return train_members(toy_config(folder), folder / "run", progress=False)


def test_token_batches_cover_every_sentence_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(1, 30, 500)
    batches = token_batches(lengths, 100, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(len(b) * lengths[b].max() <= 100 for b in batches)
    # Cut greedily from the length-sorted sentences: each batch is full, as the next-longer sentence would not fit.
    in_order = sorted(batches, key=lambda b: (lengths[b].min(), lengths[b].max(), -len(b)))
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(in_order, in_order[1:]))
    assert all((len(a) + 1) * lengths[b].min() > 100 for a, b in zip(in_order, in_order[1:]))
    again = token_batches(lengths, 100, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = token_batches(lengths, 100, np.random.default_rng(2))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
    assert [len(b) for b in token_batches(np.array([150, 3]), 100, np.random.default_rng(0))] == [1, 1]


def test_rounds_cut_one_stream_of_epochs():
    lengths = np.random.default_rng(0).integers(1, 30, 200)
    epochs = [b for e in (1, 2, 3) for b in token_batches(lengths, 100, np.random.default_rng((7, e)))]
    rounds = [b for r in (1, 2, 3, 4) for b in round_batches(lengths, 100, 25, 7, r)]
    assert len(rounds) == 100 and all(np.array_equal(a, b) for a, b in zip(rounds, epochs))


def test_members_learn_the_copy_task(toy_run):
    test = toy_run.data.splits["test"]
    for i, member in enumerate(toy_run.members(2)):
        log = [json.loads(line) for line in open(toy_run.member_dir(i) / "log.jsonl")]
        assert -log[-1]["held_out_score"] < 0.4 * -log[0]["held_out_score"]
        hypotheses = translate([member], test, toy_run.data.vocab, 4, 0.6, 16)
        exact = sum(h == r for h, r in zip(hypotheses, test.references))
        assert exact >= 0.6 * len(test.references), (i, exact)
    result = json.loads((toy_run.member_dir(0) / "result.json").read_text())
    dev_nll = validation_nll(toy_run.members(1), toy_run.data.splits["dev"], 8)
    assert result["averaged_dev_nll"] == pytest.approx(dev_nll)


def test_ensemble_distributions_are_the_mean_of_members(toy_run):
    members, dev = toy_run.members(2), toy_run.data.splits["dev"]
    batch = collate(dev.pairs[:16])
    real = batch.tgt_out != PAD_ID
    expected = torch.stack([F.softmax(m(batch.src, batch.tgt_in), -1)[real] for m in members]).mean(0)
    member_log_probs, gold = next(teacher_forced(members, dev, 16))
    torch.testing.assert_close(mean_of_members(member_log_probs).exp(), expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(gold, batch.tgt_out[real])


def test_validation_nll_is_the_mean_distributions_nll_per_target_token(toy_run):
    members, dev = toy_run.members(2), toy_run.data.splits["dev"]
    batch = collate(dev.pairs)
    real = batch.tgt_out != PAD_ID
    with torch.no_grad():
        mean = torch.stack([F.softmax(m(batch.src, batch.tgt_in).double(), -1) for m in members]).mean(0)
    expected = -mean.gather(-1, batch.tgt_out[..., None])[..., 0][real].log().mean().item()
    # batches of 7 sentences: the mean is over tokens, not over batches or sentences
    assert validation_nll(members, dev, 7) == pytest.approx(expected, rel=1e-5)


def test_beam_score_is_the_mean_distributions_log_probability_over_the_gnmt_length_penalty(toy_run):
    """score = log p(hypothesis, EOS) under the members' mean distribution / ((5 + n) / 6)^alpha, n counting EOS
    (Wu et al. 2016), computed here by teacher forcing the decoded hypotheses."""
    from ensemble_distill.models.beam_search import beam_search, length_penalty

    assert length_penalty(7, 0.6) == pytest.approx(2 ** 0.6) and length_penalty(1, 2.0) == 1.0
    members, test = toy_run.members(2), toy_run.data.splits["test"]
    sources = [src for src, _ in test.pairs[:12]]
    for alpha in (0.6, 2.0):
        decoded = beam_search(members, collate([(src, []) for src in sources]).src, beam_size=3, alpha=alpha)
        hypotheses = collate(list(zip(sources, decoded.tokens)))
        with torch.no_grad():
            mean = torch.stack([F.softmax(m(hypotheses.src, hypotheses.tgt_in).double(), -1) for m in members]).mean(0)
        token_log_probs = mean.gather(-1, hypotheses.tgt_out[..., None])[..., 0].log()
        log_p = token_log_probs.where(hypotheses.tgt_out != PAD_ID, 0.0).sum(1)
        n = torch.tensor([len(tokens) + 1 for tokens in decoded.tokens], dtype=torch.float64)
        torch.testing.assert_close(decoded.scores.double(), log_p / ((5 + n) / 6) ** alpha, atol=1e-4, rtol=1e-4)


def test_an_ensemble_of_identical_members_translates_like_the_member(toy_run):
    member, test = toy_run.members(1)[0], toy_run.data.splits["test"]
    one = translate([member], test, toy_run.data.vocab, 3, 0.6, 16)
    assert translate([member, copy.deepcopy(member)], test, toy_run.data.vocab, 3, 0.6, 16) == one


def test_evaluation_writes_predictions_that_evaluate_reads(toy_run):
    rows = evaluate_run(toy_run, n_boot=20, progress=False)
    assert [r["system"] for r in rows] == ["members (2, mean ± s.e.)", "members (2, mean ± s.e.) + TS",
                                          "ensemble of 2", "ensemble of 2 + TS"]
    assert [r["name"] for r in rows] == ["members", "members-ts", "ensemble-2", "ensemble-2-ts"]
    out = toy_run.run_dir / "eval" / "test"
    preds = load_predictions(out / "ensemble-2" / "predictions.npz")
    test = toy_run.data.splits["test"]
    assert preds.n_sentences == len(test.pairs) and preds.n_positions == test.n_positions()
    assert preds.references.tolist() == test.references
    metrics = evaluate(preds, n_boot=10)
    assert metrics["bleu"]["value"] == pytest.approx(rows[2]["bleu"]["value"])
    # The stored gold probabilities are the ensemble's teacher-forced ones.
    members = toy_run.members(2)
    first = next(teacher_forced(members, test, 16))
    n = len(first[1])
    expected = mean_of_members(first[0]).exp().gather(1, first[1][:, None])[:, 0]
    np.testing.assert_allclose(preds.gold_prob[:n], expected.numpy(), atol=1e-6)
    scaled = load_predictions(out / "ensemble-2-ts" / "predictions.npz")
    assert scaled.meta["temperature"] == pytest.approx(rows[3]["temperature"]) and scaled.meta["temperature"] != 1.0
    # ... and the scaled ones are softmax(log q / T) of them
    scaled_gold = F.softmax(mean_of_members(first[0]) / scaled.meta["temperature"], -1).gather(1, first[1][:, None])
    np.testing.assert_allclose(scaled.gold_prob[:n], scaled_gold[:, 0].numpy(), atol=1e-6)
    assert (out / "results.md").read_text().count("|") > 20


def test_evaluation_writes_each_systems_hypotheses_as_text_as_translate_gives_them(toy_run, tmp_path, capsys):
    """Beside each system's predictions.npz, hypotheses.txt: its hypotheses, one a line (UTF-8), as the npz holds
    them and as `translate` gives them for the same sources and search settings (raw and -ts alike)."""
    evaluate_run(toy_run, n_boot=5, progress=False)
    out, d = toy_run.run_dir / "eval" / "test", toy_run.cfg.decode
    search = ["--beam", str(d.beam_size), "--length-penalty", str(d.alpha), "--input", toy_run.cfg.data.test_src]
    systems = {"member-0": ["--model", str(toy_run.member_dir(0))], "member-1": ["--model", str(toy_run.member_dir(1))],
               "ensemble-2": ["--run", str(toy_run.run_dir), "--members", "2"]}
    for name, chosen in systems.items():
        capsys.readouterr()
        assert main(["translate", *chosen, *search]) == 0
        translated = capsys.readouterr().out.split("\n")[:-1]
        for folder in (name, name + "-ts"):
            text = (out / folder / "hypotheses.txt").read_bytes().decode("utf-8")
            assert text.endswith("\n") and text.split("\n")[:-1] == translated, folder
            assert load_predictions(out / folder / "predictions.npz").hypotheses.tolist() == translated, folder
    assert len(translated) == len(toy_run.data.splits["test"].pairs)


def test_memoize_then_distill_trains_a_student(toy_run):
    store = memoize(toy_run, *NMT.teacher_settings(toy_run.cfg), progress=False)
    train = toy_run.data.splits["train"]
    assert len(store) == len(train.pairs) and store.num_positions == train.n_positions()
    # The stored entries are the top 4 of the ensemble's teacher-forced distribution.
    batch = collate(train.pairs[:3])
    real = batch.tgt_out != PAD_ID
    with torch.no_grad():
        ensemble = torch.stack([F.softmax(m(batch.src, batch.tgt_in), -1) for m in toy_run.members(2)]).mean(0)
    stored = store.batch([0, 1, 2])
    dense = to_dense(stored.ids, stored.probs, len(toy_run.data.vocab))
    top = ensemble.topk(4, -1)
    torch.testing.assert_close(dense[real].gather(1, top.indices[real]), top.values[real], atol=2e-3, rtol=1e-3)

    student_dir = distill_run(toy_run, progress=False)[1]
    log = [json.loads(line) for line in open(student_dir / "log.jsonl")]
    assert log[-1]["train_loss"] < 0.6 * log[0]["train_loss"]
    assert -log[-1]["held_out_score"] < 0.5 * -log[0]["held_out_score"]
    assert json.loads((student_dir / "teacher.json").read_text())["bytes_per_token"] > 0


class FixedLogits(torch.nn.Module):
    """A stand-in student whose output is a given logits tensor, whatever the batch."""

    def __init__(self, logits):
        super().__init__()
        self.embedding = torch.nn.Embedding(logits.shape[-1], 2)  # where the loss looks for the device
        self.logits = logits

    def forward(self, src, tgt_in):
        assert tgt_in.shape == self.logits.shape[:2]
        return self.logits


@pytest.mark.parametrize("config", [None, "multi30k-small", "multi30k-small-gpu", "multi30k-base"])
def test_translation_student_loss_by_hand(tmp_path, config):
    """The translation student's setting (the defaults, and what the shipped configs resolve to): remainder
    dropped, beta = 0.5, label smoothing 0.1 on the NLL term only, KD at temperature 1:

        mean over target positions of 0.5 [-(0.9 log p(gold) + 0.1 mean_v log p(v))] + 0.5 [-sum_k q_k log p(id_k)]

    with the teacher's top 3 entries q_k as stored (the remaining mass 1/8 ignored), in float64."""
    from pathlib import Path

    from ensemble_distill.tasks.nmt import student_loss
    from ensemble_distill.teacher_store import write_store

    cfg = TranslationConfig() if config is None else load_config(
        Path(__file__).parents[1] / "configs" / f"{config}.toml", TranslationConfig)
    vocab = 9  # 0 pad, 1 unk, 2 bos, 3 eos, 4..8 words
    pairs = [([4, 5], [5, 6]), ([7], [4]), ([8, 4, 5], [6, 7, 8])]  # target positions: 3, 2, 4 (EOS included)
    rng = np.random.default_rng(0)
    base = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625, 0, 0, 0, 0])  # exact in float16; top 3 leave 1/8
    teacher = [np.stack([rng.permutation(base) for _ in range(len(tgt) + 1)]) for _, tgt in pairs]
    store = write_store(tmp_path / "store", pairs, lambda batch: [teacher[pairs.index(p)] for p in batch],
                        vocab=[f"w{i}" for i in range(vocab)], fingerprint="sha256:x", teachers=["t"], top_k=3,
                        progress=False)
    order = [2, 0]  # a batch in another order than the store's
    batch = collate([pairs[i] for i in order])
    logits = 2 * torch.randn(*batch.tgt_out.shape, vocab, generator=torch.Generator().manual_seed(1))
    loss, n_tokens = student_loss(store, cfg.distill)(FixedLogits(logits), (np.array(order), batch))

    per_position = []
    for row, i in enumerate(order):
        gold = [*pairs[i][1], 3]
        z = logits[row, :len(gold)].double().numpy()
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        nll = -(0.9 * log_p[np.arange(len(gold)), gold] + 0.1 * log_p.mean(1))
        top = np.argsort(-teacher[i], axis=1)[:, :3]
        kd = -(np.take_along_axis(teacher[i], top, 1) * np.take_along_axis(log_p, top, 1)).sum(1)
        per_position.append(0.5 * nll + 0.5 * kd)
    assert n_tokens == 4 + 3
    assert loss.item() == pytest.approx(np.concatenate(per_position).mean(), rel=1e-6)


def test_evaluation_tabulates_each_students_truncation(toy_run):
    narrow = distill_run(toy_run, top_k=2, progress=False)[1]
    wide = distill_run(toy_run, top_k=4, progress=False)[1]  # trained above: reused
    rows = evaluate_run(toy_run, n_boot=5, progress=False)
    table = json.loads((toy_run.run_dir / "eval" / "test" / "truncation.json").read_text())
    assert [r["student"] for r in table] == [narrow.name, wide.name]
    assert [r["truncation"] for r in table] == ["V' = 2", "V' = 4"]
    assert table[0]["bytes_per_token"] < table[1]["bytes_per_token"]
    by_name = {r["name"]: r for r in rows}
    assert table[0]["bleu"] == by_name[narrow.name]["bleu"]
    assert f"| {wide.name} | V' = 4 |" in (toy_run.run_dir / "eval" / "test" / "truncation.md").read_text()


def test_distill_samples_writes_a_sampled_store_and_its_student_joins_the_truncation_table(toy_run, capsys):
    """distill.samples = R (the setting, or --samples) memoizes R draws a position from the run's seed instead of
    the top V', and the student and its table row are named for it."""
    from ensemble_distill.ensemble import open_run
    from ensemble_distill.teacher_store import sample_points

    run_dir = toy_run.run_dir
    assert main(["distill", "--run", str(run_dir), "--samples", "3"]) == 0
    capsys.readouterr()
    store = memoize(toy_run, *NMT.teacher_settings(toy_run.cfg, samples=3), progress=False)  # the finished one
    assert store.path == run_dir / "teachers" / "ensemble-2-sampled3"
    assert store.manifest["truncation"] == {"samples": 3, "sampling": "multinomial", "seed": toy_run.cfg.train.seed,
                                            "width": 3}
    # The setting alone (no --samples) names the same store: it is no longer ignored.
    with_setting = open_run(run_dir, ("train", "dev"), False, overrides=["distill.samples=3"])
    again = memoize(with_setting, *NMT.teacher_settings(with_setting.cfg), progress=False)
    assert again.path == store.path
    # Sentence 0's draws: the ensemble's inverse CDF at the points of (seed, sentence 0).
    pair = toy_run.data.splits["train"].pairs[0]
    batch = collate([pair])
    with torch.no_grad():
        q = torch.stack([F.softmax(m(batch.src, batch.tgt_in), -1) for m in toy_run.members(2)]).mean(0)[0]
    points = sample_points(toy_run.cfg.train.seed, 0, len(pair[1]) + 1, 3, "multinomial")
    drawn = np.stack([np.searchsorted(np.cumsum(row.double().numpy()), p) for row, p in zip(q, points)])
    expected = np.stack([np.bincount(d, minlength=q.shape[-1]) for d in drawn]) / 3
    stored = store.batch([0])
    dense = to_dense(stored.ids, stored.probs, len(toy_run.data.vocab))[0, :len(pair[1]) + 1]
    np.testing.assert_allclose(dense.numpy(), expected, atol=1e-6)

    assert main(["evaluate", "--run", str(run_dir), "--n-boot", "5"]) == 0
    table = json.loads((run_dir / "eval" / "test" / "truncation.json").read_text())
    assert table[-1]["student"] == "student-2-sampled3" and table[-1]["truncation"] == "sampled R = 3"
    assert all(row["samples"] == 0 for row in table[:-1])
    assert "| student-2-sampled3 | sampled R = 3 |" in (run_dir / "eval" / "test" / "truncation.md").read_text()


def test_samples_refused_with_a_truncation_or_out_of_range(toy_run, capsys):
    assert main(["memoize", "--run", str(toy_run.run_dir), "--samples", "3", "--top-k", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--top-k: a sampled store (samples = 3) keeps draws" in err[0]
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--run", str(toy_run.run_dir), "--samples", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "argument --samples: must be at least 0" in err[0]


def test_a_run_opens_on_another_device_and_cuda_without_a_gpu_is_a_user_error(toy_run, tmp_path, monkeypatch):
    from ensemble_distill.ensemble import open_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="^--device: 'train.device' is 'cuda' but torch sees no CUDA GPU.*--device cpu"):
        open_run(toy_run.run_dir, splits=("dev",), progress=False, device="cuda")  # before the data is read
    trained_on_a_gpu = tmp_path / "gpu-run"  # a run's own train.device, where no --device is given
    trained_on_a_gpu.mkdir()
    config = (toy_run.run_dir / "config.toml").read_text().replace('device = "cpu"', 'device = "cuda"')
    (trained_on_a_gpu / "config.toml").write_text(config)
    with pytest.raises(UserError, match=f"^{trained_on_a_gpu / 'config.toml'}: 'train.device' is 'cuda'"):
        open_run(trained_on_a_gpu, splits=("dev",), progress=False)
    assert open_run(trained_on_a_gpu, splits=("dev",), progress=False, device="cpu").cfg.train.device == "cpu"
    run = open_run(toy_run.run_dir, splits=("dev",), progress=False, device="cpu")
    assert run.members(1)[0].embedding.weight.device.type == "cpu"


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    folder = write_copy_task(tmp_path / "copy", (("train", 60), ("dev", 8), ("test", 8)))
    cfg = toy_config(folder, updates_per_round=4, max_rounds=3, patience=3, average_last=2)
    cfg.model.dropout = 0.1  # the restored RNG state must reproduce the dropout masks
    data = train_members(toy_config(folder, max_rounds=1), folder / "vocab-run", progress=False).data

    def run(run_dir, kill_after=None):
        def after_round(r):
            if r == kill_after:
                raise KeyboardInterrupt

        model = new_model(cfg, len(data.vocab), seed=3)
        train_model(model, data, cfg, run_dir, nll_loss(0.1), 3, progress=False, after_round=after_round)
        return torch.load(run_dir / "model.pt", weights_only=True), torch.load(run_dir / "checkpoint.pt",
                                                                               weights_only=False)

    straight, straight_checkpoint = run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", kill_after=2)
    resumed, resumed_checkpoint = run(tmp_path / "killed")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
        assert torch.equal(straight_checkpoint["model"][key], resumed_checkpoint["model"][key]), key
    assert straight_checkpoint["scheduler"] == resumed_checkpoint["scheduler"]
    assert sorted(p.name for p in (tmp_path / "killed").glob("epoch-*.pt")) == ["epoch-1.pt", "epoch-2.pt",
                                                                                "epoch-3.pt"]


def test_cli_refuses_bad_parallel_files_in_one_line(tmp_path, capsys):
    folder = write_copy_task(tmp_path / "copy", (("train", 20), ("dev", 4), ("test", 4)))
    (folder / "train.tgt").write_text("ant bee\n" * 19)
    config = tmp_path / "bad.toml"
    config.write_text(to_toml(toy_config(folder)))
    assert main(["train-nmt", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.tgt:20: ends after 19 lines but" in err[0]

    (folder / "train.tgt").write_text("ant bee\n" * 10 + "\n" + "ant bee\n" * 9)
    assert main(["train-nmt", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.tgt:11: empty line" in err[0]


def test_config_ranges_name_the_key(tmp_path):
    folder = write_copy_task(tmp_path / "copy", (("train", 4), ("dev", 2), ("test", 2)))
    cfg = toy_config(folder, batch_tokens=0)
    with pytest.raises(UserError, match="'train.batch_tokens' must be at least 1"):
        train_members(cfg, tmp_path / "run", progress=False)  # a config built in code is validated too
    assert not (tmp_path / "run").exists()
    config = tmp_path / "c.toml"
    config.write_text(to_toml(toy_config(folder)).replace('preset = "tiny"', 'preset = "huge"'))
    with pytest.raises(UserError, match="'model.preset' must be one of base, small, tiny"):
        load_config(config, TranslationConfig)


def test_samples_a_test_pair_and_translate_refused_for_an_ner_run(tmp_path, capsys):
    (tmp_path / "config.toml").write_text('task = "ner"\n')
    for args, message in ((["memoize", "--samples", "4"], "--samples 4: only for translation runs"),
                          (["distill", "--samples", "4"], "--samples 4: only for translation runs"),
                          (["evaluate", "--src", "a", "--ref", "b"], "--src/--ref: a translation test pair"),
                          (["translate"], "an NER run; translate takes a translation run")):
        assert main([args[0], "--run", str(tmp_path), *args[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_translate_reads_standard_input_and_writes_text_or_scored_json_lines(toy_run, tmp_path, capsys, monkeypatch):
    import io
    import sys

    member_dir, test = toy_run.member_dir(0), toy_run.data.splits["test"]
    sources = (toy_run.cfg.data.test_src, toy_run.cfg.data.test_tgt)[0]
    expected = translate(toy_run.members(1), test, toy_run.data.vocab, 3, 0.6, 16)
    assert main(["translate", "--model", str(member_dir), "--input", sources, "--output", str(tmp_path / "out.txt"),
                 "--beam", "3"]) == 0
    assert (tmp_path / "out.txt").read_text().splitlines() == expected

    lines = open(sources).read().splitlines()[:5]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode())))
    capsys.readouterr()
    assert main(["translate", "--model", str(member_dir), "--beam", "3", "--jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in records] == lines and [r["translation"] for r in records] == expected[:5]
    # log_prob and mean_token_confidence by hand: the member's softmax at each chosen subword and EOS.
    vocab, member = toy_run.data.vocab, toy_run.members(1)[0]
    for record in records:
        src, hyp = vocab.encode([record["source"]])[0], vocab.encode([record["translation"]])[0]
        batch = collate([(src, hyp)])
        with torch.no_grad():
            p = F.softmax(member(batch.src, batch.tgt_in)[0].double(), -1)[torch.arange(len(hyp) + 1), batch.tgt_out[0]]
        assert record["tokens"] == len(hyp) + 1
        assert record["log_prob"] == pytest.approx(p.log().sum().item(), abs=1e-4)
        assert record["mean_token_confidence"] == pytest.approx(p.mean().item(), abs=1e-4)


@pytest.mark.parametrize("system", ["member", "ensemble"])
def test_translate_jsonl_gives_each_output_pieces_probability_when_the_search_chose_it(toy_run, tmp_path, capsys,
                                                                                       system):
    """--jsonl's pieces are the output subwords and EOS ("</s>" last), token_confidences the probability the model
    (or the members' mean) gave each after the source and the pieces before it: checked against a teacher-forced
    forward pass of the models on the pieces, and against the search's own score (log_prob over the GNMT length
    penalty). log_prob, mean_token_confidence and tokens are over the same positions; a blank line has []."""
    from ensemble_distill.models.beam_search import length_penalty

    vocab, alpha, beam = toy_run.data.vocab, 0.6, 3
    models = toy_run.members(1 if system == "member" else 2)
    chosen = ["--model", str(toy_run.member_dir(0))] if system == "member" else ["--run", str(toy_run.run_dir),
                                                                                 "--members", "2"]
    # Test sentences and some off the copy task's distribution (longer, repeated, one word), for confidences < 1.
    lines = open(toy_run.cfg.data.test_src).read().splitlines()[:6] + [
        "ant ant ant ant ant ant ant ant bee", "gnu", "", "hen fox hen fox hen fox eel", "cat dog cat dog"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="1 of 11 lines"):
        assert main(["translate", *chosen, "--beam", str(beam), "--length-penalty", str(alpha), "--input",
                     str(tmp_path / "in.txt"), "--jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in records] == lines
    blank = records[lines.index("")]
    assert blank["pieces"] == [] and blank["token_confidences"] == [] and blank["tokens"] == 0
    assert blank["log_prob"] is None and blank["mean_token_confidence"] is None
    lowest = 1.0
    for record in records:
        if not record["source"]:
            continue
        pieces, confidences = record["pieces"], np.array(record["token_confidences"])
        assert len(pieces) == len(confidences) == record["tokens"] and pieces[-1] == "</s>"
        assert ((confidences > 0) & (confidences <= 1)).all()
        ids = [vocab.processor.piece_to_id(piece) for piece in pieces[:-1]]
        assert vocab.decode([ids]) == [record["translation"]]
        # Independently: the models' softmax at each piece, teacher-forced on (source, pieces), averaged.
        batch = collate([(vocab.encode([record["source"]])[0], ids)])
        with torch.no_grad():
            p = torch.stack([F.softmax(m(batch.src, batch.tgt_in)[0].double(), -1) for m in models]).mean(0)
        expected = p[torch.arange(len(pieces)), batch.tgt_out[0]].numpy()
        np.testing.assert_allclose(confidences, expected, rtol=2e-5, atol=1e-6)
        # The same positions throughout: mean and log_prob (4 decimals) of the 6-digit confidences.
        assert record["mean_token_confidence"] == pytest.approx(confidences.mean(), abs=6e-5)
        assert record["log_prob"] == pytest.approx(np.log(confidences).sum(), abs=6e-5 + 1e-6 * len(pieces))
        # ... and they are the search's: its hypothesis, and its score is their log-probability / lp(tokens).
        decoded = beam_search(models, batch.src, beam_size=beam, alpha=alpha)
        assert decoded.tokens == [ids]
        assert decoded.scores[0].item() * length_penalty(len(pieces), alpha) == pytest.approx(record["log_prob"],
                                                                                             abs=2e-4)
        lowest = min(lowest, confidences.min())
    assert lowest < 0.9  # the check has teeth: not every piece was certain


def test_translate_reads_another_encoding_when_told_and_warns_of_an_empty_input(toy_run, tmp_path, capsys):
    member_dir = toy_run.member_dir(0)
    sources = open(toy_run.cfg.data.test_src).read().splitlines()[:3]
    assert main(["translate", "--model", str(member_dir), "--input", toy_run.cfg.data.test_src, "--beam", "2"]) == 0
    expected = capsys.readouterr().out.splitlines()[:3]
    utf16 = tmp_path / "src.utf16"
    utf16.write_text("\n".join(sources) + "\n", encoding="utf-16")
    assert main(["translate", "--model", str(member_dir), "--input", str(utf16), "--beam", "2"]) == 2
    assert "set --encoding to the file's encoding" in capsys.readouterr().err
    assert main(["translate", "--model", str(member_dir), "--input", str(utf16), "--beam", "2", "--encoding",
                 "utf-16"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    (tmp_path / "empty").write_text("")
    with pytest.warns(UserWarning, match="empty: no sentences .* nothing to translate"):
        assert main(["translate", "--model", str(member_dir), "--input", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out == ""


def test_translate_with_a_runs_ensemble_and_a_source_beyond_the_positions(toy_run, tmp_path, capsys):
    test = toy_run.data.splits["test"]
    expected = translate(toy_run.members(2), test, toy_run.data.vocab, 2, 0.6, 16)
    assert main(["translate", "--run", str(toy_run.run_dir), "--members", "2", "--beam", "2",
                 "--input", toy_run.cfg.data.test_src, "--output", str(tmp_path / "out.txt")]) == 0
    assert (tmp_path / "out.txt").read_text().splitlines() == expected
    assert "wrote 40 translations" in capsys.readouterr().out

    (tmp_path / "long.txt").write_text("ant bee\n" + " ".join(["cat"] * 600) + "\n")
    with pytest.warns(UserWarning, match="1 of 2 sentences are longer than the model's 512 positions"):
        assert main(["translate", "--model", str(toy_run.member_dir(0)), "--beam", "1",
                     "--input", str(tmp_path / "long.txt"), "--output", str(tmp_path / "long.out")]) == 0
    assert len((tmp_path / "long.out").read_text().splitlines()) == 2
    for args, message in ((["--model", str(toy_run.member_dir(0)), "--run", str(toy_run.run_dir)], "give --model"),
                          (["--model", str(tmp_path)], str(tmp_path))):
        assert main(["translate", *args, "--input", str(tmp_path / "long.txt")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_evaluate_any_parallel_pair_like_the_configs_test_split(toy_run, tmp_path, capsys):
    """The config's own test files given as --src/--ref: the same table as `evaluate --run` on test."""
    run_dir, d = str(toy_run.run_dir), toy_run.cfg.data
    assert main(["evaluate", "--run", run_dir, "--n-boot", "5"]) == 0
    assert main(["evaluate", "--run", run_dir, "--src", d.test_src, "--ref", d.test_tgt, "--n-boot", "5"]) == 0
    capsys.readouterr()
    on_test = json.loads((toy_run.run_dir / "eval" / "test" / "results.json").read_text())
    on_pair = json.loads((toy_run.run_dir / "eval" / "pair-test" / "results.json").read_text())
    assert on_pair == on_test
    assert load_predictions(toy_run.run_dir / "eval" / "pair-test" / "ensemble-2" / "predictions.npz").meta[
        "split"] == "pair-test"
    for args, message in ((["--src", d.test_src], "--src and --ref go together"),
                          (["--src", d.test_src, "--ref", d.test_tgt, "--split", "dev"], "--split:"),
                          (["--src", d.test_src, "--ref", d.train_tgt], "ends after 40 lines but"),
                          (["--src", d.test_src, "--ref", d.test_tgt, "--name", "test"], "--name test:")):
        assert main(["evaluate", "--run", run_dir, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_translate_gives_a_blank_line_an_empty_translation_without_a_search(toy_run, tmp_path, capsys, monkeypatch):
    """An empty or blank source line is not translated (the model would invent a sentence): an empty output line
    in its place, in --jsonl translation "" with null scores and 0 tokens, one warning counting such lines; the
    other lines translate as they do alone. predict's translations.txt alike."""
    import ensemble_distill.tasks.nmt as nmt

    member_dir, vocab = toy_run.member_dir(0), toy_run.data.vocab
    (tmp_path / "in.txt").write_text("ant bee cat\n\n   \t\ndog eel\n")
    (tmp_path / "full.txt").write_text("ant bee cat\ndog eel\n")
    assert main(["translate", "--model", str(member_dir), "--input", str(tmp_path / "full.txt"),
                 "--output", str(tmp_path / "full.out")]) == 0
    alone = (tmp_path / "full.out").read_text().splitlines()
    searched = []
    monkeypatch.setattr(nmt, "beam_search", lambda models, src, **kw: searched.append(len(src)) or
                        beam_search(models, src, **kw))
    with pytest.warns(UserWarning, match=r"in.txt: 2 of 4 lines are empty or blank; each gets an empty translation"):
        assert main(["translate", "--model", str(member_dir), "--input", str(tmp_path / "in.txt"),
                     "--output", str(tmp_path / "out.txt")]) == 0
    assert (tmp_path / "out.txt").read_text().splitlines() == [alone[0], "", "", alone[1]]
    assert sum(searched) == 2  # only the two sentences reach the beam search
    capsys.readouterr()
    with pytest.warns(UserWarning, match="2 of 4 lines"):
        assert main(["translate", "--model", str(member_dir), "--input", str(tmp_path / "in.txt"), "--jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["translation"] for r in records] == [alone[0], "", "", alone[1]]
    assert [r["source"] for r in records] == ["ant bee cat", "", "   \t", "dog eel"]
    for blank in records[1:3]:
        assert blank["log_prob"] is None and blank["mean_token_confidence"] is None and blank["tokens"] == 0
    for record, text in ((records[0], alone[0]), (records[3], alone[1])):
        assert record["tokens"] == len(vocab.encode([text])[0]) + 1 and record["log_prob"] < 0
    (tmp_path / "blank.txt").write_text("\n  \n")  # nothing to translate at all: two empty lines, no traceback
    with pytest.warns(UserWarning, match="2 of 2 lines"):
        assert main(["translate", "--model", str(member_dir), "--input", str(tmp_path / "blank.txt"), "--jsonl"]) == 0
    assert [json.loads(line)["translation"] for line in capsys.readouterr().out.splitlines()] == ["", ""]
    with pytest.warns(UserWarning, match="2 of 4 lines"):
        assert main(["predict", "--model", str(member_dir), "--input", str(tmp_path / "in.txt"),
                     "--out", str(tmp_path / "predicted")]) == 0
    assert (tmp_path / "predicted" / "translations.txt").read_text().splitlines() == [alone[0], "", "", alone[1]]


def test_translate_refuses_to_write_over_its_input_and_writes_gzip_by_the_name(toy_run, tmp_path, capsys,
                                                                              monkeypatch):
    import gzip

    member_dir = str(toy_run.member_dir(0))
    source = tmp_path / "src.txt"
    source.write_text("ant bee cat\ndog eel\n")
    (tmp_path / "link.txt").symlink_to(source)
    monkeypatch.chdir(tmp_path)
    for output in (str(source), "src.txt", "./sub/../src.txt", str(tmp_path / "link.txt")):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert main(["translate", "--model", member_dir, "--input", str(source), "--output", output]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--output {output}: is the input file" in err[0]
        assert source.read_text() == "ant bee cat\ndog eel\n"
    assert main(["translate", "--model", member_dir, "--input", "src.txt", "--output", "out.txt"]) == 0
    assert main(["translate", "--model", member_dir, "--input", "src.txt", "--output", "out.txt.gz"]) == 0
    assert "wrote 2 translations to out.txt.gz" in capsys.readouterr().out
    assert gzip.decompress((tmp_path / "out.txt.gz").read_bytes()).decode() == (tmp_path / "out.txt").read_text()
    # the gzip output reads back as an input: the member copies the copy task's words
    assert main(["translate", "--model", member_dir, "--input", "out.txt.gz", "--output", "again.txt"]) == 0
    assert len((tmp_path / "again.txt").read_text().splitlines()) == 2
    (tmp_path / "one.txt").write_text("ant\n")
    assert main(["translate", "--model", member_dir, "--input", "one.txt", "--output", "one.out"]) == 0
    assert "wrote 1 translation to one.out" in capsys.readouterr().out


def test_translate_names_members_not_trained_yet_as_evaluate_does(toy_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(toy_run.run_dir, run)
    (run / "members" / "member-1" / "result.json").unlink()
    (run / "members" / "member-1" / "model.safetensors").unlink()  # killed mid-training
    for args in (["--run", str(run)], ["--model", str(run / "members" / "member-1")]):
        assert main(["translate", *args, "--input", toy_run.cfg.data.test_src]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not trained yet: member-1 (no result.json); train each with `ensemble-distill " \
            f"train --config {run / 'config.toml'} --out {run} --member 1`" in err[0]
    assert main(["translate", "--run", str(run), "--members", "1", "--input", toy_run.cfg.data.test_src,
                 "--output", str(tmp_path / "one.txt")]) == 0  # the ensemble of member-0 alone is trained


def test_translate_length_penalty_reaches_the_beam_search(toy_run, tmp_path, capsys, monkeypatch):
    """--length-penalty A: the output of beam search at α = A (default the model's decode.alpha = 0.6)."""
    import ensemble_distill.tasks.nmt as nmt

    member_dir, test = str(toy_run.member_dir(0)), toy_run.data.splits["test"]
    alphas = []
    monkeypatch.setattr(nmt, "beam_search", lambda models, src, **kw: alphas.append(kw["alpha"]) or
                        beam_search(models, src, **kw))
    for given, alpha in ((None, 0.6), ("0", 0.0), ("1.5", 1.5)):
        alphas.clear()
        penalty = ["--length-penalty", given] if given is not None else []
        assert main(["translate", "--model", member_dir, "--beam", "3", *penalty, "--input", toy_run.cfg.data.test_src,
                     "--output", str(tmp_path / "out.txt")]) == 0
        assert set(alphas) == {alpha}
        assert (tmp_path / "out.txt").read_text().splitlines() == translate(toy_run.members(1), test,
                                                                            toy_run.data.vocab, 3, alpha, 16)
    with pytest.raises(SystemExit) as exit_:
        main(["translate", "--model", member_dir, "--length-penalty", "-1"])
    assert exit_.value.code == 2 and "--length-penalty: must be at least 0" in capsys.readouterr().err


def test_version(capsys):
    from ensemble_distill import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"ensemble-distill {__version__}"


def test_a_top_k_above_the_vocabulary_is_refused_and_a_finished_store_is_said_reused(toy_run, capsys):
    """The toy run's vocabulary has 48 pieces (data.vocab_size): V' = 49 would be the whole distribution under
    another name; V' = 48 is the whole distribution. A second memoize of a finished store says it reused it."""
    run_dir = str(toy_run.run_dir)
    assert len(toy_run.data.vocab) == 48
    for args, message in ((["memoize", "--top-k", "49"], "--top-k: V' = 49 is above the run's vocabulary of 48 pieces"),
                          (["distill", "--top-k", "5000"], "--top-k: V' = 5000 is above"),
                          (["memoize", "--set", "distill.top_k=100"], "distill.top_k: V' = 100 is above"),
                          (["sweep", "--top-k", "8", "64"], "--top-k: V' = 64 is above"),
                          (["sweep", "--set", "distill.sweep_top_k=[4, 50]"], "distill.sweep_top_k: V' = 50 is above")):
        assert main([args[0], "--run", run_dir, *args[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "give at most 48" in err[0]
    assert not (toy_run.run_dir / "teachers" / "ensemble-2-top49").exists()
    assert main(["memoize", "--run", run_dir, "--top-k", "48"]) == 0
    store = toy_run.run_dir / "teachers" / "ensemble-2-top48"
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"wrote {store}: ")
    manifest = store / "manifest.json"
    written = manifest.stat().st_mtime_ns
    assert main(["memoize", "--run", run_dir, "--top-k", "48"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        f"reused the finished store {store}: ensemble of 2 over 400")
    assert manifest.stat().st_mtime_ns == written


def test_parallel_data_in_another_encoding_and_too_large_a_vocabulary_name_the_key(tmp_path, capsys):
    """A Latin-1 file: the error names data.encoding, which reads it; too large a data.vocab_size: the error names
    the key and the largest size the text allows, which then trains."""
    import re

    from ensemble_distill.tasks.nmt import load_translation_data

    folder = write_copy_task(tmp_path / "copy", (("train", 20), ("dev", 4), ("test", 4)))
    (folder / "train.src").write_bytes("ant bée\n".encode("latin-1") * 20)
    config = tmp_path / "c.toml"
    config.write_text(to_toml(toy_config(folder)))
    assert main(["train-nmt", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.src:1: not utf-8 text" in err[0] and 'set data.encoding to the file' in err[0]
    cfg = toy_config(folder)
    cfg.data.encoding = "latin-1"
    data = load_translation_data(cfg, tmp_path / "latin", splits=("train",), progress=False)
    assert data.vocab.decode([data.splits["train"].pairs[0][0]]) == ["ant bée"]
    with pytest.raises(UserError, match="'data.encoding' is not a text encoding"):
        load_config(config, TranslationConfig, overrides=['data.encoding="no-such"'])

    cfg.data.vocab_size = 5000
    with pytest.raises(UserError, match=r"^data.vocab_size = 5000: more pieces than the training text allows; set "
                                        r"data.vocab_size to at most (\d+)$") as refused:
        load_translation_data(cfg, tmp_path / "big", splits=("train",), progress=False)
    cfg.data.vocab_size = int(re.search(r"at most (\d+)", str(refused.value)).group(1))
    largest = load_translation_data(cfg, tmp_path / "largest", splits=("train",), progress=False)
    assert len(largest.vocab) == cfg.data.vocab_size


def test_a_rerun_of_a_finished_distill_reuses_the_students_evaluation(toy_run, capsys, monkeypatch):
    import ensemble_distill.distill.student as student

    run_dir = str(toy_run.run_dir)
    assert main(["distill", "--run", run_dir, "--samples", "3", "--n-boot", "5"]) == 0
    def table():
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]

    first = table()
    assert len(first) == 4  # header, rule, raw and + TS
    evaluated = toy_run.run_dir / "students" / "student-2-sampled3" / "eval" / "test" / "evaluated.json"
    assert json.loads(evaluated.read_text())["n_boot"] == 5
    real = student.evaluate_systems
    calls = []
    monkeypatch.setattr(student, "evaluate_systems", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["distill", "--run", run_dir, "--samples", "3", "--n-boot", "5"]) == 0
    assert table() == first and calls == []  # the same table, no second test search
    assert main(["distill", "--run", run_dir, "--samples", "3", "--n-boot", "6"]) == 0  # another n_boot: evaluated
    assert calls == [1] and json.loads(evaluated.read_text())["n_boot"] == 6
    assert main(["distill", "--run", run_dir, "--samples", "3", "--n-boot", "6", "--set", "decode.beam_size=1"]) == 0
    assert calls == [1, 1]  # another decoding: evaluated again


def test_a_missing_data_file_names_its_key(tmp_path):
    """A reader names the path alone; the user set a key (trial 4: "…/[1,: no such file")."""
    from ensemble_distill.tasks.nmt import load_translation_data

    folder = write_copy_task(tmp_path / "copy", (("train", 20), ("dev", 4), ("test", 4)))
    cfg = toy_config(folder)
    cfg.data.dev_tgt = str(tmp_path / "nowhere.en")
    with pytest.raises(UserError, match=rf"^data.dev_tgt: {tmp_path / 'nowhere.en'}: no such file \(set data.dev_tgt"):
        load_translation_data(cfg, tmp_path / "run", splits=("train", "dev"), progress=False)
    cfg.data.dev_tgt = str(tmp_path)
    with pytest.raises(UserError, match=r"^data.dev_tgt: .*: is a folder, not a file"):
        load_translation_data(cfg, tmp_path / "run", splits=("train", "dev"), progress=False)


def test_predict_against_references_reads_them_as_evaluate_does(toy_run, tmp_path, capsys):
    """Scored against references, a blank source line is refused with its file and line, as `evaluate --src/--ref`
    refuses it (it was translated as empty and scored, so the two commands gave different answers for one file);
    without references it stays an empty translation (the test above). Lengths that differ name the short file."""
    member_dir = str(toy_run.member_dir(0))
    (tmp_path / "src.txt").write_text("ant bee cat\n\ndog eel\n")
    (tmp_path / "ref.txt").write_text("ant bee\ncat\ndog\n")
    (tmp_path / "short.txt").write_text("ant bee\n")
    for ref, message in (("ref.txt", f"{tmp_path / 'src.txt'}:2: empty line; each line must hold the sentence "
                                     f"aligned with the same line of {tmp_path / 'ref.txt'}"),
                         ("short.txt", f"{tmp_path / 'short.txt'}:2: ends after 1 lines but {tmp_path / 'src.txt'} "
                                       "has 3")):
        for command in (["predict", "--model", member_dir, "--input", str(tmp_path / "src.txt"), "--ref",
                         str(tmp_path / ref), "--out", str(tmp_path / "out")],
                        ["evaluate", "--run", str(toy_run.run_dir), "--src", str(tmp_path / "src.txt"), "--ref",
                         str(tmp_path / ref)]):
            assert main(command) == 2, command
            assert message in capsys.readouterr().err, command


def test_a_snapshot_runs_student_is_not_held_to_the_members_snapshot_budget(tmp_path):
    """The student is one model, not a trajectory: its own train.max_rounds need not exceed members x cycle_rounds,
    which a snapshot run's members must (config._check_snapshot_budget)."""
    from dataclasses import replace

    from ensemble_distill.config import to_toml

    folder = write_copy_task(tmp_path)
    cfg = toy_config(folder)  # max_rounds 5: a warm start of 3 rounds, then 2 cycles of 1
    cfg = replace(cfg, ensemble=replace(cfg.ensemble, kind="snapshots"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(to_toml(cfg))
    settings, run_overrides, _ = NMT.student_settings(tmp_path / "run", overrides=["train.max_rounds=2"])
    assert run_overrides == [] and settings.train.max_rounds == 2
    assert NMT.student_config(cfg, settings).train.max_rounds == 2
    with pytest.raises(UserError, match=r"'train.max_rounds' must be at least 1"):  # its own values still checked
        NMT.student_settings(tmp_path / "run", overrides=["train.max_rounds=0"])


def test_student_overrides_split_train_settings_from_the_runs():
    from ensemble_distill.tasks.nmt import student_overrides

    assert student_overrides(["train.max_rounds=1", " train.lr = 1e-3", "train.device=cpu", "decode.beam_size=2",
                              "distill.beta=0.3", "model.dim=8"]) == (
        ["train.max_rounds=1", " train.lr = 1e-3"], ["train.device=cpu", "decode.beam_size=2", "distill.beta=0.3",
                                                     "model.dim=8"])


def test_a_translation_student_of_its_own_training_budget(toy_run, capsys):
    """distill --set train.* (not train.device) gives the student its own [train], recorded in its config.toml and
    trained to; the members stay as they were, and a rerun of that student with other settings is refused."""
    run_dir = toy_run.run_dir
    fixed = {p: p.read_bytes() for p in sorted(run_dir.glob("members/**/*")) + [run_dir / "config.toml"]
             if p.is_file()}
    name = ["--run", str(run_dir), "--name", "student-short", "--n-boot", "5"]
    assert main(["distill", *name, "--set", "train.max_rounds=1", "--set", "train.updates_per_round=7"]) == 0
    capsys.readouterr()
    student = run_dir / "students" / "student-short"
    log = [json.loads(line) for line in open(student / "log.jsonl")]
    assert len(log) == 1 and json.loads((student / "result.json").read_text())["epochs"] == 1
    recorded = load_config(student / "config.toml", TranslationConfig)
    assert (recorded.train.max_rounds, recorded.train.updates_per_round) == (1, 7)
    assert recorded.model == toy_run.cfg.model and recorded.train.lr == toy_run.cfg.train.lr  # the run's, else
    assert {p: p.read_bytes() for p in fixed} == fixed

    # The device, decoding and loss stay the run's: the finished student is reused on any device.
    again = ["--set", "train.max_rounds=1", "--set", "train.updates_per_round=7"]
    assert main(["distill", *name, *again, "--device", "cpu", "--set", "train.device=cpu",
                 "--set", "decode.beam_size=2"]) == 0
    assert "student-short" in capsys.readouterr().out
    # Another budget into the same folder is refused, naming the setting; a second student needs its own --name.
    assert main(["distill", *name, "--set", "train.max_rounds=2", "--set", "train.updates_per_round=7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was started with another config: 'train.max_rounds' is 1" in err[0]
    # Nor does it pass for the run's default student: the same folder without its settings is refused.
    assert main(["distill", *name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ensemble-distill: error: {student}: was trained with settings of its own (its config.toml); "
                   "give the same --set train.* again, or another --name for the run's own settings"]
    # Bad values are refused naming the key; the members' settings and NER's --config are still refused.
    for args, message in ((["--set", "train.max_rounds=0"], "'train.max_rounds' must be at least 1, got 0"),
                          (["--set", "train.bogus=1"], "unknown key 'train.bogus'"),
                          (["--set", "model.dim=8"], "--set model.dim=8: a trained run's members fix this setting; "
                                                     "only decode.*, distill.*, train.device can change"),
                          (["--config", "x.toml"], "--config: only for ner runs")):
        assert main(["distill", "--run", str(run_dir), "--name", "student-bad", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not (run_dir / "students" / "student-bad").exists()
    assert {p: p.read_bytes() for p in fixed} == fixed


def test_a_translation_student_of_its_own_settings_trains_where_the_run_is_opened(toy_run, monkeypatch):
    """train.device is not the student's own: --device (or --set train.device) is where the run is opened and the
    student trains, checked before anything is written."""
    from ensemble_distill import pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, overrides, source in (("cuda", [], "--device"),
                                      (None, ["train.device=cuda"], re.escape(str(toy_run.run_dir / "config.toml")))):
        with pytest.raises(UserError, match=f"^{source}: 'train.device' is 'cuda' but torch sees no CUDA GPU"):
            pipeline.distill(toy_run.run_dir, device=device, overrides=["train.max_rounds=1", *overrides],
                             name="student-gpu", progress=False)
    assert not (toy_run.run_dir / "students" / "student-gpu").exists()
    settings, run_overrides, device = NMT.student_settings(toy_run.run_dir, overrides=["train.max_rounds=1",
                                                                                       "train.device=cuda"])
    assert run_overrides == ["train.device=cuda"] and device is None
    student = NMT.student_config(toy_run.cfg, settings)
    assert (student.train.max_rounds, student.train.device) == (1, toy_run.cfg.train.device)
    assert NMT.student_config(toy_run.cfg, None) is toy_run.cfg
