"""Logit distillation from final hidden states with the LM heads fused in, chunk by chunk.

Neither model's ``[tokens, V]`` logits exist at once: each chunk of tokens goes through both LM heads,
the loss and its gradient, and the heads' backward (done by hand, so weight gradients accumulate in
place), before the next chunk starts. :func:`chunked_distill_loss_from_hidden` also computes the CE
term from the same chunks, which is what the trainer calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunked import chunk_rows, counted_rows, run_chunked, value_and_grads
from .divergences import Divergence, check_divergence, divergence_of_log_probs, log_probs
from .reduction import NumItems
from .registry import KDLossSpec

__all__ = ["DistillLoss", "chunked_distill_loss_from_hidden", "chunked_kd_loss_from_hidden"]


class DistillLoss(NamedTuple):
    """``loss = kd_weight * kd + ce_weight * ce`` (differentiable) and its two terms (detached scalars)."""

    loss: Tensor
    kd: Tensor
    ce: Tensor


class _HiddenStep:
    """One chunk of a fused loss: LM heads, loss, then the heads' backward by hand.

    ``tensors`` holds the hidden-state rows of ``num_models`` models, further rows the loss reads
    (e.g. labels), then each model's head weight and bias. Doing the linear backward by hand lets the
    weight and bias gradients accumulate in place (``addmm_``) instead of allocating a fresh
    ``[V, D]`` gradient per chunk.
    """

    def __init__(self, loss_fn, num_models: int, num_rows: int, tensors, needs: Sequence[bool]) -> None:
        self.loss_fn, self.num_models = loss_fn, num_models
        self.heads = list(tensors[num_rows:])  # W_0, b_0, W_1, b_1
        self.row_needs, self.head_needs = list(needs[:num_models]), list(needs[num_rows:])
        self.sums: list[Tensor | None] = [None] * len(self.heads)

    def __call__(self, *pieces: Tensor):
        hidden, extra = pieces[: self.num_models], pieces[self.num_models :]
        with torch.no_grad():
            logits = [F.linear(h, self.heads[2 * m], self.heads[2 * m + 1]) for m, h in enumerate(hidden)]
        need_logits = [
            self.row_needs[m] or self.head_needs[2 * m] or self.head_needs[2 * m + 1]
            for m in range(self.num_models)
        ]
        value, logit_grads = value_and_grads(lambda *z: self.loss_fn(*z, *extra), logits, need_logits)
        hidden_grads = [self._head_backward(g, h, m) for m, (g, h) in enumerate(zip(logit_grads, hidden))]
        return value, [*hidden_grads, *(None for _ in extra)]

    def _head_backward(self, grad_logits: Tensor | None, hidden: Tensor, model: int) -> Tensor | None:
        """Accumulate dL/dW = g^T h and dL/db = sum g for one head; return dL/dh = g W.

        In the weight's dtype with autocast off: under mixed precision the logits (and so ``g``) are in
        the autocast dtype, while the accumulated gradients must match the float32 weights.
        """
        if grad_logits is None:
            return None
        w, b = 2 * model, 2 * model + 1
        weight = self.heads[w]
        with torch.autocast(hidden.device.type, enabled=False):
            g, h = grad_logits.to(weight.dtype), hidden.to(weight.dtype)
            if self.head_needs[w]:
                w_sum = self.sums[w]
                self.sums[w] = g.t() @ h if w_sum is None else w_sum.addmm_(g.t(), h)
            if self.head_needs[b]:
                b_sum = self.sums[b]
                self.sums[b] = g.sum(0) if b_sum is None else b_sum.add_(g.sum(0))
            return (g @ weight).to(hidden.dtype) if self.row_needs[model] else None

    def shared_grads(self) -> list[Tensor | None]:
        """Gradients of the heads' weights and biases; zeros where needed but every token was masked."""
        return [
            (g if g is not None else torch.zeros_like(t)) if need else None
            for g, t, need in zip(self.sums, self.heads, self.head_needs)
        ]


