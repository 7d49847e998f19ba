"""Chunked logit losses: the value and gradients of a full-logits loss, one chunk of tokens at a time.

The machinery here (token rows, chunk loop, gradients computed in forward and scaled in backward) is
shared with the LM-head-fused losses in :mod:`.fused`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .divergences import Divergence, check_divergence, divergence_of_log_probs, log_probs
from .reduction import NumItems, check_same_shape, compute_dtype, denominator, valid_tokens

__all__ = ["chunked_kd_loss"]

CHUNK_ELEMENTS = 2**25  # default chunk: one [chunk, V] float32 tensor is 128 MiB


def token_rows(*tensors: Tensor) -> list[Tensor]:
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


def value_and_grads(fn: Callable[..., Tensor], tensors: Sequence[Tensor | None], needs: Sequence[bool]):
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
    total = torch.zeros((), dtype=compute_dtype(rows[0]), device=rows[0].device)
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
        return value_and_grads(self.loss_fn, [student_logits, teacher_logits], self.needs)

    def shared_grads(self) -> list[Tensor | None]:
        return []


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


def run_chunked(make_step, chunk_size: int, valid: Tensor | None, rows: list[Tensor], shared: list) -> Tensor:
    """Chunked sum through the autograd node when a gradient is wanted, else a plain loop."""
    tensors = [*rows, *shared]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _ChunkedSum.apply(make_step, chunk_size, valid, len(rows), *tensors)
    step = make_step(tensors, [False] * len(tensors))
    with torch.no_grad():
        return _chunked_sum(step, chunk_size, valid, rows, [False] * len(rows))[0]


def scaled_divergence_sum(student_logits, teacher_logits, *, spec, hyper, temperature, scale):
    """``scale * sum_tokens divergence`` of one chunk ``[n, V]``; ``spec, hyper`` from :func:`check_divergence`."""
    log_s, log_t = log_probs(student_logits, temperature), log_probs(teacher_logits, temperature)
    return divergence_of_log_probs(spec, log_s, log_t, hyper).sum() * scale


def counted_rows(
    tensors: Sequence[Tensor],
    labels: Tensor | None,
    mask: Tensor | None,
    ignore_index: int,
    num_items: NumItems,
) -> tuple[list[Tensor], Tensor | None, Tensor]:
    """Row views ``[B', S', X]`` of ``tensors`` ([..., X], one token shape), the counted tokens
    ``[B', S']`` (None: all) and the divisor of the token sum, a scalar in the compute dtype."""
    first = tensors[0]
    valid = valid_tokens(first.shape[:-1], labels, mask, ignore_index)
    rows = token_rows(*tensors)
    valid = None if valid is None else valid.reshape(rows[0].shape[:2])
    like = torch.empty((), dtype=compute_dtype(first), device=first.device)
    return rows, valid, denominator(valid, math.prod(first.shape[:-1]), num_items, like)


def chunk_rows(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // vocab)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    return chunk_size


def chunked_kd_loss(
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
    chunk_size: int | None = None,
    **hyperparameters,
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
        divergence, beta, temperature, labels, mask, ignore_index, num_items, hyperparameters: as
            :func:`kd_loss`.
        chunk_size: tokens per chunk; None picks ``max(1, 2**25 // V)`` (128 MiB per
            ``[chunk, V]`` float32 tensor, 256 tokens at V = 131072).

    Returns:
        Scalar float32 (float64 for float64 logits).
    """
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    spec, hyper = check_divergence(divergence, beta, temperature, hyperparameters)
    rows, valid, divisor = counted_rows(
        [student_logits, teacher_logits], labels, mask, ignore_index, num_items
    )
    scale = temperature**2 / divisor
    loss_fn = partial(scaled_divergence_sum, spec=spec, hyper=hyper, temperature=temperature, scale=scale)
    make_step = partial(_LogitStep, loss_fn)
    return run_chunked(make_step, chunk_rows(chunk_size, student_logits.shape[-1]), valid, rows, [])
