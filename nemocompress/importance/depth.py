"""Layer (depth) importance: what the model loses without a layer, or without a window of k layers.

One full forward per batch caches the residual stream at every layer's input. The model without layers
j..j+k-1 then needs only layers j+k..L-1: the layers before are skipped outright (they return their input
at no cost) and the last dropped layer returns the cached input of layer j. Scoring all L windows costs
about L/2 full forwards instead of L.

Metrics, all relative to the full model on the same tokens (higher = more important = keep):
``nmse`` sum (M_full - M_without)^2 / sum M_full^2 over logits; ``kl`` KL(p_full || p_without) per token;
``hidden_mse`` MSE of the last hidden state (the LM head's input); ``lm_loss`` the increase of the
next-token loss; ``cosine`` block importance 1 - cos(input, output) of the window (full pass only).

Only ``kl`` and ``lm_loss`` (:data:`HEAD_METRICS`) run the LM head for every window. For a linear head
``nmse`` needs no logits: with d the change of the head's input, |W d|^2 = d^T (W^T W) d, an H x H product
per token instead of a V x H one (the head is a large share of a forward when the vocabulary is large
against the model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import Adapter
from ..arch.masking import overridden_forwards

__all__ = [
    "LAYER_METRICS",
    "HEAD_METRICS",
    "CHEAP_METRICS",
    "LayerStats",
    "layer_stats",
    "finalize_layer_scores",
    "iterative_layer_ranking",
]

LAYER_METRICS = ("nmse", "kl", "hidden_mse", "cosine", "lm_loss")
HEAD_METRICS = ("kl", "lm_loss")  # need the logits of every window
CHEAP_METRICS = tuple(m for m in LAYER_METRICS if m not in HEAD_METRICS)
LayerStats = dict[str, torch.Tensor]  # additive sums: "{metric}_num", "{metric}_den", one entry per window


def _identity(*args, **kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _constant(value: torch.Tensor):
    return lambda *args, **kwargs: value


def _forward(model: nn.Module, batch: torch.Tensor, layers: dict, lm_head: nn.Module, logits: bool):
    """(logits or None, the LM head's input) of ``model`` with the ``layers`` forwards overridden."""
    captured = {}
    head_forward = lm_head.forward

    def head(x, *args, **kwargs):
        captured["h"] = x
        return head_forward(x, *args, **kwargs) if logits else x[..., :0]

    with overridden_forwards({**layers, lm_head: head}):
        out = model(batch, use_cache=False).logits
    return (out.float() if logits else None), captured["h"].float()


def _linear_head(lm_head: nn.Module, full: torch.Tensor, full_h: torch.Tensor) -> bool:
    """Whether the logits are a linear map of the head's input (no soft cap after the head, say)."""
    if not isinstance(lm_head, nn.Linear):
        return False
    bias = None if lm_head.bias is None else lm_head.bias.float()
    sample, expected = F.linear(full_h[0, :4], lm_head.weight.float(), bias), full[0, :4]
    tol = max(1e-4, 4 * torch.finfo(lm_head.weight.dtype).eps)  # the head may run in bf16
    return torch.allclose(sample, expected, rtol=tol, atol=tol * expected.abs().max().item())


def _add(stats: LayerStats, name: str, window: int, count: int, value: torch.Tensor) -> None:
    if name not in stats:
        stats[name] = torch.zeros(count, dtype=torch.float64)
    stats[name][window] += value.double().item()


@torch.no_grad()
def layer_stats(
    model: nn.Module,
    adapter: Adapter,
    batches: Iterable[torch.Tensor],
    window: int = 1,
    dropped: Sequence[int] = (),
    metrics: Sequence[str] = LAYER_METRICS,
    on_batch: Callable[[LayerStats], None] | None = None,
) -> LayerStats:
    """Sums for ``metrics`` and every window of ``window`` consecutive remaining layers.

    ``dropped`` layers are removed for good before scoring (iterative ranking); windows span remaining
    layers only. Returns additive sums (add them across shards, then :func:`finalize_layer_scores`).
    ``on_batch`` gets the sums so far after each batch (to show progress or save them).
    """
    unknown = set(metrics) - set(LAYER_METRICS)
    if unknown:
        raise ValueError(f"unknown layer metrics {sorted(unknown)}; choose from {LAYER_METRICS}")
    layers = model.get_submodule(adapter.layers_prefix)
    lm_head = adapter.lm_head(model)
    remaining = [i for i in range(len(layers)) if i not in set(dropped)]
    starts = range(len(remaining) - window + 1)
    gone = {layers[i]: _identity for i in dropped}
    stats: LayerStats = {}
    gram = None  # W^T W of a linear LM head, computed once
    for batch in batches:
        batch = batch.to(next(model.parameters()).device)
        inputs, outputs = {}, {}
        hooks = [
            layers[i].register_forward_pre_hook(_capture(inputs, i), with_kwargs=True) for i in remaining
        ]
        hooks += [layers[i].register_forward_hook(_capture_out(outputs, i)) for i in remaining]
        try:
            full, full_h = _forward(model, batch, gone, lm_head, logits=True)
        finally:
            for h in hooks:
                h.remove()
        linear = "nmse" in metrics and _linear_head(lm_head, full, full_h)
        if linear and gram is None:
            w = lm_head.weight.detach().float()
            gram = w.T @ w
        logits = bool(set(metrics) & set(HEAD_METRICS)) or ("nmse" in metrics and not linear)
        labels = batch[:, 1:, None]
        if logits:
            full_lse = torch.logsumexp(full, -1)
            p = (full - full_lse[..., None]).exp()
            full_target = full[:, :-1].gather(-1, labels)[..., 0]
        n = len(starts)
        constants = {
            "nmse_den": full.pow(2).sum(),
            "kl_den": torch.tensor(full.shape[0] * full.shape[1]),
            "hidden_mse_den": torch.tensor(full_h.numel()),
            "lm_loss_den": torch.tensor(labels.numel()),
            "cosine_den": torch.tensor(full.shape[0] * full.shape[1]),
        }
        for w in starts:
            first, last = remaining[w], remaining[w + window - 1]
            skip = {layers[i]: _identity for i in set(range(last)) | set(dropped) if i != last}
            part, part_h = _forward(
                model, batch, {**skip, layers[last]: _constant(inputs[first])}, lm_head, logits
            )
            values = {}
            if logits:
                # differences taken before summing: no cancellation between two large sums
                diff, part_lse = full - part, torch.logsumexp(part, -1)
                if not linear:
                    values["nmse"] = diff.pow(2).sum()
                values["kl"] = (p * diff).sum() - (full_lse - part_lse).sum()
                part_target = part[:, :-1].gather(-1, labels)[..., 0]
                values["lm_loss"] = (full_target - part_target + part_lse[:, :-1] - full_lse[:, :-1]).sum()
            d = (full_h - part_h).reshape(-1, full_h.shape[-1])
            if linear:
                values["nmse"] = ((d @ gram) * d).sum()
            values["hidden_mse"] = d.pow(2).sum()
            cos = F.cosine_similarity(inputs[first].float(), outputs[last].float(), dim=-1)
            values["cosine"] = (1 - cos).sum()
            for metric in metrics:
                _add(stats, f"{metric}_num", w, n, values[metric])
                _add(stats, f"{metric}_den", w, n, constants[f"{metric}_den"])
        if on_batch is not None:
            on_batch(stats)
    return stats


def _capture(store: dict, i: int):
    def hook(module, args, kwargs):
        store[i] = args[0] if args else kwargs["hidden_states"]

    return hook


def _capture_out(store: dict, i: int):
    def hook(module, args, output):
        store[i] = output[0] if isinstance(output, tuple) else output

    return hook


def finalize_layer_scores(stats: LayerStats) -> dict[str, torch.Tensor]:
    """metric -> [windows] scores from summed statistics."""
    return {m: (stats[f"{m}_num"] / stats[f"{m}_den"]).float() for m in LAYER_METRICS if f"{m}_num" in stats}


def iterative_layer_ranking(
    model: nn.Module, adapter: Adapter, batches: Sequence[torch.Tensor], keep: int, metric: str = "nmse"
) -> list[int]:
    """Drop the least important layer, re-score the rest, repeat until ``keep`` layers remain.

    Returns the kept layer indices, sorted.
    """
    dropped: list[int] = []
    total = len(model.get_submodule(adapter.layers_prefix))
    while total - len(dropped) > keep:
        stats = layer_stats(model, adapter, batches, dropped=dropped, metrics=(metric,))
        scores = finalize_layer_scores(stats)[metric]
        remaining = [i for i in range(total) if i not in dropped]
        dropped.append(remaining[int(scores.argmin())])
    return sorted(set(range(total)) - set(dropped))
