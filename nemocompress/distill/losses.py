"""Knowledge-distillation losses as plain functions of tensors.

Notation: ``...`` is any leading token shape (``[B, S]`` or ``[N]``), ``V`` the vocabulary,
``D`` a hidden width. Conventions shared by every logit loss here:

- Probabilities come from ``softmax(logits / T)`` computed in float32 (float64 when the
  logits are float64), whatever the input dtype. The loss is multiplied by ``T**2``
  (Hinton et al., 2015) so that gradient magnitudes do not shrink as ``T`` grows; at the
  default ``T = 1`` this is a no-op.
- A token counts when ``labels != ignore_index`` and ``mask`` is true (either may be
  omitted; with both, both must hold). Masked positions never enter the computation, so
  their logits may hold anything, even NaN.
- Reduction: the sum over counted tokens divided by the number of counted tokens, or by
  ``num_items`` when given. Pass the global count of counted tokens over all micro-batches
  of an optimizer step as ``num_items`` and sum the micro-batch losses: the gradients then
  equal those of one big batch. When nothing is counted the loss is 0 (not NaN) and the
  gradients are zero.
- Logits of either model may be ``-inf`` (e.g. a masked vocabulary entry): impossible tokens
  contribute 0, not NaN. A student ``-inf`` where the teacher has mass gives a huge loss
  (log-probabilities are floored at the dtype's lowest value), as it should.

The chunked variants compute the same values, over chunks of tokens, without ever holding
both models' ``[tokens, V]`` float32 log-probabilities; see :func:`chunked_kd_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "Divergence",
    "token_divergence",
    "kd_loss",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "total_variation",
    "topk_forward_kl",
    "cross_entropy_loss",
    "chunked_kd_loss",
    "chunked_kd_loss_from_hidden",
    "cosine_hidden_loss",
    "mse_hidden_loss",
    "mapped_hidden_loss",
    "HiddenStateProjection",
    "dynamic_alpha",
]

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "tvd"]
NumItems = int | float | Tensor | None

_DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")
_CHUNK_ELEMENTS = 2**25  # default chunk: one [chunk, V] float32 tensor is 128 MiB


# --------------------------------------------------------------------------- per-token divergences


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _FiniteLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits / T)`` over the last dim in float32 (float64 kept), -inf raised to the lowest float.

    Raising -inf log-probabilities to a finite value changes no probability (exp gives 0 either
    way) but keeps ``p * (log p - log q)`` at 0 instead of NaN where a token is impossible. The
    clamp happens in place and the backward reads only ``exp(output)``, so this costs what
    ``log_softmax`` costs, with no extra ``[tokens, V]`` tensor and no cast or division node.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: float) -> Tensor:
        x = logits.to(_compute_dtype(logits))
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


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    """``[..., V]`` logits -> float32 (float64 kept) log-probabilities of ``softmax(logits / T)``."""
    return _FiniteLogSoftmax.apply(logits, temperature)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last dimension, from log-probabilities: [..., V] -> [...]."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _jsd(log_s: Tensor, log_t: Tensor, beta: float) -> Tensor:
    """TRL's generalized JSD: beta * KL(t || m) + (1 - beta) * KL(s || m), m = beta*t + (1-beta)*s."""
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    divergence: Divergence = "forward_kl",
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Divergence between teacher and student at every token, before masking, ``T**2`` and reduction.

    Args:
        student_logits: ``[..., V]``.
        teacher_logits: ``[..., V]``.
        divergence: ``"forward_kl"`` KL(p_teacher || p_student) (the default, as in Minitron);
            ``"reverse_kl"`` KL(p_student || p_teacher); ``"jsd"`` generalized Jensen-Shannon
            with ``beta`` (TRL/GKD convention, see :func:`generalized_jsd`); ``"tvd"`` total
            variation 0.5 * sum |p_teacher - p_student|.
        beta: JSD interpolation weight in [0, 1]; ignored by the other divergences.
        temperature: softmax temperature ``T > 0``.

    Returns:
        ``[...]`` float32 (float64 for float64 logits).
    """
    _check_divergence(divergence, beta, temperature)
    log_s = _log_probs(student_logits, temperature)
    log_t = _log_probs(teacher_logits, temperature)
    if divergence == "forward_kl":
        return _kl(log_t, log_s)
    if divergence == "reverse_kl":
        return _kl(log_s, log_t)
    if divergence == "jsd":
        return _jsd(log_s, log_t, beta)
    return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)


# --------------------------------------------------------------------------- masking and reduction


def _valid_tokens(
    token_shape: torch.Size, labels: Tensor | None, mask: Tensor | None, ignore_index: int
) -> Tensor | None:
    """Boolean ``[...]`` of counted tokens, or None when every token counts."""
    valid = None
    if labels is not None:
        _check_token_shape("labels", labels, token_shape)
        valid = labels != ignore_index
    if mask is not None:
        _check_token_shape("mask", mask, token_shape)
        valid = mask.bool() if valid is None else valid & mask.bool()
    return valid


def _denominator(valid: Tensor | None, num_tokens: int, num_items: NumItems, like: Tensor) -> Tensor:
    """Divisor of the token sum: ``num_items``, else the count of counted tokens; 0 becomes 1."""
    if num_items is not None:
        count = torch.as_tensor(num_items, device=like.device)
    elif valid is not None:
        count = valid.sum()
    else:
        count = torch.tensor(num_tokens, device=like.device)
    count = count.to(like.dtype)
    return torch.where(count > 0, count, torch.ones_like(count))


def _masked_mean(
    per_token_fn: Callable[..., Tensor],
    tensors: Sequence[Tensor],
    valid: Tensor | None,
    num_items: NumItems,
) -> Tensor:
    """Apply ``per_token_fn`` to the counted rows of ``tensors`` ([..., *]) and reduce."""
    num_tokens = math.prod(tensors[0].shape[:-1])
    rows = [t if valid is None else t[valid] for t in tensors]
    total = per_token_fn(*rows).sum()
    return total / _denominator(valid, num_tokens, num_items, total)


# --------------------------------------------------------------------------- logit losses


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    divergence: Divergence = "forward_kl",
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
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

    Returns:
        Scalar float32 (float64 for float64 logits). Same value as :func:`chunked_kd_loss`.
    """
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    valid = _valid_tokens(student_logits.shape[:-1], labels, mask, ignore_index)
    per_token = partial(token_divergence, divergence=divergence, beta=beta, temperature=temperature)
    return temperature**2 * _masked_mean(per_token, [student_logits, teacher_logits], valid, num_items)


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
        student_logits, teacher_logits, "forward_kl", temperature=temperature, labels=labels,
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
        student_logits, teacher_logits, "reverse_kl", temperature=temperature, labels=labels,
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
    _check_same_shape(
        "teacher_topk_logits", teacher_topk_logits, "teacher_topk_indices", teacher_topk_indices
    )
    if teacher_topk_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher top-k has token shape {tuple(teacher_topk_logits.shape[:-1])} but the student logits "
            f"have {tuple(student_logits.shape[:-1])}; pass the cache rows for the same tokens"
        )
    valid = _valid_tokens(student_logits.shape[:-1], labels, mask, ignore_index)

    def per_token(student: Tensor, values: Tensor, indices: Tensor) -> Tensor:
        log_s = _log_probs(student, temperature).gather(-1, indices.long())
        return _kl(_log_probs(values, temperature), log_s)

    tensors = [student_logits, teacher_topk_logits, teacher_topk_indices]
    return temperature**2 * _masked_mean(per_token, tensors, valid, num_items)


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
    valid = _valid_tokens(student_logits.shape[:-1], labels, None, ignore_index)

    def per_token(logits: Tensor, targets: Tensor) -> Tensor:
        return -_log_probs(logits, 1.0).gather(-1, targets.long()).squeeze(-1)

    return _masked_mean(per_token, [student_logits, labels.unsqueeze(-1)], valid, num_items)


