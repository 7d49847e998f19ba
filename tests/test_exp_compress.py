"""benchmarks/exp_compress.py end to end on a zoo model: two targets, the same KD steps, two domains."""

import json
import runpy
from pathlib import Path

from nemocompress import api
from nemocompress.zoo import zoo_text

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "exp_compress.py"


def test_exp_compress_reports_parent_pruned_and_distilled_at_two_targets(tmp_path, capsys):
    parent = api.zoo_checkpoint("llama", tmp_path / "llama", text=tmp_path / "prose.txt")
    (tmp_path / "code.txt").write_text(zoo_text(seed=1))
    params = api.eval_model(parent, tmp_path / "prose.txt", samples=2, seq_len=16, progress=False).metrics[
        "params"
    ]
    targets = [str(int(params * 0.8)), str(int(params * 0.6))]
    main = runpy.run_path(str(SCRIPT))["main"]
    main(
        ["--workdir", str(tmp_path / "work"), "--model", str(parent), "--prose", str(tmp_path / "prose.txt"),
         "--code", str(tmp_path / "code.txt"), "--targets", *targets, "--kd-steps", "2", "--seq-len", "16",
         "--samples", "2"]
    )  # fmt: skip
    r = json.loads((tmp_path / "work" / "results.json").read_text())
    assert r["kd_steps"] == 2
    results = r["results"]
    for target in targets:
        for domain in ("prose", "code"):
            pruned, distilled = results[f"{target} pruned/{domain}"], results[f"{target} distilled/{domain}"]
            assert pruned["params"] == distilled["params"] <= int(target)
            assert pruned["kl"] > 0 and distilled["kl"] > 0  # scored against the parent
            assert pruned["loss"] != distilled["loss"]  # the distilled student is another model
    assert results["parent/prose"].get("kl") is None
    out = capsys.readouterr().out
    assert f"{targets[1]} distilled" in out and "prose bpb" in out
