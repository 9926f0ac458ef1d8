"""The distillation losses by hand: kd_loss per remainder mode, retempering, label smoothing, the beta mix."""

import math

import pytest
import torch
import torch.nn.functional as F

from ensemble_distill.distill.losses import distill_targets, distillation_loss, kd_loss, retemper

LOG = math.log
V = 40  # as in test_teacher_store, where this test lived


# ----------------------------------------------------------------------------------------------------------------
# Losses by hand

# One sentence of three positions over V = 3; the last position is padding (masked out, garbage values).
STUDENT = torch.tensor([[[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]]).log()
# Position 0: teacher (0.6, 0.1, 0.3) cut to its top 2: ids (0, 2), remainder 0.1.
# Position 1: teacher kept one entry, id 1 with 0.8, remainder 0.2; its second slot is padding (id 0, p 0).
IDS = torch.tensor([[[0, 2], [1, 0], [2, 1]]])
PROBS = torch.tensor([[[0.6, 0.3], [0.8, 0.0], [0.5, 0.5]]])
REMAINDER = torch.tensor([[0.1, 0.2, 0.0]])
MASK = torch.tensor([[True, True, False]])


@pytest.mark.parametrize("mode, position0, position1", [
    # drop (paper): the stored probabilities against the student's log-probabilities of their ids
    ("drop", -(0.6 * LOG(0.5) + 0.3 * LOG(0.2)), -0.8 * LOG(0.3)),  # 0.8987, 0.9632
    # renormalise: (0.6, 0.3) / 0.9 = (2/3, 1/3); (0.8) / 0.8 = (1)
    ("renormalise", -(2 / 3 * LOG(0.5) + 1 / 3 * LOG(0.2)), -LOG(0.3)),  # 0.9986, 1.2040
    # bucket: drop plus the remainder against the student's mass outside the kept ids: 1 - 0.5 - 0.2 = 0.3 at
    # position 0, and 1 - 0.3 = 0.7 at position 1 (the padding slot's id 0 is not a kept id)
    ("bucket", -(0.6 * LOG(0.5) + 0.3 * LOG(0.2)) - 0.1 * LOG(0.3), -0.8 * LOG(0.3) - 0.2 * LOG(0.7)),
])
def test_kd_loss_by_hand(mode, position0, position1):
    loss = kd_loss(STUDENT, IDS, PROBS, REMAINDER, MASK, mode)
    assert loss.item() == pytest.approx((position0 + position1) / 2, rel=1e-6)


def test_bucket_where_the_kept_ids_cover_the_vocabulary_is_finite():
    """A full store's remainder is float rounding (~6e-8 in float16): no outside mass, no NaN gradient."""
    logits = torch.tensor([[[2.0, 0.0, -1.0]]], requires_grad=True)
    ids, probs = torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0.7, 0.2, 0.1]]])
    loss = kd_loss(logits.log_softmax(-1), ids, probs, torch.tensor([[6e-8]]), torch.tensor([[True]]), "bucket")
    loss.backward()
    expected = -(0.7 * logits.log_softmax(-1)[0, 0, 0] + 0.2 * logits.log_softmax(-1)[0, 0, 1]
                 + 0.1 * logits.log_softmax(-1)[0, 0, 2])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.isfinite(logits.grad).all()


def test_temperature_retempers_the_teacher_and_scales_by_tau_squared():
    # sqrt(0.64) = 0.8, sqrt(0.36) = 0.6: normalised (4/7, 3/7), times the stored mass 1
    assert retemper(torch.tensor([0.64, 0.36, 0.0]), 2.0).tolist() == pytest.approx([4 / 7, 3 / 7, 0.0])
    # a truncated teacher keeps its stored mass 0.9: (sqrt 0.81, sqrt 0.09) = (0.9, 0.3) -> 0.9 (3/4, 1/4)
    assert retemper(torch.tensor([0.81, 0.09]), 2.0).tolist() == pytest.approx([0.675, 0.225])
    logits = torch.tensor([[[2.0, 0.0, -2.0]]])
    ids, probs = torch.tensor([[[0, 1]]]), torch.tensor([[[0.64, 0.36]]])
    loss = distillation_loss(logits, torch.tensor([[0]]), torch.tensor([[True]]), ids, probs,
                             torch.tensor([[0.0]]), beta=1.0, temperature=2.0)
    student = torch.tensor([1.0, 0.0, -1.0]).log_softmax(-1)  # logits / 2
    assert loss.item() == pytest.approx(4 * -(4 / 7 * student[0] + 3 / 7 * student[1]).item(), rel=1e-6)


