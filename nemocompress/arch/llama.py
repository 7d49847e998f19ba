"""Llama-style decoders: dense (llama, qwen2, qwen3, mistral) and sparse MoE (qwen3_moe, mixtral).

All share pre-norm attention with GQA and RoPE; they differ in biases, q/k norms and the feed-forward.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import PlanError
from .base import Adapter, Axis, ExpertsCall
from .blocks import (
    DEPTH,
    HIDDEN,
    Block,
    attention,
    axis_name,
    embeddings,
    fused_experts,
    gated_mlp,
    norm,
    router,
)

__all__ = ["LlamaAdapter", "Qwen2Adapter", "Qwen3Adapter", "MixtralAdapter", "Qwen3MoeAdapter"]


class LlamaAdapter(Adapter):
    """Dense Llama-style decoder (llama, mistral)."""

    model_types = ("llama", "mistral")
    export_keys = {
        "hidden_size": "hidden",
        "ffn_hidden_size": "mlp",
        "num_attention_heads": "attention_heads",
        "num_layers": "depth",
    }
    qk_norm = False

    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def attention_head_dim(self, config) -> int:
        return self.head_dim(config)

    def valid_sizes(self, config, sizes):
        ok = super().valid_sizes(config, sizes)
        if _refuses_indivisible_hidden(type(config)):
            hidden = np.asarray(sizes.get("hidden", config.hidden_size))
            ok = ok & (hidden % np.asarray(sizes.get("attention_heads", config.num_attention_heads)) == 0)
        return ok

    def check_sizes(self, config, sizes) -> None:
        super().check_sizes(config, sizes)
        if not np.all(self.valid_sizes(config, sizes)):
            hidden = sizes.get("hidden", config.hidden_size)
            heads = sizes.get("attention_heads", config.num_attention_heads)
            raise PlanError(
                f"transformers' {type(config).__name__} refuses hidden_size {hidden} with {heads} attention heads "
                f"(the head count must divide it, even with an explicit head_dim); choose a multiple of {heads}"
            )

    def attention_biases(self, config) -> tuple[bool, bool]:
        b = bool(getattr(config, "attention_bias", False))
        return b, b

    def is_moe_layer(self, config, i: int) -> bool:
        return False

    def num_experts(self, config) -> int:
        return 0

    def expert_width(self, config) -> int:
        return 0

    def layer_kinds(self, config) -> list[str]:
        return [
            "attention+" + ("moe" if self.is_moe_layer(config, i) else "mlp")
            for i in range(config.num_hidden_layers)
        ]

    def kv_cache_layers(self, config) -> list[int]:
        return list(range(config.num_hidden_layers))

    def kv_width(self, config) -> int:
        return config.num_key_value_heads * self.head_dim(config)

    def axes(self, config) -> list[Axis]:
        axes = [Axis(HIDDEN, "hidden", config.hidden_size), Axis(DEPTH, "depth", config.num_hidden_layers)]
        for i in range(config.num_hidden_layers):
            h, kv = config.num_attention_heads, config.num_key_value_heads
            axes.append(
                Axis(axis_name(i, "attention_heads"), "attention_heads", h, i, kv, "num_key_value_heads")
            )
            if self.is_moe_layer(config, i):
                axes.append(Axis(axis_name(i, "experts"), "experts", self.num_experts(config), i))
                axes.append(Axis(axis_name(i, "expert_ffn"), "expert_ffn", self.expert_width(config), i))
            else:
                axes.append(Axis(axis_name(i, "mlp"), "mlp", config.intermediate_size, i))
        return axes

    def feed_forward(self, prefix: str, i: int, config):
        return gated_mlp(
            f"{prefix}.mlp",
            i,
            config.hidden_size,
            config.intermediate_size,
            bias=getattr(config, "mlp_bias", False),
        )

    def describe(self, config) -> Block:
        d = config.hidden_size
        block = embeddings("model.embed_tokens.weight", config.vocab_size, d, config.tie_word_embeddings)
        block += norm("model.norm.weight", d, None)
        qkv_bias, o_bias = self.attention_biases(config)
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}"
            block += norm(f"{p}.input_layernorm.weight", d, i)
            block += attention(
                f"{p}.self_attn", i, d, config.num_attention_heads, config.num_key_value_heads,
                self.head_dim(config), qkv_bias, o_bias, self.qk_norm,
            )  # fmt: skip
            block += norm(f"{p}.post_attention_layernorm.weight", d, i)
            block += self.feed_forward(p, i, config)
        return block

    def sized_config(self, config, sizes, kept_layers) -> dict:
        field = {
            "hidden": "hidden_size",
            "mlp": "intermediate_size",
            "attention_heads": "num_attention_heads",
            "experts": self.experts_field,
            "expert_ffn": "moe_intermediate_size",
        }
        out = {field[k]: v for k, v in sizes.items() if k in field}
        out["head_dim"] = self.head_dim(config)  # explicit: hidden_size / heads may no longer give it
        out["num_hidden_layers"] = len(kept_layers)
        if getattr(config, "layer_types", None) is not None:
            out["layer_types"] = [config.layer_types[i] for i in kept_layers]
        return out

    experts_field = "num_experts"


class Qwen2Adapter(LlamaAdapter):
    model_types = ("qwen2",)

    def attention_biases(self, config):
        return True, False


class Qwen3Adapter(LlamaAdapter):
    model_types = ("qwen3",)
    qk_norm = True


class MixtralAdapter(LlamaAdapter):
    """Mixtral: every layer is a softmax-routed MoE of SwiGLU experts."""

    model_types = ("mixtral",)
    #: transformers' fused SwiGLU experts: forward(hidden_states, top_k_index, top_k_weights), act_fn
    experts_call = ExpertsCall()
    export_keys = {
        "hidden_size": "hidden",
        "num_attention_heads": "attention_heads",
        "num_moe_experts": "experts",
        "moe_ffn_hidden_size": "expert_ffn",
        "num_layers": "depth",
    }
    experts_field = "num_local_experts"
    disk_renames = ((".block_sparse_moe.", ".mlp."),)
    disk_experts = (
        (
            r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.w1\.weight",
            "model.layers.{layer}.mlp.experts.gate_up_proj",
            0,
        ),
        (
            r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.w3\.weight",
            "model.layers.{layer}.mlp.experts.gate_up_proj",
            1,
        ),
        (
            r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.w2\.weight",
            "model.layers.{layer}.mlp.experts.down_proj",
            None,
        ),
    )

    def is_moe_layer(self, config, i):
        return True

    def num_experts(self, config):
        return config.num_local_experts

    def experts_per_token(self, config) -> int:
        return config.num_experts_per_tok

    def moe_active_fraction(self, config) -> float:
        return config.num_experts_per_tok / self.num_experts(config)

    def feed_forward(self, prefix, i, config):
        d, e = config.hidden_size, self.num_experts(config)
        experts = fused_experts(
            f"{prefix}.mlp.experts", i, d, e, self.expert_width(config), self.experts_call, hidden_cut=True
        )
        return experts + router(f"{prefix}.mlp.gate", i, d, e, "softmax")

    def expert_width(self, config) -> int:
        return config.intermediate_size

    def sized_config(self, config, sizes, kept_layers):
        out = super().sized_config(config, {k: v for k, v in sizes.items() if k != "expert_ffn"}, kept_layers)
        if "expert_ffn" in sizes:
            out["intermediate_size"] = sizes["expert_ffn"]
        return out


class Qwen3MoeAdapter(MixtralAdapter):
    """Qwen3-MoE: softmax-routed SwiGLU experts; ``mlp_only_layers`` / ``decoder_sparse_step`` keep dense MLPs."""

    model_types = ("qwen3_moe",)
    export_keys = {**MixtralAdapter.export_keys, "ffn_hidden_size": "mlp"}
    experts_field = "num_experts"
    qk_norm = True
    disk_renames = ()
    disk_experts = (
        (
            r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.gate_proj\.weight",
            "model.layers.{layer}.mlp.experts.gate_up_proj",
            0,
        ),
        (
            r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.up_proj\.weight",
            "model.layers.{layer}.mlp.experts.gate_up_proj",
            1,
        ),
        (
            r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.down_proj\.weight",
            "model.layers.{layer}.mlp.experts.down_proj",
            None,
        ),
    )

    def is_moe_layer(self, config, i):
        sparse_step = config.decoder_sparse_step
        return i not in config.mlp_only_layers and config.num_experts > 0 and (i + 1) % sparse_step == 0

    def num_experts(self, config):
        return config.num_experts

    def expert_width(self, config):
        return config.moe_intermediate_size

    def feed_forward(self, prefix, i, config):
        if self.is_moe_layer(config, i):
            return super().feed_forward(prefix, i, config)
        return LlamaAdapter.feed_forward(self, prefix, i, config)

    def sized_config(self, config, sizes, kept_layers):
        out = LlamaAdapter.sized_config(self, config, sizes, kept_layers)
        # Keep each surviving layer's kind: list the dense ones explicitly.
        out["decoder_sparse_step"] = 1
        out["mlp_only_layers"] = [n for n, i in enumerate(kept_layers) if not self.is_moe_layer(config, i)]
        return out


@functools.cache
def _refuses_indivisible_hidden(config_class) -> bool:
    """Whether this transformers config class refuses a hidden size that the head count does not divide
    (LlamaConfig does since transformers 5; others accept it): probed once per class, as installed."""
    try:
        config_class(hidden_size=130, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    except Exception:  # transformers' validators raise several error types
        return True
    return False
