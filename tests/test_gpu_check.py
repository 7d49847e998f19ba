"""benchmarks/gpu_check.sh --dry-run on the CPU: the gpu tests are collected and skip with a reason, the
benchmarks run at toy sizes, and the summaries are written (so the GPU check cannot rot between GPU runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _check(*args, timeout=300):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    done = _check(str(out), "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_dry_run_writes_both_summaries(dry_run):
    out, stdout = dry_run
    assert "GPU: none | torch" in stdout and "transformers" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["torch"] and summary["environment"]["transformers"]
    markdown = (out / "summary.md").read_text()
    for heading in ("# GPU check", "## pytest -m gpu", "## importance", "## distill", "## kd_loss"):
        assert heading in markdown


def test_dry_run_imports_every_gpu_test_and_each_skips_with_its_reason(dry_run):
    out, _ = dry_run
    results = json.loads((out / "summary.json").read_text())["pytest"]
    modules = {t["test"].split("::")[0].rsplit(".", 1)[-1] for t in results["tests"]}
    assert modules == {p.stem for p in (ROOT / "tests" / "gpu").glob("test_*.py")}
    assert results["counts"]["skipped"] == len(results["tests"]) >= 19
    assert all("CUDA" in t["message"] for t in results["tests"])


def test_dry_run_benchmarks_ran_at_toy_sizes(dry_run):
    out, _ = dry_run
    bench = json.loads((out / "summary.json").read_text())["benchmarks"]
    assert set(bench) == {"importance", "distill", "kd_loss"}
    assert all("error" not in result for result in bench.values()), bench
    assert {r["scores"] for r in bench["importance"]["rows"]} == {"width", "width+depth"}
    assert all(r["tokens_per_s"] > 0 for r in bench["importance"]["rows"] + bench["distill"]["rows"])
    values = [r["value"] for r in bench["kd_loss"]["rows"]]  # naive, chunked, naive from hidden, fused
    assert values[1] == pytest.approx(values[0], rel=1e-4) and values[3] == pytest.approx(values[2], rel=1e-2)


def test_every_test_under_tests_gpu_is_marked_gpu():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "-m", "not gpu",
         str(ROOT / "tests" / "gpu")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 5, done.stdout[-2000:]  # 5: no test collected, i.e. none lacks the mark


def test_unknown_option_prints_the_usage(tmp_path):
    done = _check(str(tmp_path), "--wheel", "x")
    assert done.returncode == 2 and "usage:" in done.stderr
    done = _check(str(tmp_path), "--wheels", str(tmp_path / "missing"))
    assert done.returncode == 2 and "is not a folder" in done.stderr
