"""Cost of a config: the recurrent state comes from the adapter, per layer, and scales with the batch."""

import pytest
import torch

from nemocompress.arch import get_adapter
from nemocompress.prune.cost import model_cost
from nemocompress.zoo import zoo_config


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "mamba2", "llama"])
def test_state_bytes_sum_the_adapters_layers_per_sequence(name):
    config = zoo_config(name)
    per_layer = get_adapter(config).state_bytes_per_layer(config, torch.bfloat16)
    one, three = (model_cost(config, 64, batch, torch.bfloat16) for batch in (1, 3))
    assert one.state_bytes == sum(per_layer) and three.state_bytes == 3 * one.state_bytes
    assert (one.state_bytes > 0) == (name != "llama")
    assert one.memory_bytes == one.weight_bytes + one.kv_cache_bytes + one.state_bytes
    assert one.to_dict()["state_bytes"] == one.state_bytes


def test_state_bytes_do_not_grow_with_the_context():
    config = zoo_config("mamba2")
    short, long = model_cost(config, 16), model_cost(config, 4096)
    assert short.state_bytes == long.state_bytes and short.kv_cache_bytes == long.kv_cache_bytes == 0