# --------------------------------------------------------------------------- chunked logit losses


def _token_rows(*tensors: Tensor) -> list[Tensor]:
    """Views ``[..., X] -> [B', S', X]`` sharing one token layout, without copying when possible.

    Flattening the token dims of a non-contiguous tensor (e.g. shifted logits ``z[:, :-1]``)
    would copy all of it; in that case the rows stay per batch element ``[B, S, X]``.
    """
    lead = tensors[0].shape[:-1]
    if len(lead) == 0:
        raise ValueError("expected at least one token dimension before the last (feature) dimension")
    try:
        return [t.view(1, -1, t.shape[-1]) for t in tensors]
    except RuntimeError:
        return [t.reshape(-1, lead[-1], t.shape[-1]) for t in tensors]


def _row_chunks(batch: int, seq: int, size: int):
    for b in range(batch):
        for start in range(0, seq, size):
            yield b, slice(start, min(start + size, seq))


def _value_and_grads(fn: Callable[..., Tensor], tensors: Sequence[Tensor | None], needs: Sequence[bool]):
    """``fn(*tensors)`` and its gradient with respect to each tensor flagged in ``needs``."""
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(tensors, needs)]
        value = fn(*leaves)
        wanted = [leaf for leaf, need in zip(leaves, needs) if need]
        found = iter(torch.autograd.grad(value, wanted) if wanted else ())
    return value.detach(), [next(found) if need else None for need in needs]


