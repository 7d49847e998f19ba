"""`nemocompress compress` end to end on a tiny hybrid: the stages, SIGKILL in every stage then resume ==
not stopping (bitwise), the recipe replayed, bad input."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import free_port
from safetensors.torch import load_file

from nemocompress import api
from nemocompress.cli import main
from nemocompress.compress import STAGES
from nemocompress.zoo import save_zoo_checkpoint, zoo_text

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).with_name("run_compress.py")
MODEL = "nemotron_h-hybrid"
TARGET = "90000"  # of 111,728 parameters
SMALL = ["--seq-len", "32", "--calib-samples", "8", "--eval-samples", "4", "--top-k", "2", "--batch-size", "2",
         "--generation-tokens", "4", "--no-progress"]  # fmt: skip
KD = ["--kd-steps", "6", "--save-every", "2"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    save_zoo_checkpoint(MODEL, root / "model")
    (root / "text.txt").write_text(zoo_text(30))
    return root


def _argv(parent, out, *extra) -> list[str]:
    return [
        "compress",
        str(parent / "model"),
        "--data",
        str(parent / "text.txt"),
        "-o",
        str(out),
        *SMALL,
        *extra,
    ]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def whole(parent):
    """One uninterrupted run, in this process."""
    inputs = lambda: (_digest(parent / "model"), (parent / "text.txt").read_bytes())  # noqa: E731
    before = inputs()
    out = parent / "whole"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses run (OMP_NUM_THREADS=1): the same float sums
    try:
        assert main(_argv(parent, out, "--target-params", TARGET, *KD)) == 0
    finally:
        torch.set_num_threads(threads)
    assert inputs() == before  # inputs are never modified
    return out


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(model_dir) / "model.safetensors")


def _assert_same_weights(a, b) -> None:
    a, b = _weights(a), _weights(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _quality(out: Path) -> dict:
    """Each model's held-out metrics (not the timings, which depend on the machine)."""
    report = json.loads((out / "report.json").read_text())
    kept = ("loss", "bits_per_byte", "kl", "top1_agreement", "params", "memory_bytes")
    return {
        name: ({k: m["metrics"][k] for k in kept}, m["generation"]) for name, m in report["models"].items()
    }


def test_compress_writes_every_stage_a_stock_student_and_the_report(parent, whole, capsys):
    for stage in STAGES:
        assert (whole / "stages" / stage).is_dir(), stage
    assert not list((whole / "stages").glob(".*"))  # no work or temporary directory left
    assert (whole / "stages" / "02-plan" / "search" / "report.json").is_file()  # a target ran the search
    report = json.loads((whole / "report.json").read_text())
    models = report["models"]
    assert list(models) == ["parent", "pruned", "distilled"]
    assert models["pruned"]["metrics"]["params"] <= int(TARGET) < models["parent"]["metrics"]["params"]
    assert models["distilled"]["metrics"]["params"] == models["pruned"]["metrics"]["params"]
    # distillation moved the student towards the parent
    assert models["distilled"]["metrics"]["kl"] < models["pruned"]["metrics"]["kl"]
    assert report["distill"]["steps"] == 6 and report["distill"]["tokens"] == 6 * 2 * 32
    _assert_same_weights(whole / "model", whole / "stages" / "04-distill" / "final")
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(whole / "model")
    assert student.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False).shape == (1, 5)
    assert (whole / "model" / "nemocompress_plan.json").is_file()
    for name in ("report.md", "report.png"):
        assert (whole / name).stat().st_size > 0
    assert "bits per byte" in (whole / "report.md").read_text()
    recipe = yaml.safe_load((whole / "recipe.yaml").read_text())
    assert recipe["target_params"] == TARGET and recipe["kd_steps"] == 6
    assert recipe["model"] == str((parent / "model").resolve())


