"""Masking and reduction shared by every loss: which tokens count, and what their sum is divided by.

A token counts when ``labels != ignore_index`` and ``mask`` is true (either may be omitted). The loss
is the sum over counted tokens divided by ``num_items`` when given, else by the number of counted
tokens; a divisor of 0 becomes 1, so a loss with nothing counted is 0 (not NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

NumItems = int | float | Tensor | None


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32: the dtype every loss computes in."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def valid_tokens(
    token_shape: torch.Size, labels: Tensor | None, mask: Tensor | None, ignore_index: int
) -> Tensor | None:
    """Boolean ``[...]`` of counted tokens, or None when every token counts."""
    valid = None
    if labels is not None:
        check_token_shape("labels", labels, token_shape)
        valid = labels != ignore_index
    if mask is not None:
        check_token_shape("mask", mask, token_shape)
        valid = mask.bool() if valid is None else valid & mask.bool()
    return valid


def denominator(valid: Tensor | None, num_tokens: int, num_items: NumItems, like: Tensor) -> Tensor:
    """Divisor of the token sum: ``num_items``, else the count of counted tokens; 0 becomes 1."""
    if num_items is not None:
        count = torch.as_tensor(num_items, device=like.device)
    elif valid is not None:
        count = valid.sum()
    else:
        count = torch.tensor(num_tokens, device=like.device)
    count = count.to(like.dtype)
    return torch.where(count > 0, count, torch.ones_like(count))


def masked_mean(
    per_token_fn: Callable[..., Tensor],
    tensors: Sequence[Tensor],
    valid: Tensor | None,
    num_items: NumItems,
) -> Tensor:
    """Apply ``per_token_fn`` to the counted rows of ``tensors`` ([..., *]) and reduce."""
    num_tokens = math.prod(tensors[0].shape[:-1])
    rows = [t if valid is None else t[valid] for t in tensors]
    total = per_token_fn(*rows).sum()
    return total / denominator(valid, num_tokens, num_items, total)


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")


def check_token_shape(name: str, t: Tensor, token_shape: torch.Size) -> None:
    if t.shape != token_shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected the token shape {tuple(token_shape)}")
