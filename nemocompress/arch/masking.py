"""Masks that make a loaded model compute exactly what the sliced model computes.

A mask never changes a stored weight: it acts through forward hooks and parametrizations, and
:meth:`MaskHandle.remove` restores the model. Norms are the subtle part: an RMSNorm (and Mamba's grouped,
gated RMSNorm) takes its variance over the *kept* channels only, as the sliced model does (METHODS.md,
section 2); a plain zero mask would be off by the ratio of channel counts.

Mamba layers must run their PyTorch path for the gated-norm hook to apply (the CUDA kernels fuse the norm);
on CPU transformers uses that path by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .base import Adapter, MaskSite, dim_indices

__all__ = ["MaskHandle", "apply_masks", "bypass_layers", "overridden_forwards"]


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


def _indicator(site: MaskSite, kept: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    idx = dim_indices(site.segments, kept)
    if idx is None:
        return None
    mask = torch.zeros(sum(s.length for s in site.segments), dtype=torch.bool)
    mask[idx] = True
    return mask


class _LastDimMask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


class _ExcludeExperts(nn.Module):
    """Sigmoid routers (NemotronH): removed experts get -inf selection bias and are never chosen."""

    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return bias.masked_fill(~self.keep, float("-inf"))


def _rms_norm_hook(mask: torch.Tensor):
    def hook(module, args, output):
        x = args[0]
        m = mask.to(x.device)
        xf = x.to(torch.float32)
        variance = (xf.pow(2) * m).sum(-1, keepdim=True) / m.sum()
        normed = (xf * torch.rsqrt(variance + module.variance_epsilon)).to(x.dtype)
        return module.weight * normed * m.to(output.dtype)

    return hook


def _gated_rms_norm_hook(mask: torch.Tensor, groups: int):
    def hook(module, args, kwargs, output):
        x = args[0]
        gate = args[1] if len(args) > 1 else kwargs.get("gate")
        xf = x.to(torch.float32)
        if gate is not None:
            xf = xf * F.silu(gate.to(torch.float32))
        *prefix, width = xf.shape
        m = mask.to(x.device).view(groups, width // groups).to(torch.float32)
        xg = xf.view(*prefix, groups, width // groups)
        variance = (xg.pow(2) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)
        normed = (xg * torch.rsqrt(variance + module.variance_epsilon) * m).view(*prefix, width)
        return module.weight * normed.to(x.dtype)

    return hook


def _softmax_router_hook(keep: torch.Tensor):
    """Softmax routers (Mixtral, Qwen3-MoE): removed experts get -inf logits before softmax and top-k."""

    def hook(module, args, output):
        logits = output[0].masked_fill(~keep.to(output[0].device), float("-inf"))
        probs = F.softmax(logits, dim=-1, dtype=torch.float)
        top_value, top_index = torch.topk(probs, module.top_k, dim=-1)
        if getattr(module, "norm_topk_prob", True):
            top_value = top_value / top_value.sum(dim=-1, keepdim=True)
        return (logits, top_value.to(output[1].dtype), top_index) + tuple(output[3:])

    return hook


def _bypass_hook(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class MaskHandle:
    """Undo for :func:`apply_masks` (also a context manager)."""

    def __init__(self):
        self.hooks: list = []
        self.parametrized: list[tuple[nn.Module, str]] = []

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


def _parametrize(handle: MaskHandle, module: nn.Module, name: str, fn: nn.Module) -> None:
    parametrize.register_parametrization(module, name, fn, unsafe=True)
    handle.parametrized.append((module, name))


def bypass_layers(model: nn.Module, adapter: Adapter, layers, handle: MaskHandle | None = None) -> MaskHandle:
    """Make the given decoder layers return their input (a model without them)."""
    handle = handle or MaskHandle()
    for i in layers:
        layer = model.get_submodule(f"{adapter.layers_prefix}.{i}")
        handle.hooks.append(layer.register_forward_hook(_bypass_hook, with_kwargs=True))
    return handle


def apply_masks(model: nn.Module, kept: Mapping[str, torch.Tensor], adapter: Adapter) -> MaskHandle:
    """Mask ``model`` in place so that its forward equals the forward of the model sliced to ``kept``.

    Args:
        kept: axis name -> sorted LongTensor of kept units (absent axes keep everything), e.g.
            :meth:`Plan.kept_tensors`.
    Returns:
        A handle whose ``remove()`` restores the unmasked model.
    """
    handle = MaskHandle()
    config = model.config
    for site in adapter.mask_sites(config):
        module = model.get_submodule(site.module)
        mask = _indicator(site, kept)
        if mask is None:
            continue
        if site.how == "rms_norm":
            handle.hooks.append(module.register_forward_hook(_rms_norm_hook(mask)))
        elif site.how == "gated_rms_norm":
            handle.hooks.append(
                module.register_forward_hook(_gated_rms_norm_hook(mask, site.groups), with_kwargs=True)
            )
        elif site.how == "input_columns":
            device = getattr(module, site.param).device
            _parametrize(handle, module, site.param, _LastDimMask(mask.to(device)))
        elif site.how == "router" and site.flavor == "sigmoid_bias":
            device = module.e_score_correction_bias.device
            _parametrize(handle, module, "e_score_correction_bias", _ExcludeExperts(mask.to(device)))
        elif site.how == "router" and site.flavor == "softmax":
            handle.hooks.append(module.register_forward_hook(_softmax_router_hook(mask)))
        else:
            raise ValueError(f"unknown mask site {site.how}/{site.flavor} at {site.module}")
    if "layers" in kept:
        dropped = sorted(set(range(adapter.num_layers(config))) - set(kept["layers"].tolist()))
        bypass_layers(model, adapter, dropped, handle)
    return handle
