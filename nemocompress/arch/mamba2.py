"""Mamba-2 (pure state-space model, ``model_type`` mamba2)."""

from __future__ import annotations

import functools
import inspect
import warnings

import numpy as np
import transformers

from ..errors import PlanError
from .base import Adapter, Axis
from .blocks import (
    DEPTH,
    HIDDEN,
    Block,
    axis_name,
    embeddings,
    mamba2_mixer,
    mamba2_state_bytes,
    norm,
)

__all__ = ["Mamba2Adapter"]


@functools.cache
def _gated_norm_is_grouped() -> bool:
    """Whether the installed transformers' Mamba2 gated RMSNorm takes one variance per group of heads.

    transformers before 5.23 takes one variance over all ``n_groups`` groups at once in its PyTorch path
    (``MambaRMSNormGated`` has no ``group_size``), unlike mamba-ssm's kernels and transformers >= 5.23.
    """
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    return "group_size" in inspect.signature(MambaRMSNormGated.__init__).parameters


@functools.cache
def _norm_groups(n_groups: int) -> int:
    """Groups the gated-norm mask takes its variance over: the installed transformers' own, so masked == sliced."""
    if n_groups == 1 or _gated_norm_is_grouped():
        return n_groups
    warnings.warn(
        f"transformers {transformers.__version__} normalizes Mamba2's gated RMSNorm over all {n_groups} groups at "
        "once (mamba-ssm's kernels and transformers>=5.23 normalize per group): scores and distillation follow "
        "the installed version; pip install -U 'transformers>=5.23' to match the checkpoint",
        stacklevel=3,
    )
    return 1


class Mamba2Adapter(Adapter):
    model_types = ("mamba2",)
    export_keys = {
        "hidden_size": "hidden",
        "mamba_num_heads": "mamba_heads",
        "mamba_head_dim": "mamba_head_dim",
        "num_layers": "depth",
    }
    layers_prefix = "backbone.layers"

    def layer_kinds(self, config) -> list[str]:
        return ["mamba"] * config.num_hidden_layers

    def kv_cache_layers(self, config) -> list[int]:
        return []

    def state_bytes_per_layer(self, config, dtype) -> list[int]:
        c = config
        per_layer = mamba2_state_bytes(
            c.num_heads, c.head_dim, c.n_groups, c.state_size, c.conv_kernel, dtype, dtype
        )
        return [per_layer] * c.num_hidden_layers

    def axes(self, config) -> list[Axis]:
        axes = [Axis(HIDDEN, "hidden", config.hidden_size), Axis(DEPTH, "depth", config.num_hidden_layers)]
        for i in range(config.num_hidden_layers):
            heads, groups = config.num_heads, config.n_groups
            axes.append(Axis(axis_name(i, "mamba_heads"), "mamba_heads", heads, i, groups, "n_groups"))
            axes.append(Axis(axis_name(i, "mamba_head_dim"), "mamba_head_dim", config.head_dim, i))
        return axes

    def describe(self, config) -> Block:
        d = config.hidden_size
        block = embeddings("backbone.embeddings.weight", config.vocab_size, d, config.tie_word_embeddings)
        block += norm("backbone.norm_f.weight", d, None)
        for i in range(config.num_hidden_layers):
            p = f"backbone.layers.{i}"
            block += norm(f"{p}.norm.weight", d, i)
            block += mamba2_mixer(
                f"{p}.mixer", i, d, config.num_heads, config.head_dim, config.n_groups, config.state_size,
                config.conv_kernel, config.use_conv_bias, config.use_bias, _norm_groups(config.n_groups),
            )  # fmt: skip
        return block

    def valid_sizes(self, config, sizes):
        hidden = sizes.get("hidden", config.hidden_size)
        inner = np.asarray(sizes.get("mamba_heads", config.num_heads)) * sizes.get(
            "mamba_head_dim", config.head_dim
        )
        return inner % hidden == 0

    def check_sizes(self, config, sizes) -> None:
        hidden = sizes.get("hidden", config.hidden_size)
        inner = sizes.get("mamba_heads", config.num_heads) * sizes.get("mamba_head_dim", config.head_dim)
        if not self.valid_sizes(config, sizes):
            raise PlanError(
                f"Mamba2 sizes its inner width as expand * hidden_size with an integer expand: heads * head_dim = "
                f"{inner} is not a multiple of hidden_size {hidden}; choose sizes with heads * head_dim = k * hidden_size"
            )

    def sized_config(self, config, sizes, kept_layers) -> dict:
        out = {"num_hidden_layers": len(kept_layers)}
        for kind, field in (
            ("hidden", "hidden_size"),
            ("mamba_heads", "num_heads"),
            ("mamba_head_dim", "head_dim"),
        ):
            if kind in sizes:
                out[field] = sizes[kind]
        hidden = out.get("hidden_size", config.hidden_size)
        inner = out.get("num_heads", config.num_heads) * out.get("head_dim", config.head_dim)
        # Mamba2Mixer sizes its inner width as int(expand * hidden_size): keep it equal to heads * head_dim.
        out["expand"] = inner // hidden
        return out