def _chunked_sum(step, chunk_size: int, valid: Tensor | None, rows: Sequence[Tensor], needs: Sequence[bool]):
    """Sum ``step(*row_chunks)`` over token chunks of ``rows`` ([B', S', *]).

    ``step`` returns a chunk's loss and the gradients of its row pieces; they are written into
    a buffer of each row tensor's shape as the sum runs. Only one chunk's activations are
    alive at any time.
    """
    batch, seq = rows[0].shape[:2]
    if valid is None and batch == 1 and seq <= chunk_size:  # a single chunk: no buffer, no copy
        value, grads = step(*(t[0] for t in rows))
        return value, [None if g is None else g.unsqueeze(0) for g in grads]
    grads = [_row_grad_buffer(t, masked=valid is not None) if need else None for t, need in zip(rows, needs)]
    total = torch.zeros((), dtype=_compute_dtype(rows[0]), device=rows[0].device)
    for b, span in _row_chunks(batch, seq, chunk_size):
        pieces = [t[b, span] for t in rows]
        index = None
        if valid is not None:
            index = valid[b, span].nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            pieces = [p.index_select(0, index) for p in pieces]
        value, chunk_grads = step(*pieces)
        total += value
        for buffer, g in zip(grads, chunk_grads):
            if buffer is None:
                continue
            if index is None:
                buffer[b, span].copy_(g)
            else:
                buffer[b, span].index_copy_(0, index, g)
    return total, grads


def _row_grad_buffer(t: Tensor, *, masked: bool) -> Tensor:
    if masked:
        return torch.zeros_like(t, memory_format=torch.contiguous_format)
    return torch.empty_like(t, memory_format=torch.contiguous_format)  # every row gets written


class _LogitStep:
    """One chunk of :func:`chunked_kd_loss`: (student rows, teacher rows) -> loss, their gradients."""

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor], tensors, needs: Sequence[bool]) -> None:
        self.loss_fn, self.needs = loss_fn, list(needs)

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor):
        return _value_and_grads(self.loss_fn, [student_logits, teacher_logits], self.needs)

    def shared_grads(self) -> list[Tensor | None]:
        return []


class _HiddenStep:
    """One chunk of :func:`chunked_kd_loss_from_hidden`: LM heads, loss, then the heads' backward by hand.

    Doing the linear backward by hand lets the weight and bias gradients accumulate in place
    (``addmm_``) instead of allocating a fresh ``[V, D]`` gradient per chunk.
    """

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor], tensors, needs: Sequence[bool]) -> None:
        _, _, *self.heads = tensors  # student W, b, teacher W, b
        self.loss_fn, self.needs = loss_fn, list(needs)  # hs, ht, Ws, bs, Wt, bt
        self.sums: list[Tensor | None] = [None] * 4

    def __call__(self, student_hidden: Tensor, teacher_hidden: Tensor):
        ws, bs, wt, bt = self.heads
        with torch.no_grad():
            logits = [F.linear(student_hidden, ws, bs), F.linear(teacher_hidden, wt, bt)]
        need_logits = [any(self.needs[i] for i in (0, 2, 3)), any(self.needs[i] for i in (1, 4, 5))]
        value, logit_grads = _value_and_grads(self.loss_fn, logits, need_logits)
        hidden_grads = [
            self._head_backward(logit_grads[0], student_hidden, slot=0, need_hidden=self.needs[0]),
            self._head_backward(logit_grads[1], teacher_hidden, slot=2, need_hidden=self.needs[1]),
        ]
        return value, hidden_grads

    def _head_backward(self, grad_logits: Tensor | None, hidden: Tensor, *, slot: int, need_hidden: bool):
        """Accumulate dL/dW = g^T h and dL/db = sum g for one head; return dL/dh = g W."""
        if grad_logits is None:
            return None
        if self.needs[2 + slot]:
            w_sum = self.sums[slot]
            self.sums[slot] = (
                grad_logits.t() @ hidden if w_sum is None else w_sum.addmm_(grad_logits.t(), hidden)
            )
        if self.needs[3 + slot]:
            b_sum = self.sums[slot + 1]
            self.sums[slot + 1] = grad_logits.sum(0) if b_sum is None else b_sum.add_(grad_logits.sum(0))
        return grad_logits @ self.heads[slot] if need_hidden else None

    def shared_grads(self) -> list[Tensor | None]:
        """Gradients of (Ws, bs, Wt, bt); zeros where needed but every token was masked."""
        return [
            (g if g is not None else torch.zeros_like(t)) if need else None
            for g, t, need in zip(self.sums, self.heads, self.needs[2:])
        ]


