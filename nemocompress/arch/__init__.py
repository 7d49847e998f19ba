"""Architecture adapters: one per model family, describing prunable axes as data."""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .base import (
    AXIS_KINDS,
    DEFAULT_DIVISORS,
    Adapter,
    Axis,
    DiskKey,
    ExpertsCall,
    MaskSite,
    ScoreSite,
    Segment,
    TensorSpec,
    dim_indices,
    disk_dims,
    select,
)
from .blocks import SCORE_CHOICES
from .llama import LlamaAdapter, MixtralAdapter, Qwen2Adapter, Qwen3Adapter, Qwen3MoeAdapter
from .mamba2 import Mamba2Adapter
from .nemotron_h import NemotronHAdapter

__all__ = [
    "AXIS_KINDS",
    "DEFAULT_DIVISORS",
    "Adapter",
    "Axis",
    "DiskKey",
    "ExpertsCall",
    "MaskSite",
    "ScoreSite",
    "Segment",
    "SCORE_CHOICES",
    "TensorSpec",
    "dim_indices",
    "disk_dims",
    "select",
    "get_adapter",
    "supported_model_types",
]

_ADAPTERS: dict[str, Adapter] = {
    t: cls()
    for cls in (
        NemotronHAdapter,
        Mamba2Adapter,
        LlamaAdapter,
        Qwen2Adapter,
        Qwen3Adapter,
        Qwen3MoeAdapter,
        MixtralAdapter,
    )
    for t in cls.model_types
}


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(config_or_type) -> Adapter:
    """The adapter for a config (or a ``model_type`` string); an unsupported family lists the supported ones."""
    model_type = (
        config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
    )
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported families: {', '.join(supported_model_types())}. "
            "Open an issue with the model's config.json to request an adapter."
        ) from None
