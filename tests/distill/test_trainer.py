"""The distillation trainer on tiny zoo models: loss falls, resume == not stopping, 2 processes == 1, guards."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from nemocompress import api, cli
from nemocompress.data import DataError
from nemocompress.distill import DistillConfig, DistillError, TeacherCache, cache_teacher, distill, lr_at
from nemocompress.distill.batches import DataOrder
from nemocompress.distill.trainer import CHECKPOINTS, latest_checkpoint
from nemocompress.errors import CheckpointError, OutputError
from nemocompress.zoo import save_zoo_checkpoint, zoo_config, zoo_tokenizer

SCRIPT = Path(__file__).with_name("run_distill.py")
TINY = dict(seq_len=32, batch_size=4, lr=3e-3, warmup_steps=1, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A zoo llama teacher, a width-pruned student (and a copy with attention dropout), text documents."""
    root = tmp_path_factory.mktemp("distill")
    save_zoo_checkpoint("llama", root / "teacher")
    targets = {"hidden_size": 48, "ffn_hidden_size": 64}
    api.prune(
        root / "teacher", root / "student", targets, api.ImportanceOptions(ranking="random"), progress=False
    )
    shutil.copytree(root / "student", root / "student_dropout")
    config = json.loads((root / "student_dropout" / "config.json").read_text())
    (root / "student_dropout" / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    text = "".join(Path(m).read_text() for m in sorted(Path(api.__file__).parent.glob("*.py")))
    (root / "data").mkdir()
    for i in range(10):
        (root / "data" / f"doc{i}.txt").write_text(text[i * len(text) // 10 : (i + 1) * len(text) // 10])
    return root


def _config(assets, out, **kw) -> DistillConfig:
    values = dict(
        teacher=assets / "teacher", student=assets / "student", data=assets / "data", output_dir=out
    )
    return DistillConfig(**{**values, **TINY, **kw})


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(model_dir) / "model.safetensors")


def _run(args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_kd_loss_falls_and_final_student_is_a_stock_checkpoint(assets, tmp_path):
    result = distill(_config(assets, tmp_path / "out", steps=32, eval_every=16, save_every=0))
    kd = [r["kd"] for r in result.records if "kd" in r]
    assert len(kd) == 32 and sum(kd[-4:]) < 0.7 * sum(kd[:4])
    evals = result.evals
    assert [e["step"] for e in evals] == [0, 16, 32]
    assert evals[-1]["eval/kl"] < evals[0]["eval/kl"]
    assert {"eval/loss", "eval/bpb"} <= evals[-1].keys()
    out = tmp_path / "out"
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "distill_config.yaml").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 32 + 3
    student = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert student.config.hidden_size == 48
    assert (result.final_dir / "tokenizer.json").is_file()
    trained = _weights(result.final_dir)
    start = _weights(assets / "student")
    assert trained.keys() == start.keys()
    assert not torch.equal(trained["model.embed_tokens.weight"], start["model.embed_tokens.weight"])


def test_sigkill_in_a_save_then_resume_equals_uninterrupted_run_bitwise(assets, tmp_path):
    # attention dropout makes the run consume RNG, so resume must restore RNG states, not just weights
    kw = dict(
        student=assets / "student_dropout", steps=6, save_every=2, eval_every=3, grad_accum=2, batch_size=2
    )
    whole = distill(_config(assets, tmp_path / "whole", **kw))

    config = _config(assets, tmp_path / "killed", **kw)
    config.save_yaml(tmp_path / "killed.yaml")
    done = _run([str(SCRIPT), str(tmp_path / "killed.yaml"), "--kill-in-save", "2"])
    assert done.returncode == -9, done.stderr[-3000:]
    assert latest_checkpoint(tmp_path / "killed").name == "step-00000002"
    assert list((tmp_path / "killed" / CHECKPOINTS).glob(".step-00000004*"))  # the torn save is there

    resumed = distill(_config(assets, tmp_path / "killed", resume=True, **kw))
    assert resumed.resumed_from == 2
    a, b = _weights(whole.final_dir), _weights(resumed.final_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = lambda r: [(x["step"], x.get("loss"), x.get("eval/loss")) for x in r.records]  # noqa: E731
    assert steps(resumed) == steps(whole)
    assert not list((tmp_path / "killed" / CHECKPOINTS).glob(".step-*"))


def test_two_processes_equal_one_with_the_same_global_batch(assets, tmp_path):
    kw = dict(steps=4, grad_accum=2, save_every=0, eval_every=0)
    one = distill(_config(assets, tmp_path / "one", **{**kw, "batch_size": 4}))
    _config(assets, tmp_path / "two", **{**kw, "batch_size": 2}).save_yaml(tmp_path / "two.yaml")
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = _run([*launch, str(SCRIPT), str(tmp_path / "two.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    two_records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    losses = lambda records: torch.tensor([r["loss"] for r in records if "loss" in r])  # noqa: E731
    torch.testing.assert_close(losses(two_records), losses(one.records), rtol=1e-5, atol=1e-7)
    a, b = _weights(one.final_dir), _weights(tmp_path / "two" / "final")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.filterwarnings("ignore:the fused LM-head loss is not used")
def test_offline_cache_equals_live_topk_and_nan_guard_stops_on_poisoned_batch(assets, tmp_path):
    cached = cache_teacher(assets / "teacher", assets / "data", tmp_path / "cache", seq_len=32, top_k=8,
                           shard_samples=40, eval_samples=16, progress=False)  # fmt: skip
    cache = TeacherCache(cached.output_dir)
    assert cache.num_samples("train") == cached.num_train > 40 and cached.num_heldout == 16
    kw = dict(steps=4, kd_loss="topk-kl", top_k=8, save_every=2, eval_every=0)
    with pytest.warns(UserWarning, match=r"fused LM-head loss is not used \(--kd-loss topk-kl"):
        live = distill(_config(assets, tmp_path / "live", **kw))
    offline = distill(
        _config(assets, tmp_path / "offline", teacher=None, data=None, teacher_cache=cache.path, **kw)
    )
    a, b = _weights(live.final_dir), _weights(offline.final_dir)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    assert "eval/kl_topk" in offline.evals[-1]

    # poison the cached teacher logits of every sample that step 3 reads
    poisoned = DataOrder(cache.num_samples("train"), 4, seed=0).step_indices(2)
    for name, n in cache.meta["splits"]["train"]["shards"]:
        first = int(name.split("-")[1].split(".")[0]) * 40
        rows = [i - first for i in poisoned.tolist() if first <= i < first + n]
        tensors = load_file(cache.path / name)
        tensors["topk_values"][rows] = float("nan")
        save_file(tensors, cache.path / name)
    config = _config(assets, tmp_path / "nan", teacher=None, data=None, teacher_cache=cache.path, **kw)
    with pytest.raises(DistillError, match=r"step 3: non-finite loss nan.*step-00000002"):
        distill(config)
    out = tmp_path / "nan"
    assert latest_checkpoint(out).name == "step-00000002" and not (out / "final").exists()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and "non-finite" in last["error"]


def test_intermediate_loss_across_widths_and_ce(assets, tmp_path):
    result = distill(
        _config(assets, tmp_path / "out", steps=3, intermediate="cosine", ce_weight=0.5, save_every=3)
    )
    last = result.records[-2]
    assert last["intermediate"] > 0 and last["ce"] > 0 and last["kd"] > 0
    state = load_file(latest_checkpoint(tmp_path / "out") / "model.safetensors")
    assert state["projection.proj.weight"].shape == (64, 48)  # the learned projection is checkpointed
    assert not any("projection" in k for k in _weights(result.final_dir))  # and left out of the student


def _bad_vocab_student(path: Path) -> Path:
    config = zoo_config("llama")
    config.vocab_size = 100
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    zoo_tokenizer().save_pretrained(path)
    return path


def test_bad_inputs_fail_cleanly_and_write_nothing(assets, tmp_path, capsys):
    base = ["distill", "--teacher", str(assets / "teacher"), "--student", str(assets / "student"),
            "--data", str(assets / "data"), "--steps", "1", "--seq-len", "32"]  # fmt: skip
    cases = [
        (["--teacher", str(tmp_path / "missing")], CheckpointError, "missing is not a directory"),
        (
            ["--student", str(_bad_vocab_student(tmp_path / "vocab100"))],
            DistillError,
            "another tokenizer pass --kd-loss pkl",
        ),
        (["--data", str(tmp_path / "empty")], DataError, "holds no text"),
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("  \n")
    capsys.readouterr()
    for i, (flags, error, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(error, match=message):
            distill(DistillConfig.from_dict({}, **_flags([*base, *flags, "-o", str(out)])))
        assert cli.main([*base, *flags, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    (tmp_path / "exists").mkdir()
    assert cli.main([*base, "-o", str(tmp_path / "exists")]) == 2
    assert "already exists: pass --resume" in capsys.readouterr().err
    cache = ["cache-teacher", "--data", str(assets / "data"), "--seq-len", "32"]
    assert cli.main([*cache, "--teacher", str(assets / "teacher"), "-o", str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main([*cache, "--teacher", str(tmp_path / "missing"), "-o", str(tmp_path / "c")]) == 2
    assert "missing is not a directory" in capsys.readouterr().err and not (tmp_path / "c").exists()
    with pytest.raises(OutputError, match="is \\(or contains\\) the input"):
        distill(_config(assets, assets / "student"))


def _flags(argv):
    args = cli.build_parser().parse_args(argv)
    return {k: v for k, v in vars(args).items() if k not in ("command", "func", "config") and v is not None}


def test_config_yaml_flags_override_and_validation(tmp_path):
    path = tmp_path / "distill.yaml"
    path.write_text("teacher: t\nstudent: s\ndata: d\noutput: o\nsteps: 7\nseq-len: 64\nkd_loss: jsd\n")
    config = DistillConfig.from_yaml(path, steps=9, lr=None)
    assert (config.steps, config.seq_len, config.kd_loss, config.output_dir, config.lr) == (
        9,
        64,
        "jsd",
        "o",
        1e-4,
    )
    args = cli.build_parser().parse_args(["distill", "--config", str(path), "--kd-loss", "tvd"])
    assert args.steps is None and args.kd_loss == "tvd" and args.fused_head is None
    no_fused = cli.build_parser().parse_args(["distill", "--config", str(path), "--no-fused-head"])
    assert DistillConfig.from_yaml(path, fused_head=no_fused.fused_head).fused_head is False
    assert DistillConfig.from_yaml(path).fused_head is True
    with pytest.raises(DistillError, match="unknown distill setting"):
        DistillConfig.from_dict({"student": "s", "output_dir": "o", "data": "d", "stepz": 3})
    bad = [
        dict(kd_loss="mse"),
        dict(steps=0),
        dict(seq_len=1),
        dict(teacher=None),
        dict(teacher_cache="c", kd_loss="kl"),
        dict(kd_weight=0.0, ce_weight=0.0),
        dict(min_lr=1.0),
        dict(resume=True, overwrite=True),
    ]
    for change in bad:
        with pytest.raises(DistillError):
            DistillConfig(**{"teacher": "t", "student": "s", "data": "d", "output_dir": "o", **change})
    ce_only = DistillConfig(student="s", data="d", output_dir="o", kd_weight=0.0, ce_weight=1.0)
    assert not ce_only.uses_teacher_model


def test_lr_schedule_and_data_order():
    config = DistillConfig(teacher="t", student="s", data="d", output_dir="o", steps=100, warmup_steps=10)
    lrs = [lr_at(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[9] == pytest.approx(1e-4) and lrs[10] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > config.min_lr
    assert lr_at(100, config) == pytest.approx(config.min_lr)
    order = DataOrder(10, 4, seed=3)
    first_epoch = torch.cat([order.step_indices(s) for s in range(5)])[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))  # each epoch visits every sample once
    assert torch.equal(DataOrder(10, 4, seed=3).step_indices(7), order.step_indices(7))
    micro = order.micro_batches(1, num_micro=2, num_processes=2, rank=1)
    assert torch.equal(micro.flatten(), order.step_indices(1).view(2, 2, 1)[:, 1].flatten())
