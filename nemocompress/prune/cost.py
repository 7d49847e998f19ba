"""Cost of a config without building it: parameters, active parameters, inference memory at a context."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..arch import get_adapter

__all__ = ["Cost", "model_cost"]


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


def model_cost(
    config, context_length: int = 4096, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16
) -> Cost:
    """Count what a model of ``config`` holds, from the adapter's tensor description alone.

    Parameters exclude buffers and count tied weights once. Active parameters count top-k of the routed
    experts. Memory: weights in ``dtype``; KV cache of every attention layer (keys and values, ``dtype``) for
    ``batch_size`` sequences of ``context_length`` tokens; the recurrent and conv state of every layer that
    keeps one, per sequence, as the adapter counts it (e.g. NemotronH's SSM state in its float32 cache dtype).
    """
    adapter = get_adapter(config)
    params = routed = 0
    for spec in adapter.tensors(config):
        if spec.buffer or spec.tied_to:
            continue
        n = torch.Size(spec.shape).numel()
        params += n
        routed += n if spec.routed else 0
    active = params - round(routed * (1 - adapter.moe_active_fraction(config)))
    kv = (
        len(adapter.kv_cache_layers(config))
        * 2
        * adapter.kv_width(config)
        * context_length
        * batch_size
        * dtype.itemsize
    )
    state = sum(adapter.state_bytes_per_layer(config, dtype)) * batch_size
    return Cost(params, active, params * dtype.itemsize, kv, state, context_length, batch_size)
