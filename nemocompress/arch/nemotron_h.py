"""NemotronH (Nemotron-H, Nemotron Nano 2, Nemotron 3 Nano): Mamba-2, attention, relu^2 MLP and MoE layers."""

from __future__ import annotations

import torch

from ..errors import PlanError
from .base import Adapter, Axis, ExpertsCall, TensorSpec
from .blocks import (
    DEPTH,
    HIDDEN,
    Block,
    attention,
    axis_name,
    embeddings,
    fused_experts,
    hidden_dim,
    mamba2_mixer,
    mamba2_state_bytes,
    norm,
    plain_mlp,
    router,
)

__all__ = ["NemotronHAdapter"]

MAMBA, ATTENTION, MLP, MOE = "linear_attention", "full_attention", "mlp", "moe"
#: transformers' NemotronHExperts: forward(hidden_states, top_k_index, top_k_weights), act_fn(up_proj x)
_EXPERTS = ExpertsCall(up="up_proj", gated=False)
_LAYER_WORD = {MAMBA: "mamba", ATTENTION: "attention", MLP: "mlp", MOE: "moe"}


class NemotronHAdapter(Adapter):
    model_types = ("nemotron_h",)
    export_keys = {
        "hidden_size": "hidden",
        "ffn_hidden_size": "mlp",
        "num_attention_heads": "attention_heads",
        "mamba_num_heads": "mamba_heads",
        "mamba_head_dim": "mamba_head_dim",
        "num_moe_experts": "experts",
        "moe_ffn_hidden_size": "expert_ffn",
        "moe_shared_expert_intermediate_size": "shared_ffn",
        "num_layers": "depth",
    }
    layers_prefix = "model.layers"
    disk_renames = (("backbone.", "model."),)
    disk_experts = (
        (
            r"model\.layers\.(\d+)\.mixer\.experts\.(\d+)\.up_proj\.weight",
            "model.layers.{layer}.mixer.experts.up_proj",
            None,
        ),
        (
            r"model\.layers\.(\d+)\.mixer\.experts\.(\d+)\.down_proj\.weight",
            "model.layers.{layer}.mixer.experts.down_proj",
            None,
        ),
    )

    def num_layers(self, config) -> int:
        return len(config.layers_block_type)

    def layer_kinds(self, config) -> list[str]:
        return [_LAYER_WORD[t] for t in config.layers_block_type]

    def kv_cache_layers(self, config) -> list[int]:
        return [i for i, t in enumerate(config.layers_block_type) if t == ATTENTION]

    def kv_width(self, config) -> int:
        return config.num_key_value_heads * config.head_dim

    def attention_head_dim(self, config) -> int:
        return config.head_dim

    def state_bytes_per_layer(self, config, dtype) -> list[int]:
        """Mamba layers keep a conv window and an SSM state (in ``mamba_ssm_cache_dtype``); others none."""
        ssm_dtype = getattr(torch, str(config.mamba_ssm_cache_dtype).replace("torch.", ""))
        mamba = mamba2_state_bytes(
            config.mamba_num_heads, config.mamba_head_dim, config.n_groups, config.ssm_state_size,
            config.conv_kernel, dtype, ssm_dtype,
        )  # fmt: skip
        return [mamba if t == MAMBA else 0 for t in config.layers_block_type]

    def experts_per_token(self, config) -> int:
        return config.num_experts_per_tok if MOE in config.layers_block_type else 0

    def moe_active_fraction(self, config) -> float:
        return config.num_experts_per_tok / config.n_routed_experts

    def check_layers(self, config, kept_layers) -> None:
        super().check_layers(config, kept_layers)
        had_attention = ATTENTION in config.layers_block_type
        if had_attention and all(config.layers_block_type[i] != ATTENTION for i in kept_layers):
            raise PlanError(
                "the plan removes every attention layer; transformers' NemotronH cache then fails to generate. "
                "Keep at least one attention layer (lower its importance threshold or prune another layer)"
            )

    def axes(self, config) -> list[Axis]:
        axes = [Axis(HIDDEN, "hidden", config.hidden_size), Axis(DEPTH, "depth", self.num_layers(config))]
        for i, t in enumerate(config.layers_block_type):
            if t == MAMBA:
                heads, groups = config.mamba_num_heads, config.n_groups
                axes.append(Axis(axis_name(i, "mamba_heads"), "mamba_heads", heads, i, groups, "n_groups"))
                axes.append(Axis(axis_name(i, "mamba_head_dim"), "mamba_head_dim", config.mamba_head_dim, i))
            elif t == ATTENTION:
                h, kv = config.num_attention_heads, config.num_key_value_heads
                axes.append(
                    Axis(axis_name(i, "attention_heads"), "attention_heads", h, i, kv, "num_key_value_heads")
                )
            elif t == MLP:
                axes.append(Axis(axis_name(i, "mlp"), "mlp", config.intermediate_size, i))
            elif t == MOE:
                experts, groups = config.n_routed_experts, config.n_group
                axes.append(Axis(axis_name(i, "experts"), "experts", experts, i, groups, "n_group"))
                axes.append(Axis(axis_name(i, "expert_ffn"), "expert_ffn", config.moe_intermediate_size, i))
                axes.append(
                    Axis(
                        axis_name(i, "shared_ffn"),
                        "shared_ffn",
                        config.moe_shared_expert_intermediate_size,
                        i,
                    )
                )
        return axes

    def describe(self, config) -> Block:
        d = config.hidden_size
        # NemotronHForCausalLM never ties lm_head to the embeddings, whatever tie_word_embeddings says.
        block = embeddings("model.embeddings.weight", config.vocab_size, d, tied=False)
        block += norm("model.norm_f.weight", d, None)
        for i, t in enumerate(config.layers_block_type):
            p = f"model.layers.{i}"
            block += norm(f"{p}.norm.weight", d, i)
            m = f"{p}.mixer"
            if t == MAMBA:
                block += mamba2_mixer(
                    m, i, d, config.mamba_num_heads, config.mamba_head_dim, config.n_groups,
                    config.ssm_state_size, config.conv_kernel, config.use_conv_bias, config.mamba_proj_bias,
                )  # fmt: skip
            elif t == ATTENTION:
                h, kv, hd, b = (
                    config.num_attention_heads,
                    config.num_key_value_heads,
                    config.head_dim,
                    config.attention_bias,
                )
                block += attention(m, i, d, h, kv, hd, qkv_bias=b, o_bias=b)
            elif t == MLP:
                block += plain_mlp(m, i, d, config.intermediate_size, bias=config.mlp_bias)
            elif t == MOE:
                block += self._moe(m, i, config)
        return block

    def _moe(self, m: str, i: int, config) -> Block:
        d, latent, b = config.hidden_size, config.moe_latent_size, config.mlp_bias
        d_in = latent if latent is not None else d
        block = fused_experts(
            f"{m}.experts", i, d_in, config.n_routed_experts, config.moe_intermediate_size,
            _EXPERTS, hidden_cut=latent is None,
        )  # fmt: skip
        block += router(f"{m}.gate", i, d, config.n_routed_experts, "sigmoid_bias", True, config.n_group)
        block += plain_mlp(
            f"{m}.shared_experts", i, d, config.moe_shared_expert_intermediate_size, "shared_ffn", b
        )
        if latent is not None:
            specs = [TensorSpec(f"{m}.fc1_latent_proj.weight", (latent, d), {1: hidden_dim(d)}, i)]
            specs += [TensorSpec(f"{m}.fc2_latent_proj.weight", (d, latent), {0: hidden_dim(d)}, i)]
            if b:
                specs += [TensorSpec(f"{m}.fc1_latent_proj.bias", (latent,), {}, i)]
                specs += [TensorSpec(f"{m}.fc2_latent_proj.bias", (d,), {0: hidden_dim(d)}, i)]
            block += Block(specs)
        return block

    def sized_config(self, config, sizes, kept_layers) -> dict:
        field = {
            "hidden": "hidden_size",
            "mlp": "intermediate_size",
            "attention_heads": "num_attention_heads",
            "mamba_heads": "mamba_num_heads",
            "mamba_head_dim": "mamba_head_dim",
            "experts": "n_routed_experts",
            "expert_ffn": "moe_intermediate_size",
            "shared_ffn": "moe_shared_expert_intermediate_size",
        }
        out = {field[k]: v for k, v in sizes.items() if k in field}
        out["layers_block_type"] = [config.layers_block_type[i] for i in kept_layers]
        return out
