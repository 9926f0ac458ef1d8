"""The sampled teacher store: draws from the teacher kept as distinct ids with counts, an unbiased estimate of the
full-distribution KD (teacher_store module docstring)."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_teacher_store import (
    VOCAB,
    Teacher,
    make_sentences,
    replace_shard_array,
    reseal,
    store_files,
    true_distributions,
    write,
)

from ensemble_distill.config import TranslationDistillation, setting_problem
from ensemble_distill.distill.losses import distillation_loss, kd_loss
from ensemble_distill.errors import UserError
from ensemble_distill.teacher_store import TeacherStore, draw, fingerprint_dataset, sample_points, write_store

R = 12


def drawn_by_definition(dist, points):
    """Per row, the smallest id whose cumulative mass reaches point * total, found by a scan."""
    rows = []
    for row, row_points in zip(dist.astype(np.float64), points):
        cumulative = np.cumsum(row)
        rows.append([next(i for i, c in enumerate(cumulative) if c >= x * cumulative[-1]) for x in row_points])
    return np.array(rows, dtype=np.int64).reshape(points.shape)


def documented_points(seed, sentence, positions, samples):
    """The multinomial points as the docstring gives them: 1 - numpy's default generator's uniforms, sorted."""
    return np.sort(1.0 - np.random.default_rng([seed, sentence]).random((positions, samples)), axis=-1)


def test_sample_points_are_seeded_per_sentence_and_placed_as_documented():
    points = sample_points(7, 3, 5, R, "multinomial")
    np.testing.assert_array_equal(points, documented_points(7, 3, 5, R))
    assert points.shape == (5, R) and (points > 0).all() and (points <= 1).all()
    assert not np.array_equal(points, sample_points(7, 4, 5, R, "multinomial"))
    assert not np.array_equal(points, sample_points(8, 3, 5, R, "multinomial"))
    systematic = sample_points(7, 3, 5, R, "systematic")
    offset = 1.0 - np.random.default_rng([7, 3]).random((5, 1))  # one per position, shared by its R strata
    np.testing.assert_allclose(systematic, (np.arange(R) + offset) / R, rtol=1e-15)
    with pytest.raises(ValueError, match="sampling must be one of multinomial, systematic, got 'stratified'"):
        sample_points(7, 3, 5, R, "stratified")


def test_draw_is_the_inverse_cdf_and_never_draws_an_id_of_mass_zero():
    dist = np.array([[0.0, 0.5, 0.0, 0.25, 0.25, 0.0],  # zeros first, inside and last
                     [0.1, 0.2, 0.3, 0.4, 0.0, 0.0]], dtype=np.float32)
    points = np.array([[1e-300, 0.5, 0.5 + 1e-12, 0.75, 1.0],
                       [0.05, 0.1, 0.3, 0.31, 1.0]])
    ids, draws, counts = draw(torch.from_numpy(dist), torch.from_numpy(points))
    expected = drawn_by_definition(dist, points)  # [[1, 1, 3, 3, 4], [0, 0, 1, 2, 3]]
    distinct = [np.unique(row, return_counts=True) for row in expected]
    np.testing.assert_array_equal(ids.numpy(), np.concatenate([u for u, _ in distinct]))
    np.testing.assert_array_equal(draws.numpy(), np.concatenate([c for _, c in distinct]))
    np.testing.assert_array_equal(counts.numpy(), [len(u) for u, _ in distinct])
    assert (dist.reshape(-1)[np.repeat([0, 6], counts.numpy()) + ids.numpy()] > 0).all()


def test_draw_at_evenly_spaced_points_reproduces_the_distribution():
    """A point uniform in (0, 1] draws id v with probability q_v: the frequencies at M evenly spaced points are
    q within 1/M, so each draw, and the draws/R that a store reads back, is unbiased."""
    q = torch.softmax(torch.randn(3, 20, generator=torch.Generator().manual_seed(0)) * 2, -1)
    m = 100_000
    points = torch.arange(1, m + 1, dtype=torch.float64).expand(3, m) / m
    ids, draws, counts = draw(q, points)
    frequency = torch.zeros(3, 20, dtype=torch.float64)
    frequency[torch.repeat_interleave(torch.arange(3), counts), ids] = draws.double() / m
    assert (frequency - q).abs().max() <= 1 / m + 1e-6


def sampled(path, sentences, teacher=None, **options):
    return write(path, sentences, teacher, **{"samples": R, "seed": 5, **options})


def test_sampled_store_keeps_the_documented_draws_and_reads_back_draws_over_r(tmp_path):
    sentences = make_sentences()
    store = sampled(tmp_path, sentences)
    assert store.sampled and not store.adaptive and store.manifest["version"] == 4
    assert store.manifest["truncation"] == {"samples": R, "sampling": "multinomial", "seed": 5, "width": R}
    batch = store.batch(np.arange(len(sentences)))
    for i, dist in enumerate(true_distributions(sentences)):
        drawn = drawn_by_definition(dist, documented_points(5, i, len(dist), R))
        n = len(dist)
        assert (batch.remainder[i] == 0).all() and (batch.probs[i, n:] == 0).all() and (batch.ids[i, n:] == 0).all()
        for t in range(n):
            expected_ids, expected_draws = np.unique(drawn[t], return_counts=True)
            k = len(expected_ids)
            np.testing.assert_array_equal(batch.ids[i, t, :k].numpy(), expected_ids)
            np.testing.assert_array_equal(batch.probs[i, t, :k].numpy(), (expected_draws / R).astype(np.float32))
            assert (batch.probs[i, t, k:] == 0).all() and (batch.ids[i, t, k:] == 0).all()


def test_sampled_store_is_a_function_of_the_seed_alone(tmp_path):
    sentences = make_sentences()
    reference = sampled(tmp_path / "a", sentences).batch(np.arange(len(sentences)))
    rebatched = sampled(tmp_path / "b", sentences, shard_sentences=7, batch_sentences=3)
    other_seed = sampled(tmp_path / "c", sentences, seed=6).batch(np.arange(len(sentences)))
    for name in ("ids", "probs", "lengths"):
        assert torch.equal(getattr(rebatched.batch(np.arange(len(sentences))), name), getattr(reference, name))
    assert not torch.equal(other_seed.probs, reference.probs)


@pytest.mark.parametrize("sampling", ["multinomial", "systematic"])
def test_sampled_store_resumes_byte_identically(tmp_path, sampling):
    sentences = make_sentences()
    sampled(tmp_path / "whole", sentences, sampling=sampling)
    with pytest.raises(KeyboardInterrupt):
        sampled(tmp_path / "resumed", sentences, Teacher(fail_after_calls=7), sampling=sampling)
    rerun = Teacher()
    sampled(tmp_path / "resumed", sentences, rerun, sampling=sampling)
    assert rerun.sentences_seen == len(sentences) - 10  # two shards of 5 were finished
    assert store_files(tmp_path / "resumed") == store_files(tmp_path / "whole")
    with pytest.raises(UserError, match="manifest.json: this store was written with different truncation "
                                        r"\(truncation.seed: 5 in the store, 6 now\)"):
        sampled(tmp_path / "resumed", sentences, seed=6, sampling=sampling)


def test_sampled_layout_costs_its_documented_bytes(tmp_path):
    """Per position a one-byte count; per distinct id 13 bits of id and 4 of draws - 1 (R = 12), each stream
    ending in 4 zero bytes; 4 bytes a sentence length; npy headers of 128 bytes a file."""
    vocab_size, sentences = 8192, [np.arange(n) for n in (20, 30, 25)]
    positions = sum(len(s) for s in sentences)
    dist = torch.softmax(torch.randn(positions, vocab_size, generator=torch.Generator().manual_seed(0)) * 3, -1)
    store = write_store(tmp_path, sentences, lambda batch: dist, vocab=[str(i) for i in range(vocab_size)],
                        teachers=[], fingerprint=fingerprint_dataset(sentences), samples=R, progress=False)
    entries = store.manifest["num_entries"]
    data_bytes = positions + (-(-entries * 13 // 8) + 4) + (-(-entries * 4 // 8) + 4) + 4 * len(sentences)
    assert store.manifest["dtypes"] == {"lengths": "int32", "counts": "uint8", "ids": "packed13", "draws": "packed4"}
    assert store.bytes_per_token() == (data_bytes + 4 * 128) / positions
    assert positions <= entries <= R * positions


@pytest.mark.parametrize("sampling", ["multinomial", "systematic"])
def test_the_kd_estimate_and_its_gradient_are_unbiased(tmp_path, sampling):
    """N positions of one teacher distribution q, each with its own draws, through write_store, batch and
    kd_loss: the KD loss (the mean of the positions' estimates) is the full cross-entropy -sum q log p, and its
    gradient w.r.t. the student's logits (shared by the positions) the full cross-entropy's, p - q, within 4.5
    standard errors. One position's estimate has sd sd_q(log p) / sqrt(R) under multinomial draws; draws_v / R
    has sd sqrt(q_v (1 - q_v) / R), and under systematic draws sqrt(f (1 - f)) / R, f = frac(R q_v)."""
    v, n = 9, 3000
    q = torch.softmax(torch.randn(v, generator=torch.Generator().manual_seed(1)) * 1.5, -1)
    logits = torch.randn(v, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tokens = [np.zeros(n, np.int64)]
    store = write_store(tmp_path, tokens, lambda batch: q.expand(n, v), vocab=[str(i) for i in range(v)],
                        teachers=[], fingerprint=fingerprint_dataset(tokens), samples=R, seed=0, sampling=sampling,
                        progress=False)
    batch = store.batch([0])
    z = logits.clone().requires_grad_(True)
    kd = kd_loss(F.log_softmax(z, -1).expand(1, n, v), batch.ids, batch.probs, batch.remainder,
                 torch.ones(1, n, dtype=torch.bool))
    (grad,) = torch.autograd.grad(kd, z)

    q = q.double()
    full = -(q * F.log_softmax(logits, -1)).sum()
    (full_grad,) = torch.autograd.grad(-(q * F.log_softmax(z, -1)).sum(), z)
    torch.testing.assert_close(full_grad, torch.softmax(logits, -1) - q)  # p - q, as the docstring says
    sd_estimate = torch.sqrt((q * (F.log_softmax(logits, -1) + full) ** 2).sum() / R)
    if sampling == "multinomial":
        sd_draws = torch.sqrt(q * (1 - q) / R)
    else:
        fraction = R * q - torch.floor(R * q)
        sd_draws = torch.sqrt(fraction * (1 - fraction)) / R
    assert abs(kd.detach() - full) <= 4.5 * sd_estimate / n ** 0.5
    assert ((grad - full_grad).abs() <= 4.5 * sd_draws / n ** 0.5 + 1e-12).all()


def test_distillation_loss_on_a_sampled_batch_is_nll_plus_the_mean_log_prob_of_the_draws(tmp_path):
    sentences = [s for s in make_sentences() if len(s)][:6]
    store = sampled(tmp_path, sentences)
    batch = store.batch(np.arange(len(sentences)))
    steps = batch.ids.shape[1]
    mask = torch.arange(steps)[None] < batch.lengths[:, None]
    logits = torch.randn(len(sentences), steps, len(VOCAB), generator=torch.Generator().manual_seed(3))
    gold = torch.randint(len(VOCAB), (len(sentences), steps), generator=torch.Generator().manual_seed(4))
    log_p = F.log_softmax(logits, -1)
    kd, nll = [], []
    for i, dist in enumerate(true_distributions(sentences)):  # every draw by hand, repeats included
        drawn = drawn_by_definition(dist, documented_points(5, i, len(dist), R))
        for t in range(len(dist)):
            kd.append(-log_p[i, t, drawn[t]].mean())
            smooth = 0.1 * -log_p[i, t].mean() + 0.9 * -log_p[i, t, gold[i, t]]
            nll.append(smooth)
    expected = 0.5 * torch.stack(nll).mean() + 0.5 * torch.stack(kd).mean()
    for mode in ("drop", "renormalise", "bucket"):  # draws / R sum to 1 and the remainder is 0: all three agree
        loss = distillation_loss(logits, gold, mask, batch.ids, batch.probs, batch.remainder, beta=0.5, mode=mode,
                                 label_smoothing=0.1)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"samples": 0}, "samples must be a positive integer, got 0"),
    ({"samples": 2.5}, "samples must be a positive integer, got 2.5"),
    ({"samples": True}, "samples must be a positive integer, got True"),
    ({"samples": R, "seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"samples": R, "sampling": "stratified"}, "sampling must be one of multinomial, systematic, got 'stratified'"),
    ({"samples": R, "top_k": 64}, "top_k is for a top-V' store; a sampled store (samples = 12) keeps draws"),
    ({"samples": R, "epsilon": 0.01}, "epsilon is for a top-V' store"),
    ({"samples": R, "probs_dtype": "float16"}, "probs_dtype is for a top-V' store"),
    ({"seed": 3}, "a seed is for a sampled store (samples), not a top-V' one"),
])
def test_bad_sampling_settings_are_refused(tmp_path, options, message):
    with pytest.raises(UserError, match=re.escape(f"teacher store: {message}")):
        write(tmp_path, make_sentences(), **options)


def first_draw_plus_one(a):
    """The first entry's draws - 1 (the low 4 bits of byte 0, at most R - 1 = 11) raised by one: that position's
    draws sum to R + 1."""
    a = a.copy()
    a[0] = (a[0] & 0xF0) | ((a[0] & 0x0F) + 1)
    return a


@pytest.mark.parametrize("name, change, message", [
    ("draws", first_draw_plus_one, "draw counts summing to 12 at each position"),
    ("draws", lambda a: a[:-1], "draw counts summing to 12 at each position"),
    ("counts", lambda a: np.r_[a[0] + a[1], 0, a[2:]].astype(a.dtype), "entry counts of 1 to 12, summing to"),
    ("ids", lambda a: a.astype(np.uint16), "holds uint16"),
])
def test_sampled_shard_arrays_that_disagree_with_the_manifest_are_refused(tmp_path, name, change, message):
    sentences = [np.array([1]), np.array([2, 3]), np.array([], dtype=np.int64), np.array([4]), np.array([5])]
    sampled(tmp_path, sentences)
    original = np.load(tmp_path / f"shard-00000-{name}.npy")
    replace_shard_array(tmp_path, 0, name, change(original))
    with pytest.raises(UserError, match=f"shard-00000-{name}.npy: teacher store shard .*{re.escape(message)}"):
        TeacherStore.open(tmp_path, expect_fingerprint=fingerprint_dataset(sentences), expect_vocab=VOCAB)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(version=3), "version is 3, expected 4"),
    (lambda m: m["truncation"].update(samples=13), "truncation.width is 12, expected 13"),
    (lambda m: m["truncation"].update(samples="12"), "malformed manifest"),
])
def test_a_sampled_manifest_that_disagrees_with_itself_is_refused(tmp_path, edit, message):
    sentences = make_sentences()
    sampled(tmp_path, sentences)
    reseal(tmp_path / "manifest.json", edit)
    with pytest.raises(UserError, match=re.escape(message)):
        TeacherStore.open(tmp_path, expect_fingerprint=fingerprint_dataset(sentences), expect_vocab=VOCAB)


def test_the_translation_setting_declares_its_range():
    assert setting_problem(TranslationDistillation, "samples", -1) == "must be at least 0, got -1"
    assert setting_problem(TranslationDistillation, "samples", 0) is None  # 0: top-V' (or adaptive), as before
    assert TranslationDistillation().samples == 0
