"""NVFP4 quantization-aware elastic training (ModelOpt) where a GPU is present: trains, and the sliced NVFP4
export is written with its scales. Marked ``gpu``; skips without CUDA or ModelOpt."""

import pytest
import torch
from helpers import seeded_scores

from nemocompress.elastic import ElasticConfig, load_state, slice_run, train_elastic
from nemocompress.zoo import save_zoo_checkpoint, zoo_text

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NVFP4 fake quantization needs CUDA")
def test_nvfp4_qad_trains_and_exports(tmp_path):
    pytest.importorskip("modelopt.torch.quantization")
    save_zoo_checkpoint("llama", tmp_path / "parent")
    (tmp_path / "text.txt").write_text(zoo_text())
    config = ElasticConfig(
        parent=tmp_path / "parent", budgets=["0.5"], data=tmp_path / "text.txt", output_dir=tmp_path / "run",
        steps=6, seq_len=32, batch_size=4, eval_every=0, save_every=0, progress=False, max_width_pruning=0.75,
        max_depth_pruning=0.67, quant="nvfp4",
    )  # fmt: skip
    result = train_elastic(config, lambda: seeded_scores(tmp_path / "parent"))
    assert load_state(result.run_dir)["quant"] == "nvfp4"
    slice_run(result.run_dir, tmp_path / "q", budget="0.5", quant=True, progress=False)
    assert (tmp_path / "q" / "hf_quant_config.json").is_file()