class _ChunkedSum(torch.autograd.Function):
    """Autograd node for :func:`_chunked_sum`: gradients are computed in forward, kept, scaled in backward."""

    @staticmethod
    def forward(ctx, make_step, chunk_size, valid, num_rows, *tensors):
        needs = ctx.needs_input_grad[4:]
        step = make_step(tensors, needs)
        total, row_grads = _chunked_sum(step, chunk_size, valid, tensors[:num_rows], needs[:num_rows])
        ctx.grads = [*row_grads, *step.shared_grads()]
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if ctx.grads is None:
            raise RuntimeError(
                "a chunked KD loss can be backpropagated once; recompute it instead of retain_graph"
            )
        grads, ctx.grads = ctx.grads, None
        if not bool(grad_output == 1):
            grads = [None if g is None else g * grad_output.to(g.dtype) for g in grads]
        return None, None, None, None, *grads


def _run_chunked(
    make_step, chunk_size: int, valid: Tensor | None, rows: list[Tensor], shared: list
) -> Tensor:
    """Chunked sum through the autograd node when a gradient is wanted, else a plain loop."""
    tensors = [*rows, *shared]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _ChunkedSum.apply(make_step, chunk_size, valid, len(rows), *tensors)
    step = make_step(tensors, [False] * len(tensors))
    with torch.no_grad():
        return _chunked_sum(step, chunk_size, valid, rows, [False] * len(rows))[0]


def _scaled_divergence_sum(student_logits, teacher_logits, *, divergence, beta, temperature, scale):
    per_token = token_divergence(
        student_logits, teacher_logits, divergence, beta=beta, temperature=temperature
    )
    return per_token.sum() * scale


def _chunk_rows(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // vocab)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    return chunk_size


def chunked_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    divergence: Divergence = "forward_kl",
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    num_items: NumItems = None,
    chunk_size: int | None = None,
) -> Tensor:
    """:func:`kd_loss` computed over chunks of ``chunk_size`` tokens, with the same value and gradients.

    Only one chunk's ``[chunk, V]`` float32 activations exist at a time. The gradient with
    respect to each logits tensor that requires grad is computed chunk by chunk during the
    forward pass and stored in a buffer of the logits' own shape and dtype (the gradient
    autograd would produce anyway); backward only scales it. So nothing is recomputed and no
    per-chunk activation outlives its chunk. The graph supports one backward pass (no
    ``retain_graph`` re-use) and no double backward. Under ``torch.no_grad`` it only sums.
    With a mask, each chunk picks its counted rows with ``nonzero`` (one host sync per chunk
    on GPU).

    Args:
        student_logits: ``[..., V]``, typically bf16 from the LM head; may be a
            non-contiguous view such as ``logits[:, :-1]`` (it is not copied).
        teacher_logits: ``[..., V]``.
        divergence, beta, temperature, labels, mask, ignore_index, num_items: as :func:`kd_loss`.
        chunk_size: tokens per chunk; None picks ``max(1, 2**25 // V)`` (128 MiB per
            ``[chunk, V]`` float32 tensor, 256 tokens at V = 131072).

    Returns:
        Scalar float32 (float64 for float64 logits).
    """
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_divergence(divergence, beta, temperature)
    valid = _valid_tokens(student_logits.shape[:-1], labels, mask, ignore_index)
    rows = _token_rows(student_logits, teacher_logits)
    valid = None if valid is None else valid.reshape(rows[0].shape[:2])
    num_tokens = math.prod(student_logits.shape[:-1])
    like = torch.empty((), dtype=_compute_dtype(student_logits), device=student_logits.device)
    scale = temperature**2 / _denominator(valid, num_tokens, num_items, like)
    loss_fn = partial(
        _scaled_divergence_sum, divergence=divergence, beta=beta, temperature=temperature, scale=scale
    )
    make_step = partial(_LogitStep, loss_fn)
    return _run_chunked(make_step, _chunk_rows(chunk_size, student_logits.shape[-1]), valid, rows, [])


