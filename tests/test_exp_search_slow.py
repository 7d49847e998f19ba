"""benchmarks/exp_search.py end to end at toy sizes on the real SmolLM2-135M: run with `pytest -m slow`."""

import json
import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "exp_search.py"


def test_exp_search_compares_four_methods_at_equal_kd_steps(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    main(
        ["--workdir", str(tmp_path), "--parents", "smollm2", "--seq-len", "32", "--val-samples", "2",
         "--test-samples", "2", "--calib-samples", "2", "--width-configs", "2", "--top-k", "2",
         "--kd-steps", "1", "--final-steps", "1", "--batch-size", "2"]
    )  # fmt: skip
    r = json.loads((tmp_path / "results.json").read_text())["smollm2"]
    target = r["params"]["target"]
    for method in ("width", "depth", "search", "minipuzzle"):
        assert 0.9 * target <= r["params"][method] <= target, method
        for domain in ("shakespeare", "python-stdlib"):
            e = r["evals"][f"{domain}/{method}"]
            # equal total KD steps: the one-shot choices get the top_k * kd_steps MiniPuzzle spent
            assert e["steps"] == (1 if method == "minipuzzle" else 1 + 2 * 1)
            assert e["before"]["kl"] > 0 and e["after"]["kl"] > 0
    assert len(r["choices"]["width"]) == 2 and len(r["choices"]["depth"]) == 2
    assert all(c["score_kd"] is not None for c in r["choices"]["minipuzzle"])
    assert "| minipuzzle |" in capsys.readouterr().out
