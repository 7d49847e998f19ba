"""Masks that make a loaded model compute exactly what the sliced model computes, and soft masks between.

A mask never changes a stored weight: it acts through forward hooks (and, for fused experts, a
parametrization), and :meth:`MaskHandle.remove` restores the model. Norms are the subtle part: an RMSNorm
(and Mamba's grouped, gated RMSNorm) takes its variance over the *kept* channels only, as the sliced model
does (METHODS.md, section 2); a plain zero mask would be off by the ratio of channel counts.

Masks are per-unit weights: 1 keeps a unit, 0 removes it (:func:`apply_masks`, which equals slicing);
values in between (:func:`install_masks` + :meth:`MaskHandle.set`, the soft masks of elastic training) weight
a unit's contribution, and norms then weight their variance the same way, so a 0/1 mask is the hard case
of one formula. A layer's weight mixes its output with its input (0: the layer is bypassed).

Mamba layers must run their PyTorch path for the gated-norm hook to apply (the CUDA kernels fuse the norm);
on CPU transformers uses that path by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .base import Adapter, MaskSite, Segment

__all__ = [
    "MaskHandle",
    "apply_masks",
    "bypass_layers",
    "install_masks",
    "overridden_forwards",
    "unit_indicators",
]


@contextlib.contextmanager
def overridden_forwards(forwards: Mapping[nn.Module, Callable]):
    """Replace each module's ``forward`` for the duration; restores whatever instance forward was there
    before (e.g. one that accelerate's device hooks installed)."""
    saved = {m: m.__dict__.get("forward") for m in forwards}
    try:
        for module, forward in forwards.items():
            module.forward = forward
        yield
    finally:
        for module, previous in saved.items():
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def unit_indicators(kept: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Axis name -> [size] float 0/1 weights from kept indices (absent axes are absent: all kept)."""
    weights = {}
    for name, idx in kept.items():
        w = torch.zeros(sizes[name])
        w[torch.as_tensor(idx, dtype=torch.long)] = 1.0
        weights[name] = w
    return weights


def _position_weights(segments: Sequence[Segment], units: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """Per-position weights along a dimension made of ``segments`` (the product of its outer and inner
    units' weights); None when no unit of the dimension is weighted."""
    parts, any_cut = [], False
    for seg in segments:
        outer = units.get(seg.outer) if seg.outer else None
        inner = units.get(seg.inner) if seg.inner else None
        if outer is None and inner is None:
            parts.append(None)
            continue
        any_cut = True
        ref = outer if outer is not None else inner
        if outer is None:
            outer = ref.new_ones(seg.length // seg.inner_size)
        if inner is None:
            inner = ref.new_ones(seg.inner_size)
        parts.append((outer[:, None] * inner[None, :]).reshape(-1))
    if not any_cut:
        return None
    ref = next(p for p in parts if p is not None)
    return torch.cat([ref.new_ones(s.length) if p is None else p for s, p in zip(segments, parts)])


class MaskHandle:
    """The masks installed on a model: :meth:`set` changes them, :meth:`remove` (or leaving the context)
    restores the model. Sites whose weights are unset pass through."""

    def __init__(self, sites: Sequence[MaskSite] = ()):
        self.sites = list(sites)
        self.values: list[torch.Tensor | None] = [None] * len(self.sites)
        self.layer_weights: dict[int, torch.Tensor | float] = {}
        self.hooks: list = []
        self.parametrized: list[tuple[nn.Module, str]] = []

    def set(
        self,
        units: Mapping[str, torch.Tensor],
        layers: Mapping[int, torch.Tensor | float] | None = None,
    ) -> None:
        """Weight units (axis name -> [size] weights; absent axes keep every unit) and layers (index ->
        weight; absent layers are kept). Tensors may carry gradients (soft masks)."""
        self.values = [_position_weights(site.segments, units) for site in self.sites]
        self.layer_weights = dict(layers or {})

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for module, name in self.parametrized:
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        self.hooks, self.parametrized = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class _ColumnWeights(nn.Module):
    """Columns (last dim) of a parameter multiplied by the site's current weights."""

    def __init__(self, handle: MaskHandle, index: int):
        super().__init__()
        self.handle, self.index = handle, index

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        m = self.handle.values[self.index]
        return weight if m is None else weight * m.to(weight.device, weight.dtype)


class _ExcludeExperts(nn.Module):
    """Sigmoid routers (NemotronH): removed experts (weight 0) get -inf selection bias, never chosen."""

    def __init__(self, handle: MaskHandle, index: int):
        super().__init__()
        self.handle, self.index = handle, index

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        m = self.handle.values[self.index]
        return bias if m is None else bias.masked_fill(m.to(bias.device) <= 0, float("-inf"))


def _input_hook(handle: MaskHandle, index: int):
    def hook(module, args):
        m = handle.values[index]
        if m is None:
            return None
        x = args[0]
        return (x * m.to(x.device, x.dtype), *args[1:])

    return hook


def _rms_norm_hook(handle: MaskHandle, index: int):
    def hook(module, args, output):
        m = handle.values[index]
        if m is None:
            return None
        x = args[0]
        m = m.to(x.device, torch.float32)
        xf = x.to(torch.float32)
        variance = (xf.pow(2) * m).sum(-1, keepdim=True) / m.sum()
        normed = (xf * torch.rsqrt(variance + module.variance_epsilon)).to(x.dtype)
        return module.weight * normed * m.to(output.dtype)

    return hook


def _gated_rms_norm_hook(handle: MaskHandle, index: int, groups: int):
    def hook(module, args, kwargs, output):
        m = handle.values[index]
        if m is None:
            return None
        x = args[0]
        gate = args[1] if len(args) > 1 else kwargs.get("gate")
        xf = x.to(torch.float32)
        if gate is not None:
            xf = xf * F.silu(gate.to(torch.float32))
        *prefix, width = xf.shape
        m = m.to(x.device, torch.float32).view(groups, width // groups)
        xg = xf.view(*prefix, groups, width // groups)
        variance = (xg.pow(2) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)
        normed = (xg * torch.rsqrt(variance + module.variance_epsilon) * m).view(*prefix, width)
        return module.weight * normed.to(x.dtype)

    return hook


def _through_weights(m: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Routing weights ``[T, k]`` of the chosen experts ``index``, times ``m / sg(m)`` of those experts: the
    same values (exactly: ``m / m`` is 1), with a gradient path to the experts' mask weights."""
    if not m.requires_grad:
        return weights
    chosen = m.to(weights.device)[index]
    return weights * (chosen / chosen.detach()).to(weights.dtype)


def _softmax_router_hook(handle: MaskHandle, index: int):
    """Softmax routers (Mixtral, Qwen3-MoE): removed experts get -inf logits before softmax and top-k."""

    def hook(module, args, output):
        m = handle.values[index]
        if m is None:
            return None
        logits = output[0].masked_fill(m.to(output[0].device) <= 0, float("-inf"))
        probs = F.softmax(logits, dim=-1, dtype=torch.float)
        top_value, top_index = torch.topk(probs, module.top_k, dim=-1)
        if getattr(module, "norm_topk_prob", True):
            top_value = top_value / top_value.sum(dim=-1, keepdim=True)
        top_value = _through_weights(m, top_value.to(output[1].dtype), top_index)
        return (logits, top_value, top_index) + tuple(output[3:])

    return hook


def _sigmoid_router_hook(handle: MaskHandle, index: int):
    """Sigmoid routers: the -inf bias (a parametrization) excludes experts; this adds the gradient path."""

    def hook(module, args, output):
        m = handle.values[index]
        if m is None or not m.requires_grad:
            return None
        return (output[0], _through_weights(m, output[1], output[2]), *output[2:])

    return hook


def _layer_hook(handle: MaskHandle, layer: int):
    """Weight 0 (or a bypass): the layer returns its input; w in between: input + w * (output - input)."""

    def hook(module, args, kwargs, output):
        w = handle.layer_weights.get(layer)
        if w is None or (not isinstance(w, torch.Tensor) and w == 1):
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        mixed = (
            hidden
            if not isinstance(w, torch.Tensor) and w == 0
            else hidden + w.to(out.dtype) * (out - hidden)
        )
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    return hook


def _parametrize(handle: MaskHandle, module: nn.Module, name: str, fn: nn.Module) -> None:
    parametrize.register_parametrization(module, name, fn, unsafe=True)
    handle.parametrized.append((module, name))


def install_masks(
    model: nn.Module, adapter: Adapter, axes: Iterable[str] | None = None, layers: bool = False
) -> MaskHandle:
    """Install (inactive) masks on every site that an axis in ``axes`` (default all) reaches, and on every
    decoder layer when ``layers``; :meth:`MaskHandle.set` then weights units and layers.

    An expert with weight 0 is never routed to; any other weight routes it as usual (an expert is routed to
    or not), with the weight's gradient taken through its routing weights.
    """
    config = model.config
    wanted = None if axes is None else set(axes)
    sites = [
        s for s in adapter.mask_sites(config)
        if wanted is None or any(a in wanted for seg in s.segments for a in seg.axes())
    ]  # fmt: skip
    handle = MaskHandle(sites)
    for i, site in enumerate(sites):
        module = model.get_submodule(site.module)
        if site.how == "rms_norm":
            handle.hooks.append(module.register_forward_hook(_rms_norm_hook(handle, i)))
        elif site.how == "gated_rms_norm":
            hook = _gated_rms_norm_hook(handle, i, site.groups)
            handle.hooks.append(module.register_forward_hook(hook, with_kwargs=True))
        elif site.how == "input_columns" and site.param == "weight" and isinstance(module, nn.Linear):
            handle.hooks.append(module.register_forward_pre_hook(_input_hook(handle, i)))
        elif site.how == "input_columns":
            _parametrize(handle, module, site.param, _ColumnWeights(handle, i))
        elif site.how == "router" and site.flavor == "sigmoid_bias":
            _parametrize(handle, module, "e_score_correction_bias", _ExcludeExperts(handle, i))
            handle.hooks.append(module.register_forward_hook(_sigmoid_router_hook(handle, i)))
        elif site.how == "router" and site.flavor == "softmax":
            handle.hooks.append(module.register_forward_hook(_softmax_router_hook(handle, i)))
        else:
            raise ValueError(f"unknown mask site {site.how}/{site.flavor} at {site.module}")
    if layers:
        for i in range(adapter.num_layers(config)):
            layer = model.get_submodule(f"{adapter.layers_prefix}.{i}")
            handle.hooks.append(layer.register_forward_hook(_layer_hook(handle, i), with_kwargs=True))
    return handle


def bypass_layers(model: nn.Module, adapter: Adapter, layers, handle: MaskHandle | None = None) -> MaskHandle:
    """Make the given decoder layers return their input (a model without them)."""
    handle = handle or MaskHandle()
    for i in layers:
        handle.layer_weights[i] = 0.0
        layer = model.get_submodule(f"{adapter.layers_prefix}.{i}")
        handle.hooks.append(layer.register_forward_hook(_layer_hook(handle, i), with_kwargs=True))
    return handle


def apply_masks(model: nn.Module, kept: Mapping[str, torch.Tensor], adapter: Adapter) -> MaskHandle:
    """Mask ``model`` in place so that its forward equals the forward of the model sliced to ``kept``.

    Args:
        kept: axis name -> sorted LongTensor of kept units (absent axes keep everything), e.g.
            :meth:`Plan.kept_tensors`.
    Returns:
        A handle whose ``remove()`` restores the unmasked model.
    """
    config = model.config
    widths = {k: v for k, v in kept.items() if k != "layers"}
    handle = install_masks(model, adapter, widths)
    handle.set(unit_indicators(widths, {a.name: a.size for a in adapter.axes(config)}))
    if "layers" in kept:
        dropped = sorted(set(range(adapter.num_layers(config))) - set(kept["layers"].tolist()))
        bypass_layers(model, adapter, dropped, handle)
    return handle