class _DistillTerms:
    """Per-chunk ``kd_weight * KD * T^2 / n + ce_weight * CE / n``, keeping each term's running sum."""

    def __init__(self, spec: KDLossSpec | None, hyper: dict, temperature: float, weights, divisor) -> None:
        self.spec, self.hyper, self.temperature = spec, hyper, temperature
        self.kd_weight, self.ce_weight = weights
        self.kd_scale, self.ce_scale = temperature**2 / divisor, 1.0 / divisor
        self.kd = self.ce = torch.zeros_like(divisor)

    def __call__(self, student_logits: Tensor, *rest: Tensor) -> Tensor:
        log_s = log_probs(student_logits, self.temperature)
        loss = torch.zeros((), dtype=log_s.dtype, device=log_s.device)
        if self.spec is not None:  # rest[0]: teacher logits
            log_t = log_probs(rest[0], self.temperature)
            kd = divergence_of_log_probs(self.spec, log_s, log_t, self.hyper).sum() * self.kd_scale
            self.kd = self.kd + kd.detach()
            loss = loss + self.kd_weight * kd
        if self.ce_weight > 0:  # rest[-1]: labels [n, 1]
            log_ce = log_s if self.temperature == 1.0 else log_probs(student_logits, 1.0)
            ce = -log_ce.gather(-1, rest[-1].long()).sum() * self.ce_scale
            self.ce = self.ce + ce.detach()
            loss = loss + self.ce_weight * ce
        return loss


def chunked_distill_loss_from_hidden(
    student_hidden: Tensor,
    student_lm_head_weight: Tensor,
    teacher_hidden: Tensor | None = None,
    teacher_lm_head_weight: Tensor | None = None,
    divergence: Divergence = "kl",
    *,
    student_lm_head_bias: Tensor | None = None,
    teacher_lm_head_bias: Tensor | None = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
    chunk_size: int | None = None,
    **hyperparameters,
) -> DistillLoss:
    """``kd_weight * KD + ce_weight * CE`` from final hidden states, fusing the LM heads chunk by chunk.

    Equals ``kd_weight * kd_loss(zs, zt, ...) + ce_weight * cross_entropy_loss(zs, labels, ...)`` with
    ``zs = F.linear(student_hidden, W_s, b_s)`` and ``zt = F.linear(teacher_hidden, W_t, b_t)``, in
    value and gradients, but holds one chunk of each model's logits at a time (see
    :func:`chunked_kd_loss_from_hidden`). The CE term uses ``T = 1`` and no ``T**2``, as
    :func:`cross_entropy_loss` does. ``labels`` are the CE targets and, as everywhere, mark tokens not
    counted (``ignore_index``) in both terms.

    Args:
        student_hidden: ``[..., D_s]`` student final hidden states (after the final norm).
        student_lm_head_weight: ``[V, D_s]`` (the embedding matrix for tied heads).
        teacher_hidden: ``[..., D_t]`` with the same token shape; may be None when ``kd_weight == 0``.
        teacher_lm_head_weight: ``[V, D_t]``.
        divergence: a registered full-vocabulary KD loss, see :func:`token_divergence`.
        student_lm_head_bias, teacher_lm_head_bias: optional ``[V]``.
        kd_weight, ce_weight: weights of the two terms, ``>= 0``.
        labels: ``[...]`` int64 next-token targets; required when ``ce_weight > 0``.
        beta, temperature, mask, ignore_index, num_items, hyperparameters: as :func:`kd_loss`.
        chunk_size: tokens per chunk; None picks ``max(1, 2**25 // V)``.

    Returns:
        :class:`DistillLoss` of scalars, float32 (float64 for float64 inputs).
    """
    use_teacher = kd_weight > 0
    spec, hyper = (
        check_divergence(divergence, beta, temperature, hyperparameters) if use_teacher else (None, {})
    )
    if use_teacher and (teacher_hidden is None or teacher_lm_head_weight is None):
        raise ValueError("kd_weight > 0 needs the teacher's hidden states and LM head weight")
    if ce_weight > 0 and labels is None:
        raise ValueError("ce_weight > 0 needs labels (the next-token targets)")
    if not (kd_weight >= 0 and ce_weight >= 0 and kd_weight + ce_weight > 0):
        raise ValueError(f"need kd_weight, ce_weight >= 0, not both 0; got {kd_weight} and {ce_weight}")
    hidden = [student_hidden]
    heads = [student_lm_head_weight, student_lm_head_bias]
    if use_teacher:
        _check_same_tokens(student_hidden, student_lm_head_weight, teacher_hidden, teacher_lm_head_weight)
        hidden.append(teacher_hidden)
        heads += [teacher_lm_head_weight, teacher_lm_head_bias]
    extra = [labels.unsqueeze(-1)] if ce_weight > 0 else []
    rows, valid, divisor = counted_rows([*hidden, *extra], labels, mask, ignore_index, num_items)
    terms = _DistillTerms(spec, hyper, temperature, (kd_weight, ce_weight), divisor)
    make_step = partial(_HiddenStep, terms, len(hidden), len(rows))
    chunk = chunk_rows(chunk_size, student_lm_head_weight.shape[0])
    loss = run_chunked(make_step, chunk, valid, rows, heads)
    return DistillLoss(loss, terms.kd, terms.ce)


