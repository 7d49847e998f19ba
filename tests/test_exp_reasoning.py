"""benchmarks/exp_reasoning.py end to end on a zoo model with tiny settings: every budget pair is measured,
the table, the verdict and the Pareto plot are written."""

import importlib.util
import json
from pathlib import Path

import pytest

from nemocompress.zoo import save_zoo_checkpoint

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "exp_reasoning.py"


@pytest.mark.usefixtures("one_thread")
def test_exp_reasoning_and_bench_generate_run_every_budget_pair(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("exp_reasoning", SCRIPT)
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    save_zoo_checkpoint("llama", tmp_path / "parent")
    results = exp.main([
        "--parent", str(tmp_path / "parent"), "--workdir", str(tmp_path / "work"), "--train-problems", "200",
        "--test-problems", "3", "--finetune-steps", "3", "--elastic-steps", "4", "--seq-len", "64",
        "--batch-size", "4", "--max-think-tokens", "4", "--max-new-tokens", "3", "--max-width-pruning", "0.75",
        "--max-depth-pruning", "0.67",
    ])  # fmt: skip
    pairs = {(r["think"], r["answer"]) for r in results["rows"]}
    assert pairs == {(a, b) for a in ("0.5", "0.75", "1.0") for b in ("0.5", "0.75", "1.0")}
    assert all(0 <= r["accuracy"] <= 1 and r["latency_s"] > 0 for r in results["rows"])
    assert (tmp_path / "work" / "pareto.png").stat().st_size > 0
    assert json.loads((tmp_path / "work" / "results.json").read_text())["rows"] == results["rows"]
    shown = capsys.readouterr().out
    assert "| think | answer | accuracy" in shown and ("beats" in shown or "No mixed" in shown)

    spec = importlib.util.spec_from_file_location("bench_generate", SCRIPT.with_name("bench_generate.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--run", str(tmp_path / "work" / "run"), "--prompts", "2", "--repeats", "1",
                       "--max-think-tokens", "3", "--max-new-tokens", "2"])  # fmt: skip
    assert [(r["think"], r["answer"]) for r in rows] == [("1.0", "1.0"), ("0.5", "1.0"), ("0.75", "1.0")]
    assert rows[0]["ratio"] == 1.0 and rows[1]["reprefill_tokens"] > rows[0]["reprefill_tokens"]


@pytest.mark.slow
def test_exp_reasoning_on_the_reference_hybrid(tmp_path):
    """The RESULTS.md experiment's pipeline on the real reference hybrid, at toy step counts."""
    spec = importlib.util.spec_from_file_location("exp_reasoning", SCRIPT)
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    results = exp.main(["--parent", "hybrid", "--workdir", str(tmp_path), "--train-problems", "300",
                        "--test-problems", "4", "--finetune-steps", "10", "--elastic-steps", "8",
                        "--max-think-tokens", "8", "--max-new-tokens", "4"])  # fmt: skip
    assert (
        len(results["rows"]) == 9
        and results["params"]["0.5"] < results["params"]["0.75"] < results["params"]["1.0"]
    )
