"""Masks (arch/masking.py) compute what the sliced model computes, for every adapter and axis; keep-all masks
change no logit; bypassed layers return their input; removing the masks restores the model."""

import pytest
import torch
from helpers import ZOO_NAMES, axis_kinds, logits, random_plan

from nemocompress.arch import get_adapter
from nemocompress.arch.masking import apply_masks, bypass_layers
from nemocompress.prune.slice import slice_model
from nemocompress.zoo import zoo_model

CASES = [(name, kind) for name in ZOO_NAMES for kind in axis_kinds(name)] + [
    (name, "all") for name in ZOO_NAMES
]


@pytest.mark.parametrize("name,kind", CASES)
def test_sliced_equals_masked(name, kind, tokens):
    model = zoo_model(name)
    plan = random_plan(model, kind)
    reference = logits(model, tokens)
    sliced = slice_model(model, plan)
    with apply_masks(model, plan.kept_tensors(), get_adapter(model.config)):
        masked = logits(model, tokens)
    torch.testing.assert_close(logits(sliced, tokens), masked, atol=1e-5, rtol=0)
    assert torch.equal(logits(model, tokens), reference), "removing the masks must restore the model"
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_keep_all_masks_change_no_logit(name, tokens):
    """Every axis named with all its units: every mask site is installed (norm hooks recompute the variance
    over all channels, routers mask nothing) and the logits stay those of the plain model."""
    model = zoo_model(name)
    adapter = get_adapter(model.config)
    kept = {a.name: torch.arange(a.size) for a in adapter.axes(model.config)}
    reference = logits(model, tokens)
    with apply_masks(model, kept, adapter) as handle:
        assert handle.hooks or handle.parametrized, "every axis named: some mask must be installed"
        masked = logits(model, tokens)
    torch.testing.assert_close(masked, reference, atol=1e-6, rtol=0)  # measured: 0 on CPU
    assert not handle.hooks and not handle.parametrized


def _layer_inputs(model, adapter, tokens) -> list[torch.Tensor]:
    """The hidden states entering every decoder layer, and the last layer's output (the trunk's output
    before the final norm)."""
    layers = model.get_submodule(adapter.layers_prefix)
    seen: list[torch.Tensor] = []

    def pre(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    def post(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).clone())

    hooks = [layer.register_forward_pre_hook(pre, with_kwargs=True) for layer in layers]
    hooks.append(layers[-1].register_forward_hook(post))
    try:
        logits(model, tokens)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_bypassed_layers_return_their_input(name, tokens):
    model = zoo_model(name)
    adapter = get_adapter(model.config)
    layers = model.get_submodule(adapter.layers_prefix)
    plain = _layer_inputs(model, adapter, tokens)
    reference = logits(model, tokens)
    bypassed = [0, len(layers) - 1] if len(layers) > 2 else [0]
    with bypass_layers(model, adapter, bypassed):
        seen = _layer_inputs(model, adapter, tokens)
        with torch.no_grad():  # a bypassed layer's weights no longer matter
            saved = [p.clone() for p in layers[bypassed[0]].parameters()]
            for p in layers[bypassed[0]].parameters():
                p.mul_(3.0)
        changed_weights = logits(model, tokens)
        with torch.no_grad():
            for p, s in zip(layers[bypassed[0]].parameters(), saved, strict=True):
                p.copy_(s)
        masked = logits(model, tokens)
    for i in bypassed:
        assert torch.equal(seen[i + 1], seen[i]), f"layer {i} must pass its input through"
    for i in set(range(len(layers))) - set(bypassed):
        assert not torch.equal(seen[i + 1], seen[i]), f"layer {i} is not bypassed and must compute"
    assert torch.equal(changed_weights, masked)
    assert not torch.allclose(masked, reference), "bypassing layers must change the logits"
    assert torch.equal(logits(model, tokens), reference), "removing the hooks must restore the model"
    restored = _layer_inputs(model, adapter, tokens)
    assert all(torch.equal(a, b) for a, b in zip(restored, plain, strict=True))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_bypassing_every_layer_leaves_embeddings_then_head(name, tokens):
    """Without any decoder layer the trunk's output is its input embeddings."""
    model = zoo_model(name)
    adapter = get_adapter(model.config)
    count = len(model.get_submodule(adapter.layers_prefix))
    with bypass_layers(model, adapter, range(count)):
        seen = _layer_inputs(model, adapter, tokens)
    embedded = model.get_input_embeddings()(tokens)
    for hidden in seen:
        torch.testing.assert_close(hidden, embedded, rtol=0, atol=0)
