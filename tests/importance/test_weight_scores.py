"""Weight-only scores: streamed from disk equal in memory, planted weak units rank last, random is seeded."""

import pytest
import torch
from helpers import ZOO_NAMES

from nemocompress.arch import get_adapter
from nemocompress.importance.weights import checkpoint_magnitude_scores, magnitude_scores, random_scores
from nemocompress.zoo import zoo_model


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_streamed_magnitude_equals_in_memory(name, tmp_path):
    model = zoo_model(name)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    streamed = checkpoint_magnitude_scores(tmp_path, progress=False)
    in_memory = magnitude_scores(model, get_adapter(model.config))
    assert streamed.keys() == in_memory.keys()
    for axis in streamed:
        torch.testing.assert_close(streamed[axis], in_memory[axis], rtol=1e-6, atol=0, msg=axis)


def test_planted_weak_units_rank_last():
    model = zoo_model("nemotron_h-hybrid")
    mixer = model.model.layers[0].mixer
    head_dim = model.config.mamba_head_dim
    with torch.no_grad():
        mixer.out_proj.weight[:, 5 * head_dim : 6 * head_dim] *= 1e-3  # Mamba head 5
        mixer.in_proj.weight[5 * head_dim : 6 * head_dim] *= 1e-3  # its z rows
        x0 = model.config.mamba_num_heads * head_dim
        mixer.in_proj.weight[x0 + 5 * head_dim : x0 + 6 * head_dim] *= 1e-3  # its x rows
        model.model.layers[2].mixer.down_proj.weight[:, 17] *= 1e-3
        model.model.layers[2].mixer.up_proj.weight[17] *= 1e-3
        model.model.layers[4].mixer.experts.up_proj[3] *= 1e-3
        model.model.layers[4].mixer.experts.down_proj[3] *= 1e-3
    scores = magnitude_scores(model, get_adapter(model.config))
    assert scores["layers.0.mamba_heads"].argmin() == 5
    assert scores["layers.2.mlp"].argmin() == 17
    assert scores["layers.4.experts"].argmin() == 3


def test_random_scores_are_seeded_per_axis():
    a = random_scores([("x", 5), ("y", 3)], seed=1)
    b = random_scores([("y", 3)], seed=1)
    assert torch.equal(a["y"], b["y"])
    assert not torch.equal(random_scores([("y", 3)], seed=2)["y"], b["y"])
