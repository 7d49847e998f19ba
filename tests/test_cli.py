"""The CLI end to end, and every bad input of the prune command: non-zero exit, a message, nothing written."""

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import re
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from nemocompress import api, cli, distill
from nemocompress.cli import build_parser, main
from nemocompress.distill import DistillConfig
from nemocompress.importance.options import ImportanceOptions
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
    assert main(["info", str(checkpoint), "--context-length", "1024", "--memory-batch-size", "2"]) == 0
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


# ---------------------------------------------------------------------- flags from the option dataclasses


def _subparsers():
    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    return commands.choices


def _cli_fields(cls):
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def test_distill_flags_are_the_dataclass_fields_with_their_defaults():
    parser = _subparsers()["distill"]
    actions = {a.dest: a for a in parser._actions}
    assert len(_cli_fields(DistillConfig)) >= 24
    for f in _cli_fields(DistillConfig):
        action = actions[f.name]
        assert action.default is None  # unset: the --config file, else the dataclass, decides
        if isinstance(f.default, bool):
            assert action.option_strings[-1] == ("--no-" if f.default else "--") + f.name.replace("_", "-")
        elif f.default is not None:
            assert f"(default {f.default})" in action.help, f.name
    required = {"teacher": "t", "student": "s", "data": "d", "output_dir": "o"}
    argv = ["distill", "--teacher", "t", "--student", "s", "--data", "d", "-o", "o"]
    args = vars(build_parser().parse_args(argv))
    flags = {k: v for k, v in args.items() if k not in ("command", "func", "config") and v is not None}
    assert flags == required and DistillConfig.from_dict(flags) == DistillConfig(**required)
    changed = build_parser().parse_args([*argv, "--no-fused-head", "--kd-loss", "jsd", "--warmup-steps", "3"])
    assert (changed.fused_head, changed.kd_loss, changed.warmup_steps) == (False, "jsd", 3)


@pytest.mark.parametrize("command", ["importance", "prune"])
def test_calibration_flags_are_the_importance_options_fields_with_their_defaults(command):
    argv = [command, "m", "-o", "o", "--data", "d"] + (
        ["--export-config", "{}"] if command == "prune" else []
    )
    args = build_parser().parse_args(argv)
    fields = _cli_fields(ImportanceOptions)
    assert {f.name for f in fields} >= {"samples", "seq_len", "batch_size", "dtype", "device", "layer_metric"}
    for f in fields:
        assert getattr(args, f.name) == f.default, f.name
    assert cli._options(args) == ImportanceOptions()  # --data given: the activation ranking
    (short,) = [a.dest for a in _subparsers()[command]._actions if "--batch-size" in a.option_strings]
    assert short == ("batch_size" if command == "importance" else "memory_batch_size")  # prune's: deprecated
    changed = build_parser().parse_args([*argv, "--layer-metric", "lm-loss", "--mamba-source", "z", "--calib-dtype",
                                         "bfloat16", "--calib-batch-size", "2"])  # fmt: skip
    options = cli._options(changed)
    assert (options.layer_metric, options.sources, options.dtype, options.batch_size) == (
        "lm_loss", {"mamba": "z"}, "bfloat16", 2
    )  # fmt: skip


def test_help_states_each_default_once_and_truly():
    checked = 0
    for name, parser in _subparsers().items():
        for action in parser._actions:
            stated = re.findall(r"\(default:? ([^;)]*)[;)]", action.help or "")
            assert len(stated) <= 1, (name, action.help)
            if stated and action.default not in (None, argparse.SUPPRESS):
                default = action.default
                shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
                assert stated[0] == shown, (name, action.dest)
                checked += 1
    assert checked >= 30
    assert "(default 5% of --steps)" in _subparsers()["distill"].format_help()


def test_memory_batch_size_and_its_deprecated_alias(checkpoint, capsys):
    argv = ["info", str(checkpoint), "--context-length", "1024"]
    assert main([*argv, "--memory-batch-size", "2"]) == 0
    new = capsys.readouterr()
    assert "KV cache (2 x 1024 tokens)" in new.out and new.err == ""
    assert main([*argv, "--batch-size", "2"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out
    assert old.err.strip() == "warning: --batch-size is deprecated here, use --memory-batch-size"
    args = build_parser().parse_args(["prune", "m", "-o", "o", "--export-config", "{}", "--batch-size", "3"])
    assert args.memory_batch_size == 3 and args.batch_size == ImportanceOptions().batch_size
    assert "warning: --batch-size is deprecated" in capsys.readouterr().err
    for command in ("info", "prune"):
        assert "--batch-size" not in _subparsers()[command].format_help()


class _Recorded:
    def __init__(self, **fields):
        self.__dict__.update(fields)

    def table(self):
        return "recorded"


def test_distill_and_cache_teacher_go_through_the_api(monkeypatch, capsys):
    calls = []
    signature = inspect.signature(api.cache_teacher).parameters
    # The parser reads api.cache_teacher's signature, so the stand-ins keep the originals' (functools.wraps).
    fake_distill = functools.wraps(api.distill)(
        lambda config: calls.append(config) or _Recorded(final_dir="f")
    )
    fake_cache = functools.wraps(api.cache_teacher)(
        lambda **kw: calls.append(kw) or _Recorded(output_dir="c")
    )
    monkeypatch.setattr(api, "distill", fake_distill)
    monkeypatch.setattr(api, "cache_teacher", fake_cache)
    argv = ["distill", "--student", "s", "--data", "d", "-o", "o", "--teacher", "t", "--steps", "7"]
    assert main(argv) == 0
    assert calls.pop() == DistillConfig(teacher="t", student="s", data="d", output_dir="o", steps=7)
    assert main(["cache-teacher", "--teacher", "t", "--data", "d", "-o", "c", "--samples", "5"]) == 0
    kwargs = calls.pop()
    given = {"teacher": "t", "data": "d", "output_dir": "c", "num_samples": 5}
    assert {k: kwargs[k] for k in given} == given
    assert {k: v for k, v in kwargs.items() if k not in given} == {
        k: signature[k].default for k in kwargs if k not in given
    }
    assert len(kwargs) >= 10 and capsys.readouterr().out.count("recorded") == 2


def test_cli_imports_only_the_api_and_option_modules():
    tree = ast.parse(inspect.getsource(cli))
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert not any(m and m.split(".")[0] == "distill" for m in modules), modules
    assert api.distill is distill.distill and api.cache_teacher is distill.cache_teacher
