"""Invariants of slicing (prune/slice.py), for every adapter: keep-all is exact, streaming == in memory, sliced
checkpoints reload in stock transformers and generate with cache equal to without. Sliced == masked is in
tests/arch/test_masking.py."""

import pytest
import torch
from helpers import ZOO_NAMES, logits, random_plan
from transformers import AutoModelForCausalLM

from nemocompress.prune.plan import keep_all_plan
from nemocompress.prune.slice import PLAN_FILE, slice_checkpoint, slice_model
from nemocompress.zoo import zoo_model


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_keep_all_plan_changes_no_logit(name, tokens):
    model = zoo_model(name)
    sliced = slice_model(model, keep_all_plan(model.config))
    assert torch.equal(logits(sliced, tokens), logits(model, tokens))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_streaming_equals_in_memory_and_reloads(name, tmp_path, tokens):
    model = zoo_model(name)
    plan = random_plan(model)
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
    slice_model(model, random_plan(model)).save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = reloaded.generate(prompt, use_cache=True, **kwargs)
        uncached = reloaded.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 14)
    assert torch.equal(cached, uncached)
