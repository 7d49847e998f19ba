"""Quantization-aware elastic training (FP8 through ModelOpt, on CPU): the KD loss falls, the RUN is a stock
checkpoint plus trained per-tensor scales, a sliced size exported quantized reloads through ModelOpt and
matches the masked fake-quantized parent; a missing ModelOpt or a bad format is one line, exit 2."""

import builtins
import json

import pytest
import torch
from helpers import seeded_scores
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from nemocompress import cli
from nemocompress.elastic import ElasticConfig, RunMasks, load_state, train_elastic
from nemocompress.elastic.quant import load_quantizer_state, quantize_
from nemocompress.elastic.train import ELASTIC_DIR, QUANTIZERS
from nemocompress.zoo import save_zoo_checkpoint, zoo_text

pytest.importorskip("modelopt.torch.quantization")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    save_zoo_checkpoint("llama", root / "parent")
    (root / "text.txt").write_text(zoo_text())
    config = ElasticConfig(
        parent=root / "parent", budgets=["0.5", "0.75"], data=root / "text.txt", output_dir=root / "run",
        steps=24, seq_len=32, batch_size=4, lr=1e-3, eval_every=12, save_every=0, progress=False,
        max_width_pruning=0.75, max_depth_pruning=0.67, quant="fp8",
    )  # fmt: skip
    result = train_elastic(config, lambda: seeded_scores(root / "parent"))
    return root, result


def test_fp8_qad_loss_falls_and_the_run_keeps_stock_weights_and_scales(run):
    root, result = run
    kd = [r["kd"] for r in result.records if "kd" in r and r.get("budget") == "0.5"]
    assert len(kd) >= 6 and sum(kd[-3:]) < sum(kd[:3]), kd
    state = load_state(root / "run")
    assert state["quant"] == "fp8"
    full = AutoModelForCausalLM.from_pretrained(root / "run")  # stock: no quantizer left in the weights
    assert not any("quantizer" in k for k in full.state_dict())
    scales = load_file(root / "run" / ELASTIC_DIR / QUANTIZERS)
    assert scales and all(torch.isfinite(v).all() and (v > 0).all() for v in scales.values())


def test_sliced_fp8_checkpoint_reloads_through_modelopt_and_matches_the_masked_parent(run, tmp_path):
    root, _ = run
    assert cli.main(["elastic", "slice", str(root / "run"), "--budget", "0.5", "--quant", "-o", str(tmp_path / "q"),
                     "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "q"
    quant_config = json.loads((out / "hf_quant_config.json").read_text())
    assert quant_config["quantization"]["quant_algo"] == "FP8"
    weights = load_file(out / "model.safetensors")
    assert any(v.dtype == torch.float8_e4m3fn for v in weights.values())

    # reload: dequantize the FP8 weights with their scales into the sliced architecture, fake-quantize it
    # again through ModelOpt with the stored scales
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # architecture only
    dequantized = {}
    for key, value in weights.items():
        if key.endswith(("weight_scale", "input_scale")):
            continue
        scale = weights.get(key.removesuffix("weight") + "weight_scale") if key.endswith("weight") else None
        dequantized[key] = value.float() * scale if scale is not None else value.float()
    plain.load_state_dict(dequantized, strict=False)
    quantize_(plain, "fp8", torch.zeros(1, 8, dtype=torch.long))
    amax = {}
    for key, value in weights.items():
        if key.endswith("_scale"):
            module, kind = key.rsplit(".", 1)
            amax[f"{module}.{kind.removesuffix('_scale')}_quantizer"] = value.float() * 448.0
    load_quantizer_state(plain, amax)

    parent = AutoModelForCausalLM.from_pretrained(root / "run").eval()
    state = load_state(root / "run")
    quantize_(parent, "fp8", torch.zeros(1, 8, dtype=torch.long))
    load_quantizer_state(parent, load_file(root / "run" / ELASTIC_DIR / QUANTIZERS))
    masks = RunMasks(root / "run", parent)
    tokens = torch.randint(0, 98, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), masks.at(state["budgets"][0]["choice"]):
        masked = parent(tokens).logits
    with torch.no_grad():
        reloaded = plain.eval()(tokens).logits
    torch.testing.assert_close(reloaded, masked, atol=1e-4, rtol=0)


def test_missing_modelopt_and_bad_formats_are_one_line_errors(run, tmp_path, capsys, monkeypatch):
    root, _ = run
    args = ["elastic", "train", "--parent", str(root / "parent"), "--budgets", "0.5", "--data",
            str(root / "text.txt"), "-o", str(tmp_path / "r"), "--steps", "2", "--no-progress"]  # fmt: skip
    real_import = builtins.__import__

    def no_modelopt(name, *a, **kw):
        if name.startswith("modelopt"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_modelopt)
    assert cli.main([*args, "--quant", "fp8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install nemocompress[quant]" in err and len(err.splitlines()) == 1
    monkeypatch.undo()
    if not torch.cuda.is_available():
        assert cli.main([*args, "--quant", "nvfp4"]) == 2
        assert "needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert (
        cli.main(["elastic", "slice", str(root / "run"), "--budget", "0.5", "-o", str(tmp_path / "s")]) == 0
    )
    capsys.readouterr()
