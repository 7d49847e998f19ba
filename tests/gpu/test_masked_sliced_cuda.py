"""Masking a model on the device computes what slicing it computes, for every zoo model with every axis cut."""

import pytest
import torch
from helpers import ZOO_NAMES, random_kept

from nemocompress.arch import get_adapter
from nemocompress.arch.masking import apply_masks
from nemocompress.prune.plan import make_plan
from nemocompress.prune.slice import slice_model
from nemocompress.zoo import zoo_model

pytestmark = pytest.mark.gpu

# float32 without TF32; the sliced model's smaller matmuls pick other kernels than the masked one's, so the
# sums run in another order (1e-5 on the CPU, where the same test runs in the default suite).
ATOL = 1e-4


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_sliced_equals_masked_on_device(name, device):
    model = zoo_model(name).to(device)
    plan = make_plan(model.config, random_kept(model, drop_layer=0))
    tokens = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        reference = model(tokens, use_cache=False).logits
        sliced = slice_model(model, plan)
        with apply_masks(model, plan.kept_tensors(), get_adapter(model.config)):
            masked = model(tokens, use_cache=False).logits
        assert next(sliced.parameters()).device.type == device.type
        torch.testing.assert_close(sliced(tokens, use_cache=False).logits, masked, atol=ATOL, rtol=0)
        assert torch.equal(model(tokens, use_cache=False).logits, reference), (
            "removing the masks restores the model"
        )
