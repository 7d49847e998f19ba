"""benchmarks/exp_elastic.py end to end at toy sizes on a zoo Llama: one elastic run against separate prune +
distill at equal tokens, every size evaluated on two held-out domains, and the storage of each."""

import json
import math
import runpy
from pathlib import Path

import pytest

from nemocompress import api
from nemocompress.zoo import zoo_text

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "exp_elastic.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_exp_elastic_compares_one_elastic_run_with_separate_runs_at_equal_tokens(tmp_path, capsys):
    parent = api.zoo_checkpoint("llama", tmp_path / "llama", text=tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text(zoo_text(seed=1))
    main = runpy.run_path(str(SCRIPT))["main"]
    main(
        ["--workdir", str(tmp_path / "work"), "--parents", str(parent), "--data-domain",
         str(tmp_path / "a.txt"), "--other-domain", str(tmp_path / "b.txt"), "--steps", "8", "--seq-len",
         "16", "--stage1-seq-len", "8", "--batch-size", "2", "--lr", "1e-3", "--calib-samples", "2",
         "--calib-seq-len", "16", "--test-samples", "2", "--test-seq-len", "16", "--max-width-pruning",
         "0.75", "--max-depth-pruning", "0.67"]
    )  # fmt: skip
    r = json.loads((tmp_path / "work" / "results.json").read_text())["llama"]
    # equal tokens: 2 x (4 x 8 + 4 x 16) elastic = 2 runs x 3 steps x 2 x 16 separate
    assert r["tokens"] == {"elastic_tokens": 192, "separate_steps": 3, "separate_tokens": 192}
    assert [b["label"] for b in r["budgets"]] == ["0.5", "0.75", "1.0"]
    assert sum(r["budget_steps"].values()) == 8 and not r["elastic_train_loss"]["nan"]
    p = r["params"]
    assert p["elastic/1.0"] == p["separate/1.0"] == p["parent"]
    domains = (str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))
    for b in r["budgets"][:2]:
        label = b["label"]
        assert abs(b["error"]) <= 0.05, b
        # the same architecture for all three: the elastic choice
        assert p[f"elastic/{label}"] == p[f"separate/{label}"] == p[f"untrained/{label}"] == b["params"]
        for domain in domains:
            e = {m: r["evals"][f"{domain}/{m}/{label}"] for m in ("elastic", "separate", "untrained")}
            assert all(math.isfinite(v["loss"]) and v["kl"] > 0 for v in e.values()), e
            assert e["separate"]["loss"] != e["untrained"]["loss"], "the separate run was distilled"
    for domain in domains:
        assert r["evals"][f"{domain}/separate/1.0"]["kl"] == 0
    s = r["storage"]
    assert s["elastic_bytes"] == s["elastic_model_bytes"] + s["routers_bytes"] and 0 < s["ratio"] < 1
    assert len(s["separate_each"]) == 3
    out = capsys.readouterr().out
    assert f"| 0.75 | {domains[1]} |" in out and "ratio" in out


def test_exp_elastic_refuses_steps_that_do_not_split_into_equal_tokens():
    ns = runpy.run_path(str(SCRIPT))
    args = ns["parse_args"](["--steps", "7", "--batch-size", "2", "--seq-len", "16", "--stage1-seq-len", "8"])
    with pytest.raises(SystemExit, match="do not split"):
        ns["token_plan"](args, 2)


@pytest.mark.slow
def test_exp_elastic_on_the_reference_hybrid(tmp_path):
    """The RESULTS.md experiment on the real reference hybrid, at toy step counts."""
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "exp_elastic.py"))["main"]
    main(["--workdir", str(tmp_path), "--parents", "hybrid", "--steps", "8", "--calib-samples", "2",
          "--test-samples", "2", "--no-api-prune-check"])  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert "hybrid" in results
