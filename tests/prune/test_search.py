"""The budget search end to end on a tiny hybrid: the winner, resume after SIGKILL, MiniPuzzle KD, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemocompress import api
from nemocompress.checkpoint import load_config
from nemocompress.cli import main
from nemocompress.data import build_samples
from nemocompress.importance.options import ImportanceOptions
from nemocompress.prune import score as score_module
from nemocompress.prune.cost import model_cost
from nemocompress.zoo import save_zoo_checkpoint, zoo_text

MODEL = "nemotron_h-hybrid"
CALIB = ImportanceOptions(samples=8, seq_len=64, batch_size=4)
FLAGS = [
    "--samples", "8", "--seq-len", "64", "--score-samples", "4", "--top-k", "3", "--max-depth-pruning", "0.5",
    "--divisors", '{"hidden_size": 8, "ffn_hidden_size": 16, "moe_shared_expert_intermediate_size": 8}',
]  # fmt: skip


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    save_zoo_checkpoint(MODEL, root / "model")
    (root / "text.txt").write_text(zoo_text(30))
    return root


def _options(**kwargs) -> api.SearchOptions:
    base = dict(top_k=3, score_samples=4, seq_len=64, max_depth_pruning=0.5,
                divisors={"hidden_size": 8, "ffn_hidden_size": 16, "moe_shared_expert_intermediate_size": 8})  # fmt: skip
    return api.SearchOptions(**{**base, **kwargs})


def _budget(model_dir) -> api.Budget:
    return api.Budget(params=int(model_cost(load_config(model_dir)).params * 0.8))


def _report(out: Path) -> dict:
    report = json.loads((out / "search" / "report.json").read_text())
    report["enumeration"].pop("seconds")
    return report


def test_search_writes_the_best_scored_candidate_as_a_stock_checkpoint(parent, tmp_path):
    out = tmp_path / "out"
    result = api.search(parent / "model", out, _budget(parent / "model"), parent / "text.txt", _options(), CALIB,
                        progress=False)  # fmt: skip
    report = _report(out)
    scored = report["scored"]
    assert len(scored) == 3 and [s["index"] for s in scored] == [0, 1, 2]
    best = min(scored, key=lambda s: s["score"])  # kl: lower is better
    assert report["winner"]["index"] == best["index"] == result.winner["index"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model_cost(model.config).params == best["params"] <= _budget(parent / "model").params
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False).shape == (1, 6)
    # masked == sliced: the sliced winner scores what its masked parent scored
    tokenizer = AutoTokenizer.from_pretrained(parent / "model")
    heldout = build_samples(tokenizer, parent / "text.txt", 64, 0, 4).heldout
    ref = AutoModelForCausalLM.from_pretrained(parent / "model").eval()
    scorer = score_module.make_scorer("kl", ref, tokenizer, heldout)
    assert scorer(model.eval()) == pytest.approx(best["score"], abs=1e-5)
    for name in ("report.md", "candidates.png"):
        assert (out / "search" / name).stat().st_size > 0
    assert not api.search_state_dir(out).exists()
    assert "*" in result.table()


def test_same_seed_same_report(parent, tmp_path):
    reports = []
    for name in ("a", "b"):
        api.search(parent / "model", tmp_path / name, _budget(parent / "model"), parent / "text.txt", _options(),
                   CALIB, progress=False)  # fmt: skip
        reports.append(_report(tmp_path / name))
    assert reports[0] == reports[1]


def _cli(parent, out, *extra) -> list[str]:
    return [sys.executable, "-m", "nemocompress.cli", "prune", str(parent / "model"), "-o", str(out), "--data",
            str(parent / "text.txt"), "--target-params", str(_budget(parent / "model").params), *FLAGS, *extra]  # fmt: skip


KD = ["--kd-steps", "3", "--top-k", "2"]


@pytest.fixture(scope="module")
def minipuzzle(parent, tmp_path_factory):
    """An uninterrupted MiniPuzzle search from the command line: 2 candidates, 3 KD steps each."""
    out = tmp_path_factory.mktemp("minipuzzle") / "out"
    assert main(_cli(parent, out, *KD)[3:]) == 0
    return out


def test_minipuzzle_distills_each_candidate_and_keeps_the_best_after_kd(parent, minipuzzle):
    report = _report(minipuzzle)
    assert report["score"]["ranked_by"] == "score_kd"
    assert all("score_kd" in s for s in report["scored"])
    assert report["winner"]["score_kd"] == min(s["score_kd"] for s in report["scored"])
    model = AutoModelForCausalLM.from_pretrained(minipuzzle)
    assert model_cost(model.config).params == report["winner"]["params"]
    sliced = {s["index"]: s["score"] for s in report["scored"]}
    assert (
        report["winner"]["score_kd"] != sliced[report["winner"]["index"]]
    )  # the output is the distilled one


@pytest.mark.parametrize("kill_when", ["zero-shot", "kd"])
def test_resume_after_sigkill_gives_the_same_report_and_recomputes_nothing(
    parent, minipuzzle, tmp_path, kill_when, monkeypatch
):
    extra = KD
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(api.__file__).parents[1])}
    proc = subprocess.Popen(
        _cli(parent, out, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    scores = api.search_state_dir(out) / "scores.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = scores.read_text().splitlines() if scores.exists() else []
        if any(json.loads(x)["phase"] == kill_when for x in lines if x.endswith("}")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the search finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = {
        json.loads(x)["phase"] + str(json.loads(x)["index"])
        for x in scores.read_text().splitlines()
        if x.endswith("}")
    }
    calls = []
    real = score_module.score_masked
    monkeypatch.setattr(score_module, "score_masked", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(_cli(parent, out, *extra, "--resume")[3:]) == 0
    assert len(calls) == 2 - sum(d.startswith("zero-shot") for d in done)
    assert _report(out) == _report(minipuzzle)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--export-config", '{"hidden_size": 48}'], "not both"),
        (["--target-params", "100"], "smallest candidate"),
        (["--target-params", "1B"], "is not below the model's current"),
        (["--target-memory", "0.000001", "--reserve", "1"], "leaves nothing"),
        (["--hparams-to-skip", "hidden_size", "ffn_hidden_size", "num_attention_heads", "mamba_num_heads",
          "mamba_head_dim", "num_moe_experts", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size",
          "num_layers"], "no size is left"),
        (["--divisors", "{hidden"], "--divisors is not JSON"),
        (["--target-params", "12Q"], "6e9, 6B or 900M"),
    ],
)  # fmt: skip
def test_bad_targets_exit_2_and_write_nothing(parent, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["prune", str(parent / "model"), "-o", str(out), "--data", str(parent / "text.txt"), *extra]
    if not any(a.startswith("--target") for a in extra):
        argv += ["--target-params", str(_budget(parent / "model").params)]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not out.exists() and not api.search_state_dir(out).exists()


def test_an_existing_state_needs_resume_or_overwrite(parent, tmp_path, capsys):
    out = tmp_path / "out"
    api.search_state_dir(out).mkdir(parents=True)
    argv = _cli(parent, out)[3:]
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "search" / "report.json").exists()


def test_measured_latency_replaces_the_estimate_and_filters(parent, tmp_path):
    budget = api.Budget(
        params=_budget(parent / "model").params, latency_ms=1e6, measure_latency=True, context_length=8
    )
    result = api.search(parent / "model", tmp_path / "out", budget, parent / "text.txt", _options(top_k=2), CALIB,
                        progress=False)  # fmt: skip
    scored = result.report["scored"]
    listed = {c["index"]: c for c in result.report["candidates"]}
    assert len(scored) == 2
    assert all(
        s["latency_ms"] != listed[s["index"]]["latency_ms"] for s in scored
    )  # measured, not the roofline
    assert "mamba" in result.table() and "meet every target" in result.table()
    with pytest.raises(
        api.PlanError, match="no candidate meets --target-latency .* the fastest by the estimate measures"
    ):
        tight = api.Budget(params=budget.params, latency_ms=1e-9, measure_latency=True, context_length=8)
        api.search(parent / "model", tmp_path / "out2", tight, parent / "text.txt", _options(top_k=2), CALIB,
                   progress=False)  # fmt: skip