def chunked_kd_loss_from_hidden(
    student_hidden: Tensor,
    student_lm_head_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_lm_head_weight: Tensor,
    divergence: Divergence = "kl",
    *,
    student_lm_head_bias: Tensor | None = None,
    teacher_lm_head_bias: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
    chunk_size: int | None = None,
    **hyperparameters,
) -> Tensor:
    """Logit distillation from final hidden states, fusing the LM heads chunk by chunk.

    Equals ``kd_loss(F.linear(student_hidden, W_s, b_s), F.linear(teacher_hidden, W_t, b_t), ...)``
    but never holds more than one chunk of either model's logits. Gradients for the hidden
    states, weights and biases that require grad are computed per chunk during forward (see
    :func:`chunked_kd_loss`); the LM-head backward is done by hand, so weight gradients
    accumulate in place across chunks (``addmm_``, in the weight's dtype, as gradient
    accumulation over micro-batches would) without a ``[V, D]`` tensor per chunk.

    Args:
        student_hidden: ``[..., D_s]`` student final hidden states (after the final norm).
        student_lm_head_weight: ``[V, D_s]``.
        teacher_hidden: ``[..., D_t]`` with the same token shape.
        teacher_lm_head_weight: ``[V, D_t]``.
        divergence: see :func:`token_divergence`.
        student_lm_head_bias, teacher_lm_head_bias: optional ``[V]``.
        beta, temperature, labels, mask, ignore_index, num_items, hyperparameters: as :func:`kd_loss`.
        chunk_size: tokens per chunk; None picks ``max(1, 2**25 // V)``.

    Returns:
        Scalar float32 (float64 for float64 inputs).
    """
    return chunked_distill_loss_from_hidden(
        student_hidden, student_lm_head_weight, teacher_hidden, teacher_lm_head_weight, divergence,
        student_lm_head_bias=student_lm_head_bias, teacher_lm_head_bias=teacher_lm_head_bias, beta=beta,
        temperature=temperature, labels=labels, mask=mask, ignore_index=ignore_index, num_items=num_items,
        chunk_size=chunk_size, **hyperparameters,
    ).loss  # fmt: skip


def _check_same_tokens(student_hidden, student_weight, teacher_hidden, teacher_weight) -> None:
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student hidden {tuple(student_hidden.shape)} and teacher hidden {tuple(teacher_hidden.shape)} "
            "must cover the same tokens"
        )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"student vocab {student_weight.shape[0]} != teacher vocab {teacher_weight.shape[0]}; "
            "logit distillation needs a shared vocabulary"
        )
