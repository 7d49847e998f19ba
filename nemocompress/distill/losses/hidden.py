"""Intermediate (hidden-state) losses, the width projection, and the dynamic weight between terms.

Each per-layer loss is registered under its one name
(:func:`~nemocompress.distill.losses.registry.register_intermediate_loss`); ``DistillConfig.intermediate``
and ``--intermediate`` offer the registered names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .reduction import NumItems, check_same_shape, compute_dtype, masked_mean, valid_tokens
from .registry import intermediate_loss, register_intermediate_loss

__all__ = [
    "HiddenStateProjection",
    "cosine_hidden_loss",
    "dynamic_alpha",
    "mapped_hidden_loss",
    "mse_hidden_loss",
]


@register_intermediate_loss("cosine")
def cosine_hidden_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    *,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """Mean over counted tokens of ``1 - cos(h_student, h_teacher)``, in float32.

    Args:
        student_hidden: ``[..., D]`` (project it first when widths differ, see
            :class:`HiddenStateProjection`).
        teacher_hidden: ``[..., D]``.
        labels, mask, ignore_index, num_items: as :func:`kd_loss`.

    Returns:
        Scalar in [0, 2]; 0 when nothing is counted.
    """
    check_same_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden)
    valid = valid_tokens(student_hidden.shape[:-1], labels, mask, ignore_index)

    def per_token(s: Tensor, t: Tensor) -> Tensor:
        dtype = compute_dtype(s)
        return 1.0 - F.cosine_similarity(s.to(dtype), t.to(dtype), dim=-1, eps=1e-8)

    return masked_mean(per_token, [student_hidden, teacher_hidden], valid, num_items)


@register_intermediate_loss("mse")
def mse_hidden_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    *,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """Mean over counted tokens of ``mean_d (h_student - h_teacher)**2``, in float32.

    Averaging over the hidden width keeps the scale independent of ``D``; with no masking it
    equals ``F.mse_loss``. Shapes as :func:`cosine_hidden_loss`.
    """
    check_same_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden)
    valid = valid_tokens(student_hidden.shape[:-1], labels, mask, ignore_index)

    def per_token(s: Tensor, t: Tensor) -> Tensor:
        dtype = compute_dtype(s)
        return (s.to(dtype) - t.to(dtype)).pow(2).mean(-1)

    return masked_mean(per_token, [student_hidden, teacher_hidden], valid, num_items)


class HiddenStateProjection(nn.Module):
    """Maps student hidden states ``[..., D_s]`` to the teacher width ``[..., D_t]``.

    A learned ``nn.Linear(D_s, D_t)`` (default PyTorch init) when the widths differ, the
    identity (no parameters) when they are equal. Minitron shares one such projection across
    all mapped layers; make one per layer pair if you want them separate.
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, bias: bool = False) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.proj = (
            nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim, bias=bias)
        )

    @property
    def is_identity(self) -> bool:
        return isinstance(self.proj, nn.Identity)

    def forward(self, student_hidden: Tensor) -> Tensor:
        """``[..., D_s] -> [..., D_t]``."""
        return self.proj(student_hidden)


def mapped_hidden_loss(
    student_hidden_states: Sequence[Tensor],
    teacher_hidden_states: Sequence[Tensor],
    layer_map: Sequence[tuple[int, int]],
    *,
    kind: str = "cosine",
    projection: Callable[[Tensor], Tensor] | None = None,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
) -> Tensor:
    """Intermediate-state loss averaged over mapped layer pairs.

    Args:
        student_hidden_states: per-layer ``[..., D_s]`` (e.g. ``output_hidden_states``).
        teacher_hidden_states: per-layer ``[..., D_t]``.
        layer_map: ``(student_layer, teacher_layer)`` index pairs into the two sequences.
        kind: a registered intermediate loss (:func:`intermediate_loss_names`): ``"cosine"``
            (:func:`cosine_hidden_loss`) or ``"mse"`` (:func:`mse_hidden_loss`).
        projection: applied to every student state first (shared, as in Minitron), e.g. a
            :class:`HiddenStateProjection`; None when widths already match.
        labels, mask, ignore_index, num_items: as :func:`kd_loss`.

    Returns:
        Scalar: the mean over pairs of the per-pair loss.
    """
    if not layer_map:
        raise ValueError("layer_map is empty: give at least one (student_layer, teacher_layer) pair")
    loss_fn = intermediate_loss(kind)
    project = projection if projection is not None else (lambda h: h)
    losses = [
        loss_fn(project(student_hidden_states[s]), teacher_hidden_states[t], labels=labels, mask=mask,
                ignore_index=ignore_index, num_items=num_items)
        for s, t in layer_map
    ]  # fmt: skip
    return torch.stack(losses).mean()


def dynamic_alpha(logit_loss: Tensor, intermediate_loss: Tensor, *, eps: float = 1e-12) -> Tensor:
    """Weight ``alpha = L_logit.detach() / L_inter.detach()`` that brings both terms to one scale.

    Use as ``loss = logit_loss + alpha * intermediate_loss``. When the intermediate loss is
    at most ``eps`` (nothing left to learn from it) alpha is 0 rather than huge or NaN.

    Args:
        logit_loss: scalar.
        intermediate_loss: scalar.

    Returns:
        Scalar without grad.
    """
    logit_loss, intermediate_loss = logit_loss.detach(), intermediate_loss.detach()
    safe = torch.where(intermediate_loss > eps, intermediate_loss, torch.ones_like(intermediate_loss))
    return torch.where(intermediate_loss > eps, logit_loss / safe, torch.zeros_like(logit_loss))