def test_label_smoothing_on_the_nll_term():
    logits = torch.tensor([[[0.5, 0.3, 0.2]]]).log()  # softmax = (0.5, 0.3, 0.2)
    args = (logits, torch.tensor([[1]]), torch.tensor([[True]]), IDS[:, :1], PROBS[:, :1], REMAINDER[:, :1])
    # smoothing 0.3 over 3 labels: target (0.1, 0.8, 0.1)
    expected = -(0.1 * LOG(0.5) + 0.8 * LOG(0.3) + 0.1 * LOG(0.2))
    assert distillation_loss(*args, beta=0.0, label_smoothing=0.3).item() == pytest.approx(expected, rel=1e-6)
    # beta mixes: (1 - 0.25) NLL + 0.25 KD
    kd = -(0.6 * LOG(0.5) + 0.3 * LOG(0.2))
    assert distillation_loss(*args, beta=0.25).item() == pytest.approx(0.75 * -LOG(0.3) + 0.25 * kd, rel=1e-6)


def test_bucket_with_a_padding_slot_on_a_kept_id():
    """The store pads a position's entries with id 0 and probability 0; id 0 may also be a kept entry."""
    ids, probs = torch.tensor([[[0, 1, 0]]]), torch.tensor([[[0.6, 0.3, 0.0]]])
    loss = kd_loss(STUDENT[:, :1], ids, probs, torch.tensor([[0.1]]), torch.tensor([[True]]), "bucket")
    # outside ids 0 and 1: the student's 0.2 on id 2
    assert loss.item() == pytest.approx(-(0.6 * LOG(0.5) + 0.3 * LOG(0.3)) - 0.1 * LOG(0.2), rel=1e-6)


def dense_distillation_loss(logits, gold, mask, ids, probs, remainder, beta, mode, temperature, label_smoothing):
    """The reference formula over the real positions, with dense [N, V] targets."""
    x, gold, ids, probs, remainder = logits[mask], gold[mask], ids[mask], probs[mask], remainder[mask]
    vocab = x.shape[-1]
    smoothed = (1 - label_smoothing) * F.one_hot(gold, vocab) + label_smoothing / vocab
    nll = -(smoothed * x.log_softmax(-1)).sum(-1)
    powered = probs ** (1 / temperature)  # retempered, keeping the stored mass
    probs = powered * probs.sum(-1, keepdim=True) / powered.sum(-1, keepdim=True)
    teacher = torch.zeros_like(x).scatter_add_(-1, ids, probs)  # padding (id 0, p 0) adds nothing
    student = (x / temperature).log_softmax(-1)
    if mode == "renormalise":
        teacher = teacher / teacher.sum(-1, keepdim=True)
    kd = -(teacher * student).sum(-1)
    if mode == "bucket":
        kd = kd - remainder * torch.log((student.exp() * (teacher == 0)).sum(-1))
    return ((1 - beta) * nll + beta * temperature ** 2 * kd).mean()


