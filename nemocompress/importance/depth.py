"""Layer (depth) importance: what the model loses without a layer, or without a window of k layers.

One full forward per batch caches the residual stream at every layer's input. The model without layers
j..j+k-1 then needs only layers j+k..L-1: the layers before are skipped outright (they return their input
at no cost) and the last dropped layer returns the cached input of layer j. Scoring all L windows costs
about L/2 full forwards instead of L.

Metrics, all relative to the full model on the same tokens (higher = more important = keep):
``nmse`` sum (M_full - M_without)^2 / sum M_full^2 over logits; ``kl`` KL(p_full || p_without) per token;
``hidden_mse`` MSE of the last hidden state (the LM head's input); ``lm_loss`` the increase of the
next-token loss; ``cosine`` block importance 1 - cos(input, output) of the window (full pass only).

Only ``kl`` and ``lm_loss`` (``head_per_layer`` in :data:`LAYER_METRICS`) run the LM head for every window. For a linear head
``nmse`` needs no logits: with d the change of the head's input, |W d|^2 = d^T (W^T W) d, an H x H product
per token instead of a V x H one (the head is a large share of a forward when the vocabulary is large
against the model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import Adapter
from ..arch.masking import overridden_forwards

__all__ = [
    "LAYER_METRICS",
    "LayerMetric",
    "register_layer_metric",
    "default_layer_metrics",
    "LayerStats",
    "layer_stats",
    "finalize_layer_scores",
]

LayerStats = dict[str, torch.Tensor]  # additive sums: "{metric}_num", "{metric}_den", one entry per window


@dataclass
class FullPass:
    """One batch through the whole model: logits ``[B, S, V]``, the LM head's input ``[B, S, H]``, the
    next-token labels ``[B, S-1, 1]`` and, for a linear head, its Gram matrix W^T W ``[H, H]``."""

    logits: torch.Tensor
    hidden: torch.Tensor
    labels: torch.Tensor
    gram: torch.Tensor | None

    @cached_property
    def lse(self) -> torch.Tensor:
        return torch.logsumexp(self.logits, -1)

    @cached_property
    def probs(self) -> torch.Tensor:
        return (self.logits - self.lse[..., None]).exp()

    @cached_property
    def target(self) -> torch.Tensor:
        return self.logits[:, :-1].gather(-1, self.labels)[..., 0]


@dataclass
class WindowPass:
    """The same batch without one window of layers: its logits (None when no chosen metric needs the head
    per window), the head's input, and the window's own input and output in the full pass."""

    full: FullPass
    logits: torch.Tensor | None
    hidden: torch.Tensor
    window_input: torch.Tensor
    window_output: torch.Tensor

    @cached_property
    def logit_change(self) -> torch.Tensor:  # differences taken before summing: no cancellation
        return self.full.logits - self.logits

    @cached_property
    def lse(self) -> torch.Tensor:
        return torch.logsumexp(self.logits, -1)

    @cached_property
    def hidden_change(self) -> torch.Tensor:  # [tokens, H]
        return (self.full.hidden - self.hidden).reshape(-1, self.hidden.shape[-1])


@dataclass(frozen=True)
class LayerMetric:
    """A layer metric as additive sums: ``numerator(window)`` / ``denominator(full)`` over batches.

    head_per_layer: runs the LM head for every window (the expensive metrics, only computed when chosen).
    head_change: needs the change of the logits; for a linear head it is taken without logits per window,
        |W d|^2 = d^T (W^T W) d (``full.gram``), else from the window's logits.
    """

    name: str
    numerator: Callable[[WindowPass], torch.Tensor]
    denominator: Callable[[FullPass], torch.Tensor]
    head_per_layer: bool = False
    head_change: bool = False


LAYER_METRICS: dict[str, LayerMetric] = {}


def register_layer_metric(
    name: str,
    denominator: Callable[[FullPass], torch.Tensor],
    head_per_layer: bool = False,
    head_change: bool = False,
):
    """Decorator: register ``numerator(window: WindowPass) -> scalar tensor`` as layer metric ``name``."""

    def decorate(numerator: Callable[[WindowPass], torch.Tensor]):
        if name in LAYER_METRICS:
            raise ValueError(f"a layer metric named {name!r} is already registered")
        LAYER_METRICS[name] = LayerMetric(name, numerator, denominator, head_per_layer, head_change)
        return numerator

    return decorate


def _tokens(full: FullPass) -> torch.Tensor:
    return torch.tensor(full.logits.shape[0] * full.logits.shape[1])


@register_layer_metric("nmse", lambda full: full.logits.pow(2).sum(), head_change=True)
def _nmse(w: WindowPass) -> torch.Tensor:
    if w.full.gram is not None:
        d = w.hidden_change
        return ((d @ w.full.gram) * d).sum()
    return w.logit_change.pow(2).sum()


@register_layer_metric("kl", _tokens, head_per_layer=True)
def _kl(w: WindowPass) -> torch.Tensor:
    return (w.full.probs * w.logit_change).sum() - (w.full.lse - w.lse).sum()


@register_layer_metric("hidden_mse", lambda full: torch.tensor(full.hidden.numel()))
def _hidden_mse(w: WindowPass) -> torch.Tensor:
    return w.hidden_change.pow(2).sum()


@register_layer_metric("cosine", _tokens)
def _cosine(w: WindowPass) -> torch.Tensor:
    return (1 - F.cosine_similarity(w.window_input.float(), w.window_output.float(), dim=-1)).sum()


@register_layer_metric("lm_loss", lambda full: torch.tensor(full.labels.numel()), head_per_layer=True)
def _lm_loss(w: WindowPass) -> torch.Tensor:
    target = w.logits[:, :-1].gather(-1, w.full.labels)[..., 0]
    return (w.full.target - target + w.lse[:, :-1] - w.full.lse[:, :-1]).sum()


def default_layer_metrics(chosen: str | None = None) -> tuple[str, ...]:
    """The metrics a calibration computes: every one that needs no LM head per layer, and ``chosen``."""
    cheap = [name for name, m in LAYER_METRICS.items() if not m.head_per_layer]
    return tuple(dict.fromkeys([*cheap, *([chosen] if chosen else [])]))


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
    metrics: Sequence[str] | None = None,
    on_batch: Callable[[LayerStats], None] | None = None,
) -> LayerStats:
    """Sums for ``metrics`` (default: all of :data:`LAYER_METRICS`) and every window of ``window``
    consecutive remaining layers.

    ``dropped`` layers are removed for good before scoring (iterative ranking); windows span remaining
    layers only. Returns additive sums (add them across shards, then :func:`finalize_layer_scores`).
    ``on_batch`` gets the sums so far after each batch (to show progress or save them).
    """
    metrics = tuple(LAYER_METRICS) if metrics is None else metrics
    unknown = set(metrics) - set(LAYER_METRICS)
    if unknown:
        raise ValueError(f"unknown layer metrics {sorted(unknown)}; choose from {tuple(LAYER_METRICS)}")
    chosen = [LAYER_METRICS[m] for m in dict.fromkeys(metrics)]
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
            full_logits, full_h = _forward(model, batch, gone, lm_head, logits=True)
        finally:
            for h in hooks:
                h.remove()
        linear = any(m.head_change for m in chosen) and _linear_head(lm_head, full_logits, full_h)
        if linear and gram is None:
            w = lm_head.weight.detach().float()
            gram = w.T @ w
        logits = any(m.head_per_layer or (m.head_change and not linear) for m in chosen)
        full = FullPass(full_logits, full_h, batch[:, 1:, None], gram if linear else None)
        denominators = {m.name: m.denominator(full) for m in chosen}
        n = len(starts)
        for w in starts:
            first, last = remaining[w], remaining[w + window - 1]
            skip = {layers[i]: _identity for i in set(range(last)) | set(dropped) if i != last}
            part, part_h = _forward(
                model, batch, {**skip, layers[last]: _constant(inputs[first])}, lm_head, logits
            )
            without = WindowPass(full, part, part_h, inputs[first], outputs[last])
            for m in chosen:
                _add(stats, f"{m.name}_num", w, n, m.numerator(without))
                _add(stats, f"{m.name}_den", w, n, denominators[m.name])
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
