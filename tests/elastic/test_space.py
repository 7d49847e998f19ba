"""The elastic space: nested units on every axis (depth included), hard masks == the sliced checkpoint for
every adapter, soft masks between (all-ones weights change no logit; gradients reach the mixture)."""

import numpy as np
import pytest
import torch
from helpers import ZOO_NAMES, logits

from nemocompress.arch import get_adapter
from nemocompress.arch.masking import install_masks
from nemocompress.elastic.space import ElasticSpace, layer_order
from nemocompress.errors import PlanError
from nemocompress.prune.budget import Budget
from nemocompress.prune.cost import model_cost
from nemocompress.prune.slice import slice_model
from nemocompress.zoo import zoo_model


def _space(model, seed=0, **kw):
    config = model.config
    adapter = get_adapter(config)
    g = torch.Generator().manual_seed(seed)
    scores = {a.name: torch.rand(a.size, generator=g) for a in adapter.axes(config)}
    layer_scores = torch.rand(adapter.num_layers(config), generator=g)
    kw = {"max_width_pruning": 0.75, "max_depth_pruning": 0.5, **kw}
    return ElasticSpace.build(config, scores, layer_scores, **kw)


def _choices(space, count=4, seed=0):
    rng = np.random.default_rng(seed)
    picks = [tuple(0 for _ in space.sizes), space.full]
    picks += [tuple(int(rng.integers(n)) for n in space.sizes) for _ in range(count)]
    return picks


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_hard_mask_equals_sliced(name, tokens):
    model, plain = zoo_model(name), zoo_model(name)  # same seed: the same weights, one kept unmasked to slice
    space = _space(model)
    handle = install_masks(
        model, space.adapter, [n for m in space.indicator_matrices() for n in m], layers=True
    )
    reference = logits(model, tokens)
    _, valid = space.cost_tables(Budget())
    checked = 0
    for choice in _choices(space):
        if not valid[choice]:
            continue
        sliced = slice_model(plain, space.plan(choice))
        handle.set(*space.hard_masks(choice))
        torch.testing.assert_close(logits(sliced, tokens), logits(model, tokens), atol=1e-5, rtol=0)
        checked += 1
    assert checked >= 2
    handle.set({}, {})
    assert torch.equal(logits(model, tokens), reference), "unset masks pass through"
    handle.remove()


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_units_nest_on_every_axis(name):
    space = _space(zoo_model(name), seed=3)
    rng = np.random.default_rng(0)
    for _ in range(30):  # random pairs (small <= large on every axis), and the smallest inside the full
        large = tuple(int(rng.integers(n)) for n in space.sizes)
        small = tuple(int(rng.integers(c + 1)) for c in large)
        kept_s, kept_l = space.kept(small), space.kept(large)
        for axis, units in kept_s.items():
            assert set(units) <= set(kept_l[axis]), f"{axis}: {small} keeps units {large} drops"
    kinds = {a.kind for a in space.axes}
    layers = space.adapter.num_layers(space.config)
    assert kinds - {"depth"} and ("depth" in kinds or layers < 3), "width axes, and depth from 3 layers up"


def test_depth_keeps_the_best_layer_of_every_kind():
    kinds = ["mamba", "attention", "mamba", "mlp", "mamba"]
    order = layer_order(torch.tensor([5.0, 0.1, 4.0, 0.2, 3.0]), kinds)
    assert set(order[:3]) == {0, 1, 3} and order[3:] == [2, 4]


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "nemotron_h-latent-moe", "qwen3_moe"])
def test_soft_masks_all_ones_change_nothing_and_carry_gradients(tokens, name):
    model = zoo_model(name)
    space = _space(model)
    handle = install_masks(
        model, space.adapter, [n for m in space.indicator_matrices() for n in m], layers=True
    )
    reference = logits(model, tokens)
    units, layers = space.weights(space.one_hot(space.full))
    handle.set(units, layers)
    torch.testing.assert_close(logits(model, tokens), reference, atol=1e-5, rtol=0)
    probs = [torch.full((n,), 1.0 / n, requires_grad=True) for n in space.sizes]
    units, layers = space.weights(probs)
    handle.set(units, layers)
    model(tokens, use_cache=False).logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probs), "every router gets a gradient"
    handle.remove()


@pytest.mark.parametrize("name", ["llama", "nemotron_h-hybrid", "qwen3_moe"])
def test_cost_table_matches_the_sliced_configs(name):
    model = zoo_model(name)
    space = _space(model)
    settings = Budget(context_length=256)
    table, valid = space.cost_tables(settings)
    for choice in _choices(space, 6, seed=1):
        if not valid[choice]:
            continue
        cost = model_cost(space.plan(choice).apply_config(model.config), 256)
        assert table["params"][choice] == cost.params
        assert table["memory"][choice] == cost.memory_bytes


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "nemotron_h-hybrid"])
def test_experts_and_their_widths_are_elastic(name):
    keys = {a.key for a in _space(zoo_model(name)).axes}
    assert {"num_moe_experts", "moe_ffn_hidden_size"} <= keys, keys


def test_nothing_elastic_is_an_error():
    with pytest.raises(PlanError, match="no size is"):
        _space(zoo_model("llama"), max_width_pruning=0.0, max_depth_pruning=0.0)
