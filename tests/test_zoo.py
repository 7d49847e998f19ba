"""Fixed model sizes for CI regression: pinned parameter counts before and after pinned prunes."""

import pytest
import torch

from nemocompress.arch import get_adapter
from nemocompress.prune.cost import model_cost
from nemocompress.prune.minitron import plan_from_targets
from nemocompress.prune.slice import slice_model
from nemocompress.zoo import ZOO, zoo_model

# name -> (params before, export_config, params after). llama by hand: embeddings 128*48 (tied) + 3 layers x
# (4 projections of 32x48 + 3 MLP matrices of 64x48 + 2 norms of 48) + final norm 48 = 52560.
PINNED = {
    "nemotron_h-hybrid": (111728, {"hidden_size": 48, "mamba_num_heads": 4, "num_moe_experts": 2, "num_layers": 5}, 59468),
    "nemotron_h-latent-moe": (84076, {"hidden_size": 32, "moe_ffn_hidden_size": 16, "num_moe_experts": 4}, 35916),
    "mamba2": (77168, {"mamba_num_heads": 4, "hidden_size": 32}, 26360),
    "llama": (100800, {"hidden_size": 48, "ffn_hidden_size": 64, "num_attention_heads": 2}, 52560),
    "mistral": (78144, {"num_attention_heads": 2, "num_layers": 1}, 43200),
    "qwen2": (78400, {"hidden_size": 32, "ffn_hidden_size": 48}, 30112),
    "qwen3": (78208, {"hidden_size": 48, "num_attention_heads": 2}, 52528),
    "qwen3_moe": (121888, {"num_moe_experts": 2, "moe_ffn_hidden_size": 16, "ffn_hidden_size": 48}, 75552),
    "mixtral": (90944, {"num_moe_experts": 2, "hidden_size": 32}, 33056),
}  # fmt: skip


def test_every_zoo_model_is_pinned():
    assert set(PINNED) == set(ZOO)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_pinned_counts(name):
    before, export, after = PINNED[name]
    model = zoo_model(name)
    config = model.config
    assert model_cost(config).params == before
    axes = get_adapter(config).axes(config)
    scores = {a.name: torch.arange(a.size, dtype=torch.float) for a in axes}
    plan = plan_from_targets(config, export, scores)
    assert model_cost(plan.apply_config(config)).params == after
    assert sum(p.numel() for p in slice_model(model, plan).parameters()) == after
