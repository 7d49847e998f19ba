"""Logit distillation losses that hold the full ``[tokens, V]`` log-probabilities, and the CE term.

The same values, over chunks of tokens, come from :func:`~nemocompress.distill.losses.chunked_kd_loss`
and, from hidden states with the LM heads fused in, from
:func:`~nemocompress.distill.losses.chunked_kd_loss_from_hidden`.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from .divergences import Divergence, kl, log_probs, token_divergence
from .reduction import NumItems, check_same_shape, masked_mean, valid_tokens
from .registry import KDLossSpec, register_kd_loss

__all__ = [
    "cross_entropy_loss",
    "forward_kl",
    "generalized_jsd",
    "kd_loss",
    "reverse_kl",
    "topk_forward_kl",
    "total_variation",
]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    divergence: Divergence = "kl",
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
    **hyperparameters,
) -> Tensor:
    """Logit distillation loss, materializing the full ``[tokens, V]`` log-probabilities.

    Args:
        student_logits: ``[..., V]``, any float dtype.
        teacher_logits: ``[..., V]``, same shape (detach it for a frozen teacher).
        divergence: see :func:`token_divergence`.
        beta: JSD weight (``divergence="jsd"`` only).
        temperature: ``T``; the loss is ``T**2 * mean_token divergence(softmax(z/T))``.
        labels: ``[...]`` integer; tokens equal to ``ignore_index`` are not counted.
        mask: ``[...]`` bool; false tokens are not counted.
        ignore_index: label value that marks a token not counted.
        num_items: divisor of the token sum (global count for gradient accumulation).
        hyperparameters: further keywords of a registered divergence (see :func:`token_divergence`).

    Returns:
        Scalar float32 (float64 for float64 logits). Same value as :func:`chunked_kd_loss`.
    """
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    valid = valid_tokens(student_logits.shape[:-1], labels, mask, ignore_index)
    per_token = partial(
        token_divergence, divergence=divergence, beta=beta, temperature=temperature, **hyperparameters
    )
    return temperature**2 * masked_mean(per_token, [student_logits, teacher_logits], valid, num_items)


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """KL(p_teacher || p_student) per token, masked mean, times ``T**2``. Shapes as :func:`kd_loss`."""
    return kd_loss(
        student_logits, teacher_logits, "kl", temperature=temperature, labels=labels,
        mask=mask, ignore_index=ignore_index, num_items=num_items,
    )  # fmt: skip


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """KL(p_student || p_teacher) per token, masked mean, times ``T**2``. Shapes as :func:`kd_loss`."""
    return kd_loss(
        student_logits, teacher_logits, "rkl", temperature=temperature, labels=labels,
        mask=mask, ignore_index=ignore_index, num_items=num_items,
    )  # fmt: skip


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024), TRL's convention.

    With ``m = beta * p_teacher + (1 - beta) * p_student`` the per-token loss is
    ``beta * KL(p_teacher || m) + (1 - beta) * KL(p_student || m)``. As in TRL's
    ``generalized_jsd_loss``, the end points are special-cased: ``beta = 0`` is forward KL
    KL(p_teacher || p_student) and ``beta = 1`` is reverse KL KL(p_student || p_teacher)
    (the formula itself tends to 0 there). ``beta = 0.5`` is the symmetric JSD, bounded by
    ``log 2``. Masked mean, times ``T**2``; shapes as :func:`kd_loss`. Unlike TRL, the
    softmax runs in float32 and the loss carries the ``T**2`` factor.
    """
    return kd_loss(
        student_logits, teacher_logits, "jsd", beta=beta, temperature=temperature, labels=labels,
        mask=mask, ignore_index=ignore_index, num_items=num_items,
    )  # fmt: skip


def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """Total variation distance 0.5 * sum_v |p_teacher - p_student| per token, masked mean.

    Lies in [0, 1] at ``T = 1``; like the other logit losses it is multiplied by ``T**2``,
    so in [0, T**2] in general. Shapes as :func:`kd_loss`.
    """
    return kd_loss(
        student_logits, teacher_logits, "tvd", temperature=temperature, labels=labels,
        mask=mask, ignore_index=ignore_index, num_items=num_items,
    )  # fmt: skip


def topk_forward_kl(
    student_logits: Tensor,
    teacher_topk_logits: Tensor,
    teacher_topk_indices: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """Forward KL against a cached teacher top-k (offline distillation).

    The teacher distribution is ``softmax(teacher_topk_logits / T)``, i.e. renormalized over
    its k cached entries. The student's log-probabilities come from a full
    ``log_softmax(student_logits / T)`` over the whole vocabulary and are gathered at
    ``teacher_topk_indices``; they are not renormalized. The per-token loss
    ``sum_k p_t,k * (log p_t,k - log q_s[idx_k])`` is therefore >= 0, equals the full forward
    KL when k == V, and also pushes student mass off the tokens outside the teacher's top-k.

    Args:
        student_logits: ``[..., V]``.
        teacher_topk_logits: ``[..., k]`` raw teacher logits at its top-k tokens (any order).
        teacher_topk_indices: ``[..., k]`` int64 vocabulary indices of those logits.
        temperature, labels, mask, ignore_index, num_items: as :func:`kd_loss`.

    Returns:
        Scalar float32 (float64 for float64 logits), times ``T**2``.
    """
    check_same_shape("teacher_topk_logits", teacher_topk_logits, "teacher_topk_indices", teacher_topk_indices)
    if teacher_topk_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher top-k has token shape {tuple(teacher_topk_logits.shape[:-1])} but the student logits "
            f"have {tuple(student_logits.shape[:-1])}; pass the cache rows for the same tokens"
        )
    valid = valid_tokens(student_logits.shape[:-1], labels, mask, ignore_index)

    def per_token(student: Tensor, values: Tensor, indices: Tensor) -> Tensor:
        log_s = log_probs(student, temperature).gather(-1, indices.long())
        return kl(log_probs(values, temperature), log_s)

    tensors = [student_logits, teacher_topk_logits, teacher_topk_indices]
    return temperature**2 * masked_mean(per_token, tensors, valid, num_items)


def cross_entropy_loss(
    student_logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """Next-token cross-entropy on hard labels (the optional CE term), float32 softmax.

    Args:
        student_logits: ``[..., V]``; labels must already be aligned (shifted) to them.
        labels: ``[...]`` int64; ``ignore_index`` marks tokens not counted.
        num_items: divisor of the token sum, as in :func:`kd_loss`.

    Returns:
        Scalar float32 (float64 for float64 logits); 0 when no label is counted.
    """
    valid = valid_tokens(student_logits.shape[:-1], labels, None, ignore_index)

    def per_token(logits: Tensor, targets: Tensor) -> Tensor:
        return -log_probs(logits, 1.0).gather(-1, targets.long()).squeeze(-1)

    return masked_mean(per_token, [student_logits, labels.unsqueeze(-1)], valid, num_items)


register_kd_loss(
    KDLossSpec(
        "topk-kl",
        None,
        teacher="topk",
        summary="forward KL against the teacher's top-k logits (topk_forward_kl)",
    )
)
