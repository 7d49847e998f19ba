"""Cost of a config without building it: parameters, active parameters, inference memory at a context.

One implementation serves one config (:func:`model_cost`) and a whole search space at once
(:class:`CostModel`): a pruned model keeps one width per axis kind and some number of layers of each layer
kind, so its cost is a function of those counts, evaluated on numpy arrays of thousands of candidates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..arch import Segment, TensorSpec, get_adapter

__all__ = ["Cost", "CostModel", "model_cost"]


@dataclass(frozen=True)
class Cost:
    """Sizes in parameters and bytes. ``memory_bytes`` = weights + KV cache + recurrent state.

    ``state_bytes``: the fixed-size state that recurrent layers keep per sequence (Mamba's conv window and
    SSM state), whatever the context length.
    """

    params: int
    active_params: int
    weight_bytes: int
    kv_cache_bytes: int
    state_bytes: int
    context_length: int
    batch_size: int

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes + self.state_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "memory_bytes": self.memory_bytes}


class _Overlay:
    """A config seen with some fields replaced (values may be numpy arrays): what the adapter's cost
    methods read, without building a transformers config per candidate."""

    def __init__(self, base, updates: Mapping):
        self._base, self._updates = base, dict(updates)

    def __getattr__(self, name):
        if name in self._updates:
            return self._updates[name]
        return getattr(self._base, name)


class CostModel:
    """The cost of every uniformly pruned variant of ``config``.

    Call it with ``sizes`` (axis kind -> counts, e.g. ``{"hidden": array([512, 576])}``; kinds left out keep
    their size) and ``layers`` (layer kind of :meth:`Adapter.layer_kinds` -> how many stay; kinds left out
    keep all). Arrays broadcast together. Counts as :func:`model_cost` does (tied weights once, buffers
    not at all, top-k of the routed experts active).
    """

    def __init__(self, config):
        self.config = config
        self.adapter = adapter = get_adapter(config)
        self.kinds = adapter.layer_kinds(config)
        self.layer_counts = {k: self.kinds.count(k) for k in dict.fromkeys(self.kinds)}
        first = {k: self.kinds.index(k) for k in self.layer_counts}
        self.axis_kind = {a.name: a.kind for a in adapter.axes(config)}
        self.sizes = {}
        for a in adapter.axes(config):
            if a.kind != "depth":
                self.sizes.setdefault(a.kind, a.size)
        kv_layers = set(adapter.kv_cache_layers(config))
        self.kv_kinds = {k for k, i in first.items() if i in kv_layers}
        self._first = first
        self._groups: dict[str | None, list[TensorSpec]] = {None: []}
        for spec in adapter.tensors(config):
            if spec.buffer or spec.tied_to:
                continue
            if spec.layer is None:
                self._groups[None].append(spec)
            elif first[self.kinds[spec.layer]] == spec.layer:
                self._groups.setdefault(self.kinds[spec.layer], []).append(spec)

    def _segment(self, seg: Segment, counts: Mapping[str, np.ndarray]):
        outer = counts[self.axis_kind[seg.outer]] if seg.outer else seg.length // seg.inner_size
        inner = counts[self.axis_kind[seg.inner]] if seg.inner else seg.inner_size
        return np.asarray(outer, dtype=np.int64) * inner

    def _numel(self, spec: TensorSpec, counts):
        total = np.int64(1)
        for dim, length in enumerate(spec.shape):
            segs = spec.dims.get(dim)
            total = total * (sum(self._segment(s, counts) for s in segs) if segs else length)
        return total

    def __call__(
        self,
        sizes: Mapping[str, np.ndarray] | None = None,
        layers: Mapping[str, np.ndarray] | None = None,
        context_length: int = 4096,
        batch_size: int = 1,
        dtype: torch.dtype = torch.bfloat16,
    ) -> dict[str, np.ndarray]:
        """Arrays ``params``, ``active_params``, ``weight_bytes``, ``kv_cache_bytes``, ``state_bytes``,
        ``memory`` (bytes) and ``attention_width`` (query channels summed over attention layers)."""
        sizes = {k: np.asarray(v, dtype=np.int64) for k, v in (sizes or {}).items()}
        counts = {**self.sizes, **sizes}
        layers = {
            **self.layer_counts,
            **{k: np.asarray(v, dtype=np.int64) for k, v in (layers or {}).items()},
        }
        adapter, config = self.adapter, self.config
        view = _Overlay(config, adapter.sized_config(config, sizes, range(len(self.kinds))) if sizes else {})
        params = sum(self._numel(s, counts) for s in self._groups[None])
        routed = np.int64(0)
        state_per_layer = adapter.state_bytes_per_layer(view, dtype)
        state = kv_layers = np.int64(0)
        for kind, n in layers.items():
            specs = self._groups.get(kind, [])
            params = params + n * sum((self._numel(s, counts) for s in specs), np.int64(0))
            routed = routed + n * sum((self._numel(s, counts) for s in specs if s.routed), np.int64(0))
            state = state + n * np.asarray(state_per_layer[self._first[kind]], dtype=np.int64)
            if kind in self.kv_kinds:
                kv_layers = kv_layers + n
        fraction = adapter.moe_active_fraction(view) if adapter.experts_per_token(config) else 1.0
        active = params - np.rint(routed * (1 - np.asarray(fraction, dtype=np.float64))).astype(np.int64)
        kv = kv_layers * 2 * adapter.kv_width(view) * context_length * batch_size * dtype.itemsize
        state = state * batch_size
        weight_bytes = params * dtype.itemsize
        heads = counts.get("attention_heads", 0)
        return {
            "params": params,
            "active_params": active,
            "weight_bytes": weight_bytes,
            "kv_cache_bytes": kv,
            "state_bytes": state,
            "memory": weight_bytes + kv + state,
            "attention_width": kv_layers
            * np.asarray(heads, dtype=np.int64)
            * adapter.attention_head_dim(config),
        }


def model_cost(
    config, context_length: int = 4096, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16
) -> Cost:
    """Count what a model of ``config`` holds, from the adapter's tensor description alone.

    Parameters exclude buffers and count tied weights once. Active parameters count top-k of the routed
    experts. Memory: weights in ``dtype``; KV cache of every attention layer (keys and values, ``dtype``) for
    ``batch_size`` sequences of ``context_length`` tokens; the recurrent and conv state of every layer that
    keeps one, per sequence, as the adapter counts it (e.g. NemotronH's SSM state in its float32 cache dtype).
    """
    c = CostModel(config)(context_length=context_length, batch_size=batch_size, dtype=dtype)
    keys = ("params", "active_params", "weight_bytes", "kv_cache_bytes", "state_bytes")
    return Cost(*(int(c[k]) for k in keys), context_length, batch_size)
