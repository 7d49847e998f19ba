"""benchmarks/exp_search.py end to end at toy sizes: on a zoo hybrid, and on the real SmolLM2-135M (`pytest -m slow`)."""

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "exp_search.py"


@pytest.mark.slow
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


@pytest.mark.parametrize("fraction", ["0.8", "0.7"])
def test_exp_search_on_a_zoo_hybrid_keeps_attention_and_fits(tmp_path, capsys, fraction):
    from transformers import AutoConfig

    from nemocompress import api
    from nemocompress.arch import get_adapter
    from nemocompress.zoo import zoo_text

    zoo = "nemotron_h-hybrid"
    parent = api.zoo_checkpoint(zoo, tmp_path / zoo, text=tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text(zoo_text(seed=1))
    main = runpy.run_path(str(SCRIPT))["main"]
    main(
        ["--workdir", str(tmp_path / "work"), "--parents", str(parent), "--data-domain", str(tmp_path / "a.txt"),
         "--other-domain", str(tmp_path / "b.txt"), "--seq-len", "16", "--val-samples", "2", "--test-samples",
         "2", "--calib-samples", "2", "--width-configs", "2", "--top-k", "2", "--kd-steps", "1",
         "--final-steps", "1", "--batch-size", "2", "--target-fraction", fraction]
    )  # fmt: skip
    r = json.loads((tmp_path / "work" / "results.json").read_text())[zoo]
    # num_layers alone would drop the only attention layer (lowest importance): depth goes per layer kind
    depth = r["choices"]["depth"][0]
    assert depth["tag"] == "depth_per_kind"
    if fraction == "0.8":
        methods, outs = ("width", "depth", "search", "minipuzzle"), ("depth_per_kind", "search", "minipuzzle")
        assert depth["winner"] and r["unreachable"] == {}
    else:  # at 70% no depth-only model fits (every layer kind keeps one layer): recorded, not a crash
        methods, outs = ("width", "search", "minipuzzle"), ("search", "minipuzzle")
        assert "unreachable target" in depth["unreachable"]
        assert r["unreachable"] == {"depth": depth["unreachable"]}
        assert "depth" not in r["params"] and not any(k.endswith("/depth") for k in r["evals"])
        out = capsys.readouterr().out
        assert "| depth |" not in out and "No depth row: depth-only cannot reach the target" in out
    assert all(r["params"][m] <= r["params"]["target"] for m in methods)
    for domain in (tmp_path / "a.txt", tmp_path / "b.txt"):
        assert all(r["evals"][f"{domain}/{m}"]["after"]["kl"] > 0 for m in methods)
    for out in outs:
        config = AutoConfig.from_pretrained(tmp_path / "work" / zoo / out)
        assert get_adapter(config).kv_cache_layers(config), out