@pytest.mark.parametrize("mode", ["drop", "renormalise", "bucket"])
@pytest.mark.parametrize("temperature, label_smoothing", [(1.0, 0.1), (1.0, 0.0), (2.0, 0.1)])
def test_distillation_loss_equals_the_dense_formula(mode, temperature, label_smoothing):
    """Values and gradients, with padded positions (gold -100, garbage logits) and padded entries (id 0, p 0,
    some at positions that keep id 0)."""
    g = torch.Generator().manual_seed(3)
    B, T, K = 3, 5, 6
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[0, 0] = True
    gold = torch.randint(0, V, (B, T), generator=g).masked_fill(~mask, -100)
    probs, ids = torch.softmax(3 * torch.randn(B, T, V, generator=g), -1).topk(K, -1)
    probs[1, :, -2:], ids[1, :, -2:] = 0.0, 0  # two padding entries at every position of sentence 1
    ids[1, :2, 0] = 0  # ... where positions 0 and 1 keep id 0 too
    remainder = 1 - probs.sum(-1)
    logits = (3 * torch.randn(B, T, V, generator=g)).requires_grad_()
    loss = distillation_loss(logits, gold, mask, ids, probs, remainder, beta=0.4, mode=mode,
                             temperature=temperature, label_smoothing=label_smoothing)
    loss.backward()
    reference_logits = logits.detach().clone().requires_grad_()
    reference = dense_distillation_loss(reference_logits, gold, mask, ids, probs, remainder, 0.4, mode,
                                        temperature, label_smoothing)
    reference.backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(logits.grad, reference_logits.grad)
    assert (logits.grad[~mask] == 0).all()


@pytest.mark.parametrize("setting, message", [({"beta": 1.5}, "beta must lie in"), ({"beta": -0.1}, "beta must lie in"),
                                              ({"temperature": -1.0}, "temperature must be"),
                                              ({"temperature": 0.0}, "temperature must be"),
                                              ({"temperature": math.nan}, "temperature must be"),
                                              ({"label_smoothing": 1.0}, "label_smoothing must lie")])
def test_distillation_loss_refuses_settings_that_make_it_no_distillation_loss(setting, message):
    """beta 1.5 weighs the NLL by -0.5 and tau -1 inverts the student: numbers, but no loss to minimise."""
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        distillation_loss(STUDENT, torch.zeros(1, 3, dtype=torch.long), mask, IDS, PROBS, REMAINDER,
                          **{"beta": 0.5, **setting})


def test_distillation_loss_without_real_positions_is_zero():
    mask = torch.zeros(1, 3, dtype=torch.bool)
    loss = distillation_loss(STUDENT, torch.full((1, 3), -100), mask, IDS, PROBS, REMAINDER, beta=0.5,
                             label_smoothing=0.1)
    assert loss.item() == 0.0



def test_distill_targets():
    logits = torch.randn(2, 3, V, generator=torch.Generator().manual_seed(0))
    teacher = torch.softmax(logits * 2, -1)
    probs, ids = teacher.topk(5, -1)
    remainder = 1 - probs.sum(-1)
    student = torch.log_softmax(torch.randn(2, 3, V, generator=torch.Generator().manual_seed(1)), -1)
    student_kept = student.gather(-1, ids)

    targets, bucket = distill_targets(probs, remainder, "drop")
    assert torch.equal(targets, probs) and (bucket == 0).all()
    targets, bucket = distill_targets(probs, remainder, "renormalise")
    torch.testing.assert_close(targets.sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(targets, torch.softmax(logits * 2, -1).topk(5, -1).values / (1 - remainder)[..., None])
    targets, bucket = distill_targets(probs, remainder, "bucket")
    # With the remainder as one bucket, the loss is the cross-entropy against the teacher with its dropped entries
    # merged into one event, compared densely here.
    loss = -(targets * student_kept).sum(-1) - bucket * torch.log1p(-student_kept.exp().sum(-1))
    outside = torch.ones_like(teacher, dtype=torch.bool).scatter_(-1, ids, False)
    dense = -(teacher * student * ~outside).sum(-1) - (teacher * outside).sum(-1) * torch.log(
        (student.exp() * outside).sum(-1))
    torch.testing.assert_close(loss, dense)
    padding = distill_targets(torch.zeros(1, 4), torch.zeros(1), "renormalise")[0]
    assert (padding == 0).all()
    with pytest.raises(ValueError, match="mode must be"):
        distill_targets(probs, remainder, "ignore")
