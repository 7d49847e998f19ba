"""Tokenizer transplant: give a model a new tokenizer, each new token's embedding a mixture of old ones.

The projection W from the new tokenizer to the old one (:func:`~nemocompress.xtoken.build_projection`
with the new tokenizer as "student") says which old tokens spell each new token: a new token that is an
old one keeps its row; one that the old tokenizer splits gets the W-weighted mixture of its pieces' rows
(0.9, 0.09, ... for the first, second, ... piece). The input embedding and, when it is not tied, the LM
head are rebuilt this way; a new token with no entry in W gets the mean row.

model = load_causal_lm("smollm2")
projection = transplant_embeddings_(model, build_projection(new_tokenizer, old_tokenizer))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .projection import Projection
from .sparse import SparseMatrix, sparse_project
from .vocab import XTokenError

__all__ = ["mixed_rows", "transplant_embeddings_"]


def mixed_rows(old: Tensor, projection: Projection) -> Tensor:
    """``[V_new, D]``: row n is ``sum_t W[n, t] * old[t]`` for W ``[V_new, V_old]``; the mean old row where
    W's row is empty."""
    w = projection.matrix
    if w.shape[1] > old.shape[0]:
        raise XTokenError(
            f"W maps to {w.shape[1]} old tokens but the model has {old.shape[0]} embedding rows"
        )
    weights = old.detach().float()[: w.shape[1]]
    # W [V_new, V_old] @ old [V_old, D] is (old^T [D, V_old] @ W^T)^T: the sparse product of sparse.py
    mixed = sparse_project(weights.t().contiguous(), _transposed(projection)).t()
    empty = w.crow.diff() == 0
    mixed[empty] = weights.mean(0)
    return mixed.to(old.dtype)


def _transposed(projection: Projection):
    """W^T as the column slice ``[V_old, V_new]`` that :func:`sparse_project` multiplies by."""
    w = projection.matrix
    return SparseMatrix.from_entries(w.col, w.row_ids(), w.values, (w.shape[1], w.shape[0])).columns()


@torch.no_grad()
def transplant_embeddings_(model: nn.Module, projection: Projection, pad_to: int | None = None) -> nn.Module:
    """Resize ``model``'s vocabulary to W's new tokens (``pad_to`` rows when larger) and fill the input
    embedding (and an untied LM head) with the mixtures of :func:`mixed_rows`. In place; returns ``model``."""
    new_size = max(projection.shape[0], pad_to or 0)
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    new_embed = mixed_rows(embed.weight, projection)
    new_head = None if head is None or tied else mixed_rows(head.weight, projection)
    bias = None if head is None or tied or getattr(head, "bias", None) is None else head.bias
    new_bias = None if bias is None else mixed_rows(bias[:, None], projection)[:, 0]
    model.resize_token_embeddings(new_size, mean_resizing=False)
    embed = model.get_input_embeddings()
    embed.weight[: len(new_embed)] = new_embed
    embed.weight[len(new_embed) :] = new_embed.mean(0)
    if new_head is not None:
        head = model.get_output_embeddings()
        head.weight[: len(new_head)] = new_head
        head.weight[len(new_head) :] = new_head.mean(0)
        if new_bias is not None and getattr(head, "bias", None) is not None and len(head.bias) == new_size:
            head.bias[: len(new_bias)] = new_bias
    return model
