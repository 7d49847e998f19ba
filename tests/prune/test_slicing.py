"""Invariants of slicing, for every adapter and axis: keep-all is exact, sliced == masked, streaming == in memory,
sliced checkpoints reload in stock transformers and generate with cache equal to without."""

import pytest
import torch
from helpers import ZOO_NAMES, axis_kinds, random_kept
from transformers import AutoModelForCausalLM

from nemocompress.arch import get_adapter
from nemocompress.arch.masking import apply_masks
from nemocompress.prune.plan import keep_all_plan, make_plan
from nemocompress.prune.slice import PLAN_FILE, slice_checkpoint, slice_model
from nemocompress.zoo import zoo_model

CASES = [(name, kind) for name in ZOO_NAMES for kind in axis_kinds(name)] + [
    (name, "all") for name in ZOO_NAMES
]


def _logits(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_keep_all_plan_changes_no_logit(name, tokens):
    model = zoo_model(name)
    sliced = slice_model(model, keep_all_plan(model.config))
    assert torch.equal(_logits(sliced, tokens), _logits(model, tokens))


def _plan(model, kind):
    if kind == "depth":
        return make_plan(model.config, random_kept(model, ["depth"], drop_layer=0))
    kinds = None if kind == "all" else [kind]
    return make_plan(model.config, random_kept(model, kinds, drop_layer=0 if kind == "all" else None))


@pytest.mark.parametrize("name,kind", CASES)
def test_sliced_equals_masked(name, kind, tokens):
    model = zoo_model(name)
    plan = _plan(model, kind)
    reference = _logits(model, tokens)
    sliced = slice_model(model, plan)
    with apply_masks(model, plan.kept_tensors(), get_adapter(model.config)):
        masked = _logits(model, tokens)
    torch.testing.assert_close(_logits(sliced, tokens), masked, atol=1e-5, rtol=0)
    assert torch.equal(_logits(model, tokens), reference), "removing the masks must restore the model"
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_streaming_equals_in_memory_and_reloads(name, tmp_path, tokens):
    model = zoo_model(name)
    plan = _plan(model, "all")
    model.save_pretrained(tmp_path / "src", max_shard_size="100KB")  # sharded, with an index
    out = slice_checkpoint(tmp_path / "src", plan, tmp_path / "out", progress=False)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    in_memory = slice_model(model, plan)
    a, b = in_memory.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (out / PLAN_FILE).is_file()
    assert not list(tmp_path.glob(".out.tmp*")), "temporary directory left behind"


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_sliced_checkpoint_generates_same_with_and_without_cache(name, tmp_path):
    model = zoo_model(name)
    slice_model(model, _plan(model, "all")).save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = reloaded.generate(prompt, use_cache=True, **kwargs)
        uncached = reloaded.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 14)
    assert torch.equal(cached, uncached)