def chunked_kd_loss_from_hidden(
    student_hidden: Tensor,
    student_lm_head_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_lm_head_weight: Tensor,
    divergence: Divergence = "forward_kl",
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
        beta, temperature, labels, mask, ignore_index, num_items: as :func:`kd_loss`.
        chunk_size: tokens per chunk; None picks ``max(1, 2**25 // V)``.

    Returns:
        Scalar float32 (float64 for float64 inputs).
    """
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student hidden {tuple(student_hidden.shape)} and teacher hidden {tuple(teacher_hidden.shape)} "
            "must cover the same tokens"
        )
    if student_lm_head_weight.shape[0] != teacher_lm_head_weight.shape[0]:
        raise ValueError(
            f"student vocab {student_lm_head_weight.shape[0]} != teacher vocab {teacher_lm_head_weight.shape[0]}; "
            "logit distillation needs a shared vocabulary"
        )
    _check_divergence(divergence, beta, temperature)
    valid = _valid_tokens(student_hidden.shape[:-1], labels, mask, ignore_index)
    rows = _token_rows(student_hidden, teacher_hidden)
    valid = None if valid is None else valid.reshape(rows[0].shape[:2])
    num_tokens = math.prod(student_hidden.shape[:-1])
    like = torch.empty((), dtype=_compute_dtype(student_hidden), device=student_hidden.device)
    scale = temperature**2 / _denominator(valid, num_tokens, num_items, like)
    loss_fn = partial(
        _scaled_divergence_sum, divergence=divergence, beta=beta, temperature=temperature, scale=scale
    )
    make_step = partial(_HiddenStep, loss_fn)
    heads = [student_lm_head_weight, student_lm_head_bias, teacher_lm_head_weight, teacher_lm_head_bias]
    return _run_chunked(
        make_step, _chunk_rows(chunk_size, student_lm_head_weight.shape[0]), valid, rows, heads
    )


# --------------------------------------------------------------------------- intermediate losses


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
    _check_same_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden)
    valid = _valid_tokens(student_hidden.shape[:-1], labels, mask, ignore_index)

    def per_token(s: Tensor, t: Tensor) -> Tensor:
        dtype = _compute_dtype(s)
        return 1.0 - F.cosine_similarity(s.to(dtype), t.to(dtype), dim=-1, eps=1e-8)

    return _masked_mean(per_token, [student_hidden, teacher_hidden], valid, num_items)


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
    _check_same_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden)
    valid = _valid_tokens(student_hidden.shape[:-1], labels, mask, ignore_index)

    def per_token(s: Tensor, t: Tensor) -> Tensor:
        dtype = _compute_dtype(s)
        return (s.to(dtype) - t.to(dtype)).pow(2).mean(-1)

    return _masked_mean(per_token, [student_hidden, teacher_hidden], valid, num_items)


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
    kind: Literal["cosine", "mse"] = "cosine",
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
        kind: ``"cosine"`` (:func:`cosine_hidden_loss`) or ``"mse"`` (:func:`mse_hidden_loss`).
        projection: applied to every student state first (shared, as in Minitron), e.g. a
            :class:`HiddenStateProjection`; None when widths already match.
        labels, mask, ignore_index, num_items: as :func:`kd_loss`.

    Returns:
        Scalar: the mean over pairs of the per-pair loss.
    """
    if not layer_map:
        raise ValueError("layer_map is empty: give at least one (student_layer, teacher_layer) pair")
    if kind not in ("cosine", "mse"):
        raise ValueError(f"kind must be 'cosine' or 'mse', got {kind!r}")
    loss_fn = cosine_hidden_loss if kind == "cosine" else mse_hidden_loss
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


# --------------------------------------------------------------------------- argument checks


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")


def _check_token_shape(name: str, t: Tensor, token_shape: torch.Size) -> None:
    if t.shape != token_shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected the token shape {tuple(token_shape)}")


def _check_divergence(divergence: str, beta: float, temperature: float) -> None:
    if divergence not in _DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {_DIVERGENCES}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
