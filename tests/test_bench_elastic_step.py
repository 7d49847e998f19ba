"""benchmarks/bench_elastic_step.py --quick end to end: both sides run, the table and verdict are printed."""

import runpy
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_elastic_step.py"


def test_bench_elastic_step_quick_prints_the_ratio_table(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    threads = torch.get_num_threads()
    argv = ["--quick", "--rounds", "1", "--steps", "4", "--seq-len", "32", "--threads", "1",
            "--workdir", str(tmp_path)]  # fmt: skip
    result = main(argv)
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # --threads does not outlive the run
    assert "| plain KD" in out and "| elastic (all budgets)" in out
    assert "target <= 1.3x: PASS" in out or "target <= 1.3x: FAIL" in out
    assert len(result["plain"]) == 3 and len(result["elastic"]) == 3  # 4 steps, the first untimed
    assert all(t > 0 for t in result["plain"])
    assert {b for b, _ in result["elastic"]} <= {"0.5", "0.75", "1.0"}
    assert result["ratio"] > 0 and result["verdict"] == ("PASS" if result["ratio"] <= 1.3 else "FAIL")
    assert not any(tmp_path.glob("plain-*")) and not any(tmp_path.glob("elastic-*"))  # runs cleaned up
