"""The CLI end to end, and every bad input of the prune command: non-zero exit, a message, nothing written."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from nemocompress.cli import main
from nemocompress.prune.slice import PLAN_FILE
from nemocompress.zoo import zoo_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "hybrid"
    zoo_model("nemotron_h-hybrid").save_pretrained(path)
    return path


def _prune(src, out, export, *extra):
    return main(["prune", str(src), "-o", str(out), "--export-config", json.dumps(export), *extra])


def test_info_prints_axes_and_costs(checkpoint, capsys):
    assert main(["info", str(checkpoint), "--context-length", "1024", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    words = ("mamba_heads", "attention_heads", "experts", "active params", "KV cache (2 x 1024 tokens)")
    for word in (*words, "recurrent state"):
        assert word in out


@pytest.mark.parametrize("importance", ["magnitude", "random"])
def test_prune_writes_a_stock_checkpoint(checkpoint, tmp_path, capsys, importance):
    export = {"hidden_size": 48, "mamba_num_heads": 4, "num_moe_experts": 2, "ffn_hidden_size": 64}
    assert _prune(checkpoint, tmp_path / "out", export, "--importance", importance) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    c = model.config
    assert (c.hidden_size, c.mamba_num_heads, c.n_routed_experts, c.intermediate_size) == (48, 4, 2, 64)
    assert (tmp_path / "out" / PLAN_FILE).is_file()
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 128)
    assert "before" in capsys.readouterr().out


def test_overwrite_replaces_output(checkpoint, tmp_path):
    assert _prune(checkpoint, tmp_path / "out", {"hidden_size": 48}) == 0
    assert _prune(checkpoint, tmp_path / "out", {"hidden_size": 32}, "--overwrite") == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hidden_size"] == 32


BAD_TARGETS = [
    ({"hidden_sizes": 48}, "unknown export_config keys"),
    ({"hidden_size": 500}, "larger than the current size"),
    ({"mamba_num_heads": 5}, "multiple of 2"),
    ({"num_attention_heads": 3}, "multiple of 2"),
    ({"hidden_size": 0}, "positive integer"),
    ({"num_layers": 0}, "positive integer"),
]


@pytest.mark.parametrize("export,message", BAD_TARGETS)
def test_bad_targets(checkpoint, tmp_path, capsys, export, message):
    assert _prune(checkpoint, tmp_path / "out", export) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_json(checkpoint, tmp_path, capsys):
    assert main(["prune", str(checkpoint), "-o", str(tmp_path / "o"), "--export-config", "{hidden: 3"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_output_exists_without_overwrite(checkpoint, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert _prune(checkpoint, tmp_path / "out", {"hidden_size": 48}) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_output_is_input(checkpoint, capsys):
    before = sorted(p.name for p in checkpoint.iterdir())
    assert _prune(checkpoint, checkpoint, {"hidden_size": 48}, "--overwrite") == 2
    assert "is (or contains) the input" in capsys.readouterr().err
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_unknown_model_type(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2})
    )
    assert _prune(tmp_path / "m", tmp_path / "out", {"hidden_size": 4}) == 2
    err = capsys.readouterr().err
    assert "not supported" in err and "nemotron_h" in err
    assert not (tmp_path / "out").exists()


def test_missing_config(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert _prune(tmp_path / "m", tmp_path / "out", {"hidden_size": 4}) == 2
    assert "no config.json" in capsys.readouterr().err


def _copy(checkpoint, tmp_path):
    dst = tmp_path / "src"
    shutil.copytree(checkpoint, dst)
    return dst / "model.safetensors"


def test_truncated_safetensors(checkpoint, tmp_path, capsys):
    weights = _copy(checkpoint, tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    assert _prune(tmp_path / "src", tmp_path / "out", {"hidden_size": 48}) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("garbage", [b"\xff" * 8, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"])
def test_corrupt_safetensors_header(checkpoint, tmp_path, capsys, garbage):
    weights = _copy(checkpoint, tmp_path)
    weights.write_bytes(garbage + weights.read_bytes()[len(garbage) :])
    assert _prune(tmp_path / "src", tmp_path / "out", {"hidden_size": 48}) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_pickle_only_checkpoint_is_refused(checkpoint, tmp_path, capsys):
    weights = _copy(checkpoint, tmp_path)
    weights.rename(weights.with_name("pytorch_model.bin"))
    assert _prune(tmp_path / "src", tmp_path / "out", {"hidden_size": 48}) == 2
    assert "never unpickles" in capsys.readouterr().err
