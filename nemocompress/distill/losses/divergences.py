"""Per-token divergences between two distributions over the vocabulary, and their registration.

Probabilities come from ``softmax(logits / T)`` in float32 (float64 kept); ``-inf`` logits (an
impossible token) contribute 0, not NaN. Each full-vocabulary divergence is registered here
(:func:`~nemocompress.distill.losses.registry.register_kd_loss`) under its one name; the plain,
chunked and LM-head-fused losses all dispatch on that name.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .reduction import compute_dtype
from .registry import KDLossSpec, kd_loss_spec, register_kd_loss

__all__ = ["Divergence", "token_divergence"]

Divergence = str  # a registered KD loss name with a per-token function (see kd_loss_names), or an alias


class _FiniteLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits / T)`` over the last dim in float32 (float64 kept), -inf raised to the lowest float.

    Raising -inf log-probabilities to a finite value changes no probability (exp gives 0 either
    way) but keeps ``p * (log p - log q)`` at 0 instead of NaN where a token is impossible. The
    clamp happens in place and the backward reads only ``exp(output)``, so this costs what
    ``log_softmax`` costs, with no extra ``[tokens, V]`` tensor and no cast or division node.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: float) -> Tensor:
        x = logits.to(compute_dtype(logits))
        if temperature != 1.0:
            x = x / temperature
        out = torch.log_softmax(x, dim=-1)
        out.clamp_(min=torch.finfo(out.dtype).min)
        ctx.save_for_backward(out)
        ctx.temperature, ctx.input_dtype = temperature, logits.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        (out,) = ctx.saved_tensors
        grad = torch._log_softmax_backward_data(grad_output, out, -1, out.dtype)
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad.to(ctx.input_dtype), None


def log_probs(logits: Tensor, temperature: float) -> Tensor:
    """``[..., V]`` logits -> float32 (float64 kept) log-probabilities of ``softmax(logits / T)``."""
    return _FiniteLogSoftmax.apply(logits, temperature)


def kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last dimension, from log-probabilities: [..., V] -> [...]."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _forward_kl(log_s: Tensor, log_t: Tensor) -> Tensor:
    return kl(log_t, log_s)


def _reverse_kl(log_s: Tensor, log_t: Tensor) -> Tensor:
    return kl(log_s, log_t)


def _jsd(log_s: Tensor, log_t: Tensor, beta: float = 0.5) -> Tensor:
    """TRL's generalized JSD: beta * KL(t || m) + (1 - beta) * KL(s || m), m = beta*t + (1-beta)*s."""
    if beta == 0.0:
        return kl(log_t, log_s)
    if beta == 1.0:
        return kl(log_s, log_t)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
    return beta * kl(log_t, log_m) + (1.0 - beta) * kl(log_s, log_m)


def _tvd(log_s: Tensor, log_t: Tensor) -> Tensor:
    return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)


register_kd_loss(
    KDLossSpec(
        "kl",
        _forward_kl,
        aliases=("forward_kl",),
        summary="forward KL(teacher || student), the default (Minitron)",
    )
)
register_kd_loss(
    KDLossSpec("rkl", _reverse_kl, aliases=("reverse_kl",), summary="reverse KL(student || teacher)")
)
register_kd_loss(
    KDLossSpec(
        "jsd",
        _jsd,
        hyperparameters={"beta": "jsd_beta"},
        summary="generalized Jensen-Shannon with weight beta (GKD / TRL)",
    )
)
register_kd_loss(KDLossSpec("tvd", _tvd, summary="total variation 0.5 * sum |p_teacher - p_student|"))  # fmt: skip


def full_vocab_spec(divergence: str) -> KDLossSpec:
    """The registered spec of ``divergence``; one that does not read full teacher logits raises ValueError."""
    spec = kd_loss_spec(divergence)
    if spec.per_token is None:
        raise ValueError(
            f"{spec.name!r} reads the teacher's top-k logits, not its full distribution: use topk_forward_kl"
        )
    return spec


def divergence_of_log_probs(spec: KDLossSpec, log_s: Tensor, log_t: Tensor, hyper: dict) -> Tensor:
    """``spec``'s per-token divergence of log-probabilities ``[..., V] -> [...]``; ``hyper`` from
    :func:`check_divergence`."""
    return spec.per_token(log_s, log_t, **hyper)


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    divergence: Divergence = "kl",
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    **hyperparameters,
) -> Tensor:
    """Divergence between teacher and student at every token, before masking, ``T**2`` and reduction.

    Args:
        student_logits: ``[..., V]``.
        teacher_logits: ``[..., V]``.
        divergence: a registered name (:func:`~nemocompress.distill.losses.kd_loss_names`):
            ``"kl"`` KL(p_teacher || p_student) (the default, as in Minitron; alias
            ``"forward_kl"``); ``"rkl"`` KL(p_student || p_teacher) (alias ``"reverse_kl"``);
            ``"jsd"`` generalized Jensen-Shannon with ``beta`` (TRL/GKD convention, see
            :func:`generalized_jsd`); ``"tvd"`` total variation 0.5 * sum |p_teacher - p_student|.
        beta: JSD interpolation weight in [0, 1]; ignored by the other divergences.
        temperature: softmax temperature ``T > 0``.
        hyperparameters: further keywords of a registered divergence (its ``KDLossSpec.hyperparameters``).

    Returns:
        ``[...]`` float32 (float64 for float64 logits).
    """
    spec, hyper = check_divergence(divergence, beta, temperature, hyperparameters)
    log_s = log_probs(student_logits, temperature)
    log_t = log_probs(teacher_logits, temperature)
    return divergence_of_log_probs(spec, log_s, log_t, hyper)


def check_divergence(
    divergence: str, beta: float, temperature: float, hyperparameters: dict | None = None
) -> tuple[KDLossSpec, dict]:
    """Validate the arguments every full-vocabulary loss takes; return the divergence's spec and the
    keywords its per-token function takes (``beta`` when it declares it, and ``hyperparameters``)."""
    spec = full_vocab_spec(divergence)
    unknown = sorted(set(hyperparameters or {}) - set(spec.hyperparameters))
    if unknown:
        takes = ", ".join(spec.hyperparameters) or "none"
        raise ValueError(
            f"divergence {spec.name!r} takes no {', '.join(unknown)} (its hyper-parameters: {takes})"
        )
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    hyper = {"beta": beta} if "beta" in spec.hyperparameters else {}
    return spec, {**hyper, **(hyperparameters or {})}