def test_sigkill_in_every_stage_then_resume_equals_the_uninterrupted_run_bitwise(parent, whole, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(api.__file__).parents[1])}
    first = _argv(parent, out, "--target-params", TARGET, *KD)
    for i, stage in enumerate(STAGES):
        argv = first if i == 0 else ["compress", "-o", str(out), "--resume", "--no-progress"]
        done = subprocess.run([sys.executable, str(SCRIPT), stage, *argv], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == -9, f"{stage}: {done.stderr[-3000:]}"
        finished = [s for s in STAGES if (out / "stages" / s).is_dir() and (s != "04-distill" or
                    (out / "stages" / s / "DONE").exists())]  # fmt: skip
        assert finished == list(STAGES[:i]), stage  # killed inside `stage`, the earlier ones kept
        assert not (out / "model").exists()
    assert main(["compress", "-o", str(out), "--resume", "--no-progress"]) == 0
    _assert_same_weights(whole / "model", out / "model")
    assert _quality(out) == _quality(whole)
    assert not list((out / "stages").glob(".*"))  # torn temporary directories were cleaned up


def test_recipe_replayed_gives_the_same_student(whole, tmp_path):
    out = tmp_path / "replay"
    assert main(["compress", "--recipe", str(whole / "recipe.yaml"), "-o", str(out), "--no-progress"]) == 0
    _assert_same_weights(whole / "model", out / "model")
    assert (out / "recipe.yaml").read_text() == (whole / "recipe.yaml").read_text()
    assert _quality(out) == _quality(whole)


def test_finished_run_resumed_redoes_nothing(whole, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a finished stage was run again")

    for name in ("importance", "search", "prune", "distill", "eval_model"):
        monkeypatch.setattr(api, name, forbidden)
    result = api.compress(whole, resume=True, progress=False)  # the recipe saved in OUT
    assert "distilled" in result.table() and result.model_dir == whole / "model"


def test_kd_steps_zero_warns_and_the_student_is_the_pruned_model(parent, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("not a run")
    argv = _argv(parent, out, "--export-config", '{"hidden_size": 32}', "--kd-steps", "0")
    assert main(argv) == 2  # a folder that is no run: refused ...
    with pytest.warns(UserWarning, match="--kd-steps 0"):
        assert main([*argv, "--overwrite"]) == 0  # ... unless --overwrite
    assert not (out / "something.txt").exists()
    assert not (out / "stages" / "02-plan" / "search").exists()  # sizes given: no search
    _assert_same_weights(out / "model", out / "stages" / "03-prune")
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["parent", "pruned"] and report["distill"]["steps"] == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "{model}", "-o", "{out}", "--target-params", TARGET], "no data: pass --data"),
        (["compress", "{model}", "--data", "{text}", "-o", "{out}"], "needs a target"),
        (["compress", "--data", "{text}", "-o", "{out}", "--target-params", TARGET], "no model"),
        (["compress", "{model}", "--data", "{text}", "-o", "{out}", "--target-params", TARGET, "--export-config",
          '{{"hidden_size": 32}}'], "not both"),  # fmt: skip
        (["compress", "{model}", "--data", "{text}", "-o", "{out}", "--target-params", "1B"], "is not below"),
        (["compress", "{model}", "--data", "{text}", "-o", "{out}", "--export-config", '{{"hidden_sise": 7}}'],
         "unknown export_config keys"),  # fmt: skip
        (["compress", "{model}", "--data", "{text}x", "-o", "{out}", "--target-params", TARGET], "does not exist"),
        (["compress", "{model}", "--data", "{text}", "-o", "{out}", "--target-params", TARGET, "--kd-steps", "3",
          "--kd-tokens", "1M"], "not both"),  # fmt: skip
        (["compress", "{model}", "--data", "{text}", "-o", "{model}", "--target-params", TARGET], "is (or contains)"),
        (["compress", "{model}", "--data", "{text}", "-o", "{out}", "--target-params", TARGET, "--resume",
          "--overwrite"], "pick one"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_writes_nothing(parent, tmp_path, capsys, argv, message):
    paths = {"model": parent / "model", "text": parent / "text.txt", "out": tmp_path / "out"}
    before = _digest(parent / "model")
    assert main([a.format(**paths) for a in argv]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not (tmp_path / "out").exists() and _digest(parent / "model") == before


def test_an_output_holding_another_run_is_refused_unless_resume_of_the_same_recipe(parent, whole, capsys):
    report = (whole / "report.json").read_text()
    assert main(_argv(parent, whole, "--target-params", TARGET, *KD)) == 2
    assert "pass --resume to continue it, --overwrite to start over" in capsys.readouterr().err
    assert main(_argv(parent, whole, "--target-params", TARGET, "--kd-steps", "7", "--resume")) == 2
    assert "kd_steps: 6 -> 7" in capsys.readouterr().err
    assert (whole / "report.json").read_text() == report  # nothing was touched


_FSDP_CPU = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
machine_rank: 0
num_processes: 2
mixed_precision: 'no'
use_cpu: true
fsdp_config:
  fsdp_auto_wrap_policy: NO_WRAP
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_use_orig_params: true
"""


@pytest.mark.parametrize(
    "launcher", [pytest.param("fsdp", marks=pytest.mark.slow), "ddp"]
)  # fsdp: a skip, 20 s
def test_distill_stage_on_two_processes_equals_one(whole, tmp_path, launcher):
    """The finished stages 01-03 of the one-process run, then distill + eval on two CPU processes (gloo):
    the same recipe (--batch-size is split over the processes), so the same global batch and student."""
    out = tmp_path / "two"
    shutil.copytree(whole, out)
    for name in ("stages/04-distill", "stages/05-eval", "model"):
        shutil.rmtree(out / name)
    (out / "report.json").unlink()
    if launcher == "fsdp":
        (tmp_path / "fsdp.yaml").write_text(_FSDP_CPU)
        launch = ["-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp.yaml"),
                  "--main_process_port", str(free_port())]  # fmt: skip
    else:
        launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(api.__file__).parents[1])}
    argv = [*launch, "-m", "nemocompress.cli", "compress", "-o", str(out), "--resume", "--no-progress"]
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300)
    if launcher == "fsdp" and "no available devices found" in done.stderr:
        import accelerate

        pytest.skip(
            f"FSDP cannot run on CPU here: accelerate {accelerate.__version__}'s FullyShardedDataParallelPlugin "
            "refuses a machine without an accelerator (RuntimeError: no available devices found); DDP is tested"
        )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _weights(whole / "model"), _weights(out / "model")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    records = [
        json.loads(x) for x in (out / "stages" / "04-distill" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len([r for r in records if "loss" in r]) == 6


DIST_SCRIPT = Path(__file__).with_name("dist_compress.py")


def _torchrun(record_dir: Path, argv: list[str]) -> list[dict]:
    """``nemocompress ARGV`` on two CPU processes (gloo); what each process ran (dist_compress.py)."""
    record_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(api.__file__).parents[1])}
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = subprocess.run([sys.executable, *launch, str(DIST_SCRIPT), str(record_dir), *argv], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr, done.stderr[-3000:]
    records = [json.loads((record_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in records:  # the process group was destroyed, not kept alive into interpreter exit
        assert record.pop("gloo_threads") == []
    return records


@pytest.fixture(scope="module")
def two(parent, tmp_path_factory):
    """The uninterrupted run of `whole` from scratch on two processes, and what each process ran."""
    root = tmp_path_factory.mktemp("two")
    records = _torchrun(root / "records", _argv(parent, root / "out", "--target-params", TARGET, *KD))
    return root / "out", records


def _importance_stats(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "stages" / "01-importance" / "scores.safetensors")


def test_whole_run_on_two_processes_equals_one(whole, two):
    """Calibration sharded over both processes, plan / prune / eval on the main one, distillation DDP: the
    same importance statistics (1e-9), plan and (to float sums) student as the one-process run."""
    out, (main_rank, other) = two
    assert main_rank == {"stages": ["_importance", "_plan", "_prune", "_distill", "_eval"], "calibrated": 4}
    assert other == {"stages": ["_importance", "_distill"], "calibrated": 4}  # half of the 8 samples each
    one, both = _importance_stats(whole), _importance_stats(out)
    assert one.keys() == both.keys() and len(one) > 10
    for key, value in one.items():
        torch.testing.assert_close(both[key], value, rtol=1e-9, atol=1e-9, msg=key)
    plan = lambda o: json.loads((o / "stages" / "02-plan" / "plan.json").read_text())  # noqa: E731
    assert plan(out) == plan(whole)
    a, b = _weights(whole / "model"), _weights(out / "model")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert list(json.loads((out / "report.json").read_text())["models"]) == ["parent", "pruned", "distilled"]
    assert not list((out / "stages").glob(".*"))  # no work, partial or temporary directory left


@pytest.mark.parametrize("finished", ["01-importance", "04-distill"])
def test_two_processes_resumed_redo_no_finished_stage(two, tmp_path, finished):
    """Resumed after the importance stage (or the distillation), neither process redoes it; the others end
    with the main process still evaluating."""
    out = tmp_path / "out"
    shutil.copytree(two[0], out)
    kept = STAGES[: STAGES.index(finished) + 1]
    for name in [*(f"stages/{s}" for s in STAGES if s not in kept), "model"]:
        shutil.rmtree(out / name)
    (out / "report.json").unlink()
    before = {s: _digest(out / "stages" / s) for s in kept}
    records = _torchrun(tmp_path / "records", ["compress", "-o", str(out), "--resume", "--no-progress"])
    left = ["_" + s.split("-")[1] for s in STAGES if s not in kept]
    assert records[0] == {"stages": left, "calibrated": 0}
    assert records[1] == {"stages": [s for s in left if s == "_distill"], "calibrated": 0}
    assert {s: _digest(out / "stages" / s) for s in kept} == before
    _assert_same_weights(two[0] / "model", out / "model")  # the same two-process computation, bitwise
