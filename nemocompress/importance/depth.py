"""Layer (depth) importance: what the model loses without a layer, or without a window of k layers.

One full forward per batch caches the residual stream at every layer's input. The model without layers
j..j+k-1 then needs only layers j+k..L-1: the layers before are skipped outright (they return their input
at no cost) and the last dropped layer returns the cached input of layer j. Scoring all L windows costs
about L/2 full forwards instead of L.

Metrics, all relative to the full model on the same tokens (higher = more important = keep):
``nmse`` sum (M_full - M_without)^2 / sum M_full^2 over logits; ``kl`` KL(p_full || p_without) per token;
``hidden_mse`` MSE of the last hidden state (the LM head's input); ``lm_loss`` the increase of the
next-token loss; ``cosine`` block importance 1 - cos(input, output) of the window (full pass only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import Adapter

__all__ = ["LAYER_METRICS", "LayerStats", "layer_stats", "finalize_layer_scores", "iterative_layer_ranking"]

LAYER_METRICS = ("nmse", "kl", "hidden_mse", "cosine", "lm_loss")
LayerStats = dict[str, torch.Tensor]  # additive sums: "{metric}_num", "{metric}_den", one entry per window


@contextlib.contextmanager
def _patched(layers: Sequence[nn.Module], skip: set[int], replace: dict[int, torch.Tensor]):
    """Layers in ``skip`` return their input; layers in ``replace`` return the given tensor."""

    def identity(*args, **kwargs):
        return args[0] if args else kwargs["hidden_states"]

    def constant(value):
        return lambda *args, **kwargs: value

    try:
        for i in skip:
            layers[i].forward = identity
        for i, value in replace.items():
            layers[i].forward = constant(value)
        yield
    finally:
        for i in list(skip) + list(replace):
            del layers[i].forward


def _forward(model: nn.Module, batch: torch.Tensor, lm_head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    captured = {}
    hook = lm_head.register_forward_pre_hook(lambda m, a: captured.__setitem__("h", a[0]))
    try:
        logits = model(batch, use_cache=False).logits.float()
    finally:
        hook.remove()
    return logits, captured["h"].float()


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
    progress=None,
) -> LayerStats:
    """Sums for every metric and every window of ``window`` consecutive remaining layers.

    ``dropped`` layers are removed for good before scoring (iterative ranking); windows span remaining
    layers only. Returns additive sums (add them across shards, then :func:`finalize_layer_scores`).
    """
    layers = model.get_submodule(adapter.layers_prefix)
    lm_head = model.get_output_embeddings()
    remaining = [i for i in range(len(layers)) if i not in set(dropped)]
    starts = range(len(remaining) - window + 1)
    stats: LayerStats = {}
    for batch in batches:
        batch = batch.to(next(model.parameters()).device)
        inputs, outputs = {}, {}
        hooks = [
            layers[i].register_forward_pre_hook(_capture(inputs, i), with_kwargs=True) for i in remaining
        ]
        hooks += [layers[i].register_forward_hook(_capture_out(outputs, i)) for i in remaining]
        with _patched(layers, set(dropped), {}):
            full, full_h = _forward(model, batch, lm_head)
        for h in hooks:
            h.remove()
        log_p = F.log_softmax(full, -1)
        p = log_p.exp()
        entropy_term = (p * log_p).sum()  # sum p log p, the same for every window
        labels = batch[:, 1:, None]
        full_ce = -log_p[:, :-1].gather(-1, labels).sum()
        n = len(starts)
        constants = {
            "nmse_den": full.pow(2).sum(),
            "kl_den": torch.tensor(full.shape[0] * full.shape[1]),
            "hidden_mse_den": torch.tensor(full_h.numel()),
            "lm_loss_den": torch.tensor(labels.numel()),
        }
        for w in starts:
            first, last = remaining[w], remaining[w + window - 1]
            skip = (set(range(last)) | set(dropped)) - {last}
            with _patched(layers, skip, {last: inputs[first]}):
                part, part_h = _forward(model, batch, lm_head)
            log_q = F.log_softmax(part, -1)
            _add(stats, "nmse_num", w, n, (full - part).pow(2).sum())
            _add(stats, "kl_num", w, n, entropy_term - (p * log_q).sum())
            _add(stats, "hidden_mse_num", w, n, (full_h - part_h).pow(2).sum())
            _add(stats, "lm_loss_num", w, n, -log_q[:, :-1].gather(-1, labels).sum() - full_ce)
            cos = F.cosine_similarity(inputs[first].float(), outputs[last].float(), dim=-1)
            _add(stats, "cosine_num", w, n, (1 - cos).sum())
            _add(stats, "cosine_den", w, n, torch.tensor(cos.numel()))
            for name, value in constants.items():
                _add(stats, name, w, n, value)
        if progress is not None:
            progress.update(1)
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
        scores = finalize_layer_scores(layer_stats(model, adapter, batches, dropped=dropped))[metric]
        remaining = [i for i in range(total) if i not in dropped]
        dropped.append(remaining[int(scores.argmin())])
    return sorted(set(range(total)) - set(dropped))
