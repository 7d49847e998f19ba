"""The adapters' description matches the real transformers models, parameter by parameter."""

import inspect

import pytest
import torch
from helpers import ZOO_NAMES

from nemocompress.arch import SCORE_CHOICES, get_adapter, supported_model_types
from nemocompress.errors import UnsupportedModelError
from nemocompress.prune.cost import model_cost
from nemocompress.zoo import zoo_config, zoo_model


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_description_matches_state_dict(name):
    model = zoo_model(name)
    specs = {s.name: s.shape for s in get_adapter(model.config).tensors(model.config)}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert specs == actual


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_cost_params_equal_numel(name):
    model = zoo_model(name)
    cost = model_cost(model.config)
    assert cost.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "qwen3_moe", "mixtral"])
def test_active_params_count_top_k_experts(name):
    model = zoo_model(name)
    top_k = model.config.num_experts_per_tok
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n and p.ndim == 3)
    num_experts = next(p.shape[0] for n, p in model.named_parameters() if ".experts." in n and p.ndim == 3)
    expected = sum(p.numel() for p in model.parameters()) - routed + routed * top_k // num_experts
    assert model_cost(model.config).active_params == expected


def _cache_bytes(cache) -> int:
    """Bytes of every tensor a transformers cache holds (per-layer tensors, possibly in dicts)."""
    seen, total = set(), 0
    for layer in cache.layers:
        for value in vars(layer).values():
            for t in value.values() if isinstance(value, dict) else [value]:
                if torch.is_tensor(t) and t.ndim > 1 and t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "llama", "mamba2"])
def test_cache_memory_equals_transformers_cache(name):
    model = zoo_model(name)
    batch, length = 2, 9
    x = torch.randint(0, 128, (batch, length))
    with torch.no_grad():
        out = model(x, use_cache=True)
    cache = out.past_key_values if getattr(out, "past_key_values", None) is not None else out.cache_params
    cost = model_cost(model.config, context_length=length, batch_size=batch, dtype=torch.float32)
    assert cost.kv_cache_bytes + cost.state_bytes == _cache_bytes(cache)


def test_unsupported_model_type_lists_supported():
    with pytest.raises(UnsupportedModelError) as e:
        get_adapter("gpt2")
    for t in supported_model_types():
        assert t in str(e.value)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_trunk_and_lm_head_give_the_logits(name):
    model = zoo_model(name).eval()
    adapter = get_adapter(model.config)
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = adapter.trunk(model)(input_ids=ids, use_cache=False).last_hidden_state
        logits = adapter.lm_head(model)(hidden)
        torch.testing.assert_close(logits, model(input_ids=ids, use_cache=False).logits)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_score_choices_are_the_sites_alternatives(name):
    """Every choice group is one of SCORE_CHOICES, and every mixer offers each variant once, one default."""
    config = zoo_config(name)
    adapter = get_adapter(config)
    choices = adapter.score_choices(config)
    recurrent = [a for a in adapter.axes(config) if a.kind == "mamba_heads"]
    assert choices == ({"mamba": SCORE_CHOICES["mamba"]} if recurrent else {})
    chosen = [s for s in adapter.score_sites(config) if s.choice is not None]
    for group, variants in choices.items():
        for variant in variants:
            assert sum(s.choice == (group, variant) for s in chosen) == len(recurrent)
        assert sum(s.default for s in chosen if s.choice[0] == group) == len(recurrent)


@pytest.mark.parametrize("name", ["nemotron_h-hybrid", "nemotron_h-latent-moe", "qwen3_moe", "mixtral"])
def test_experts_call_describes_the_experts_module(name):
    """The experts site names the module's forward arguments, its parameters, activation and gating."""
    model = zoo_model(name)
    adapter = get_adapter(model.config)
    sites = [s for s in adapter.score_sites(model.config) if s.how == "experts"]
    assert sites
    for site in sites:
        module, call = model.get_submodule(site.module), site.experts
        assert tuple(inspect.signature(module.forward).parameters)[:3] == call.args
        up, down = getattr(module, call.up), getattr(module, call.down)
        assert isinstance(up, torch.nn.Parameter) and isinstance(down, torch.nn.Parameter)
        assert up.shape[1] == down.shape[2] * (2 if call.gated else 1)
        x = torch.linspace(-2, 2, 9)
        torch.testing.assert_close(getattr(module, call.activation)(x), module.act_fn(x))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_state_bytes_only_on_recurrent_layers(name):
    config = zoo_config(name)
    adapter = get_adapter(config)
    per_layer = adapter.state_bytes_per_layer(config, torch.float32)
    assert len(per_layer) == adapter.num_layers(config)
    assert [n > 0 for n in per_layer] == [k == "mamba" for k in adapter.layer_kinds(config)]
