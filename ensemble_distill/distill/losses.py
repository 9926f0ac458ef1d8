"""Distillation losses, generic over [batch, positions, vocab]: the NER student (labels) and the translation
student (subwords) use the same functions with their own teacher stores.

    loss = (1 - beta) NLL(gold) + beta tau^2 KD,   KD = -mean over positions of sum_k q_k log p_student(id_k)

q: the teacher entries a store kept (teacher_store.TeacherBatch: ids, probs [B, T, K], remainder [B, T]). The
remainder, the teacher mass the truncation dropped, is treated by `distill_targets` in one of three ways.
"""

import math

import torch
import torch.nn.functional as F

REMAINDER_MODES = ("drop", "renormalise", "bucket")


def distill_targets(probs: torch.Tensor, remainder: torch.Tensor, mode: str = "drop"):
    """Target weights for the kept entries [..., K] and for a remainder bucket [...], for a distillation loss
        -sum_k targets_k log p_student(ids_k) - bucket log(1 - sum_k p_student(ids_k)).
    drop (paper): the stored probabilities, the remainder ignored (the targets sum to 1 - remainder);
    renormalise: the stored probabilities scaled to sum to 1;
    bucket: the stored probabilities, and the remainder as the target of the student's mass outside the kept ids.
    The bucket is zero except in mode "bucket".

    Raises:
        ValueError: `mode` is not one of REMAINDER_MODES.
    """
    if mode == "drop":
        return probs, torch.zeros_like(remainder)
    if mode == "renormalise":
        return probs / probs.sum(-1, keepdim=True).clamp(min=torch.finfo(probs.dtype).tiny), torch.zeros_like(remainder)
    if mode == "bucket":
        return probs, remainder
    raise ValueError(f"distill_targets: mode must be 'drop', 'renormalise' or 'bucket', got {mode!r}")


def kd_loss(student_log_probs, teacher_ids, teacher_probs, remainder, mask, mode: str = "drop") -> torch.Tensor:
    """Token-level cross-entropy from stored teacher entries to the student, averaged over masked positions:

        -sum_k t_k log p(id_k) - b log(1 - sum_k p(id_k)),   (t, b) = distill_targets(probs, rem, mode)

    student_log_probs [B, T, V]; teacher_ids, teacher_probs [B, T, K]; remainder, mask [B, T]. Entries with
    probability 0 are padding (a stored entry rounded to 0 carries no target mass either way). Log-probabilities at
    masked-out positions must be finite: they take part in the computation, with gradient 0.

    Raises:
        ValueError: `mode` is not one of REMAINDER_MODES.
    """
    return _masked_mean(_kd_per_position(student_log_probs, teacher_ids, teacher_probs, remainder, mode), mask)


def _kd_per_position(log_probs, ids, probs, remainder, mode: str) -> torch.Tensor:
    """`kd_loss` at every position, padding included: [B, T, V], [B, T, K], [B, T, K], [B, T] -> [B, T]. Gathering
    from every position reads [B, T, K]; selecting the real positions first would copy [N, V] (and scatter it back
    in the backward pass)."""
    targets, bucket = distill_targets(probs.to(log_probs.dtype), remainder.to(log_probs.dtype), mode)
    loss = -(targets * log_probs.gather(-1, ids)).sum(-1)
    if mode == "bucket":
        loss = loss - bucket * _outside_log_mass(log_probs, ids, probs > 0)
    return loss


def _masked_mean(values, mask) -> torch.Tensor:
    """Mean of values [B, T] over the positions where mask [B, T] is True; 0 where there are none. Selecting (not
    multiplying by the mask) keeps what padding computed out of the value."""
    return values[mask].sum() / mask.sum().clamp(min=1)


def _outside_log_mass(log_probs, ids, real) -> torch.Tensor:
    """log of the student's mass outside the kept ids, [..., V] -> [...], by logsumexp over the other ids (stable
    where the kept mass is near 1). Where the kept ids cover the vocabulary there is no outside: 0, so the bucket
    there (float rounding of a remainder that is really 0) adds nothing."""
    # Added, not assigned: a padding slot (id 0, not real) must not unmark a real entry of id 0.
    kept = torch.zeros_like(log_probs).scatter_add_(-1, ids, real.to(log_probs.dtype)) > 0
    has_outside = ~kept.all(-1)
    # Filling covered rows with 0 keeps the logsumexp and its gradient finite there (not -inf, not NaN).
    outside = log_probs.masked_fill(kept, float("-inf")).where(has_outside[..., None], 0.0)
    return torch.logsumexp(outside, -1).where(has_outside, 0.0)


def retemper(teacher_probs, temperature: float) -> torch.Tensor:
    """The stored entries re-tempered, q_k^(1/tau), rescaled to keep their stored mass (the remainder stays the
    remainder). Exact when the store keeps every entry, as for NER. teacher_probs [..., K] -> [..., K]."""
    powered = teacher_probs.pow(1.0 / temperature)
    return powered * (teacher_probs.sum(-1, keepdim=True) / powered.sum(-1, keepdim=True).clamp(min=1e-30))


def distillation_loss(logits, gold, mask, teacher_ids, teacher_probs, remainder, *, beta: float,
                      mode: str = "drop", temperature: float = 1.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - beta) NLL(gold) + beta tau^2 KD(student at tau, teacher re-tempered at tau), means over the masked
    positions. logits [B, T, V] float; gold [B, T] int64 (any value at masked-out positions, such as -100); mask
    [B, T] bool; teacher_* as in `kd_loss`. The tau^2 (Hinton et al., 2015) keeps the KD gradients' scale as tau
    changes; at tau = 1 (the paper's) both are the plain distributions. The NLL is label-smoothed as
    F.cross_entropy's: against (1 - λ) one-hot(gold) + λ uniform over the V classes.

    At tau = 1 one log_softmax serves both terms, and the real positions are not copied out of [B, T, V]: a step
    costs about a label-smoothed NLL step (bench/bench_translation.py). Logits at masked-out positions must be
    finite; their gradient is 0.

    Raises:
        ValueError: `mode` is not one of REMAINDER_MODES; beta outside [0, 1], temperature not > 0 or
            label_smoothing outside [0, 1) (any of them would give a number that is no distillation loss).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"distillation_loss: beta must lie in [0, 1], got {beta!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"distillation_loss: temperature must be a finite number > 0, got {temperature!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"distillation_loss: label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    log_probs = F.log_softmax(logits, -1)
    nll = -log_probs.gather(-1, gold.masked_fill(~mask, 0)[..., None]).squeeze(-1)
    if label_smoothing:
        # sum / V rather than mean: mean's backward writes a divided [B, T, V] copy of its gradient
        nll = (1.0 - label_smoothing) * nll - label_smoothing / log_probs.shape[-1] * log_probs.sum(-1)
    if temperature != 1.0:
        log_probs, teacher_probs = F.log_softmax(logits / temperature, -1), retemper(teacher_probs, temperature)
    kd = _kd_per_position(log_probs, teacher_ids, teacher_probs, remainder, mode)
    return _masked_mean((1.0 - beta) * nll + beta * temperature ** 2 * kd, mask)
