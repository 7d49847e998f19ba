"""A sparse ``[rows, cols]`` matrix in CSR form, and ``probs @ W[:, cols]`` with reverse-mode autograd.

The projection from a student vocabulary to a teacher one (49k x 152k for SmolLM2 -> Qwen) is never held
dense (30 GB in float32): it is a CSR matrix with a few entries per row. :func:`sparse_project` computes
``probs [N, R] @ W[:, cols] [R, K] -> [N, K]`` with one sparse-dense product, and its backward is two
more (Griewank and Walther's rule for sparse reverse mode: the adjoint of ``X @ W`` is ``dY @ W^T`` for
``X``, and ``X^T @ dY`` sampled at W's nonzeros for W's values, never a dense ``[R, K]`` gradient).

W = SparseMatrix.from_entries(rows, cols, values, shape=(R, C))
sliced = W.columns(teacher_ids)              # W[:, teacher_ids], entries renumbered to 0..K-1
q = sparse_project(p_student, sliced)        # [N, K]; gradient reaches p_student
q = sparse_project(p, sliced, values)        # ... and ``values`` (a leaf tensor of W's nonzeros)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ColumnSlice", "SparseMatrix", "sparse_project"]


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the operations used here are tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


@dataclass(frozen=True)
class SparseMatrix:
    """CSR ``[rows, cols]``: ``crow [rows + 1]``, ``col [nnz]`` (sorted within each row), ``values [nnz]``."""

    crow: Tensor
    col: Tensor
    values: Tensor
    shape: tuple[int, int]

    @classmethod
    def from_entries(cls, rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> SparseMatrix:
        """From coordinates (any order; duplicates summed)."""
        rows, cols = rows.long(), cols.long()
        key = rows * shape[1] + cols
        unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
        summed = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, values)
        rows, cols = unique // shape[1], unique % shape[1]
        crow = torch.zeros(shape[0] + 1, dtype=torch.long)
        crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
        return cls(crow, cols, summed, (int(shape[0]), int(shape[1])))

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    def row_ids(self) -> Tensor:
        """``[nnz]`` the row of each stored entry."""
        return torch.repeat_interleave(torch.arange(self.shape[0]), self.crow.diff())

    def to(self, device: torch.device | str) -> SparseMatrix:
        return SparseMatrix(self.crow.to(device), self.col.to(device), self.values.to(device), self.shape)

    def to_dense(self) -> Tensor:
        """Dense ``[rows, cols]``: for tests on small sizes only."""
        return _csr(self.crow, self.col, self.values, self.shape).to_dense()

    def columns(self, cols: Tensor | None = None) -> ColumnSlice:
        """``W[:, cols]`` as a :class:`ColumnSlice` (``cols`` distinct ids; None: every column)."""
        device = self.col.device
        if cols is None:
            cols = torch.arange(self.shape[1], device=device)
        cols = cols.to(device).long()
        position = torch.full((self.shape[1],), -1, dtype=torch.long, device=device)
        position[cols] = torch.arange(len(cols), device=device)
        new_col = position[self.col]
        keep = new_col >= 0
        entry = keep.nonzero().squeeze(1)  # index into self.values of each kept entry
        rows = self.row_ids().to(device)[keep]
        new_col = new_col[keep]
        # CSR of the slice: sort by (row, new column); of its transpose: by (new column, row)
        order = torch.argsort(rows * len(cols) + new_col)
        rows, new_col, entry = rows[order], new_col[order], entry[order]
        crow = torch.zeros(self.shape[0] + 1, dtype=torch.long, device=device)
        crow[1:] = torch.bincount(rows, minlength=self.shape[0]).cumsum(0)
        t_order = torch.argsort(new_col * self.shape[0] + rows)
        t_crow = torch.zeros(len(cols) + 1, dtype=torch.long, device=device)
        t_crow[1:] = torch.bincount(new_col, minlength=len(cols)).cumsum(0)
        return ColumnSlice(
            crow, new_col, entry, t_crow, rows[t_order], t_order, (self.shape[0], len(cols)), self.values
        )


@dataclass(frozen=True)
class ColumnSlice:
    """``W[:, cols]`` as CSR ``[R, K]`` (``crow``, ``col``) and its transpose (``t_crow``, ``t_col``), sharing
    ``entry``: the index into the parent's ``values`` of each slice entry (CSR order); ``t_order`` permutes
    slice entries into transpose order."""

    crow: Tensor
    col: Tensor
    entry: Tensor
    t_crow: Tensor
    t_col: Tensor
    t_order: Tensor
    shape: tuple[int, int]
    values: Tensor


class _Project(torch.autograd.Function):
    """``probs [N, R] @ W_slice [R, K]``; gradients for ``probs`` and the slice's values."""

    @staticmethod
    def forward(ctx, probs: Tensor, values: Tensor, s: ColumnSlice) -> Tensor:
        values = values.to(probs.dtype)
        out = probs @ _csr(s.crow, s.col, values, s.shape)  # dense @ CSR: a contiguous [N, K]
        ctx.save_for_backward(probs, values)
        ctx.slice = s
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        probs, values = ctx.saved_tensors
        s = ctx.slice
        grad_probs = grad_values = None
        grad_out = grad_out.to(probs.dtype).contiguous()
        if ctx.needs_input_grad[0]:
            w_t = _csr(s.t_crow, s.t_col, values[s.t_order], (s.shape[1], s.shape[0]))
            grad_probs = grad_out @ w_t  # dY @ W^T, contiguous [N, R] (a transposed one slows what follows)
        if ctx.needs_input_grad[1]:
            pattern = _csr(s.crow, s.col, torch.zeros_like(values), s.shape)
            sampled = torch.sparse.sampled_addmm(pattern, probs.t().contiguous(), grad_out, beta=0.0)
            grad_values = sampled.values()  # (P^T @ dY) at W's nonzeros, in CSR order
        return grad_probs, grad_values, None


def sparse_project(probs: Tensor, sliced: ColumnSlice, values: Tensor | None = None) -> Tensor:
    """``probs [..., R] @ W[:, cols] -> [..., K]`` for the slice from :meth:`SparseMatrix.columns`.

    Args:
        probs: ``[..., R]`` (e.g. student probabilities); the product runs in its dtype (cast it to
            float32 first for bf16 inputs).
        sliced: the column slice of W.
        values: W's nonzero values ``[nnz of W]`` to differentiate through (e.g. an ``nn.Parameter`` when W
            is trained); None uses the stored values, without gradient.

    Returns:
        ``[..., K]``; gradients reach ``probs`` (through W^T) and ``values`` (at W's nonzeros only).
    """
    if probs.shape[-1] != sliced.shape[0]:
        raise ValueError(f"probs have {probs.shape[-1]} columns but W has {sliced.shape[0]} rows")
    parent = sliced.values if values is None else values
    flat = probs.reshape(-1, probs.shape[-1])
    out = _Project.apply(flat, parent[sliced.entry], sliced)
    return out.reshape(*probs.shape[:-1], sliced.shape[1])
