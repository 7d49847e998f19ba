"""Elastic training end to end on tiny zoo models: CLI train -> info -> slice (stock checkpoints that reload
and generate, equal to the masked parent), routers land within 5% of their budgets, SIGKILL + resume ==
uninterrupted bitwise, two gloo processes == one, and every bad input is one line, exit 2, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import free_port, seeded_scores
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from nemocompress import api, cli
from nemocompress.distill.trainer import latest_checkpoint
from nemocompress.elastic import (
    ElasticConfig,
    ElasticError,
    RunMasks,
    load_state,
    train_elastic,
)
from nemocompress.elastic.train import ELASTIC_DIR, load_result
from nemocompress.zoo import save_zoo_checkpoint, zoo_text

SCRIPT = Path(__file__).with_name("run_elastic.py")
SPACE = ["--max-width-pruning", "0.75", "--max-depth-pruning", "0.67"]
TINY = dict(seq_len=32, batch_size=4, lr=1e-3, eval_every=0, save_every=0, progress=False,
            max_width_pruning=0.75, max_depth_pruning=0.67)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    save_zoo_checkpoint("llama", root / "llama")
    save_zoo_checkpoint("nemotron_h-hybrid", root / "hybrid")
    save_zoo_checkpoint("qwen3_moe", root / "moe")
    (root / "text.txt").write_text(zoo_text())
    return root


@pytest.fixture(scope="module")
def run(assets):
    """An elastic RUN trained by the CLI (activation importance on the data, then both stages)."""
    out = assets / "run"
    code = cli.main([
        "elastic", "train", "--parent", str(assets / "llama"), "--budgets", "0.5,0.75", "--data",
        str(assets / "text.txt"), "-o", str(out), "--steps", "40", "--seq-len", "32", "--batch-size", "4",
        "--lr", "1e-3", "--eval-every", "20", "--save-every", "0", "--calib-samples", "4", "--calib-seq-len",
        "32", "--no-progress", *SPACE,
    ])  # fmt: skip
    assert code == 0
    return out


def _yaml(config: ElasticConfig, path: Path) -> Path:
    path.write_text(
        yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in config.to_dict().items()})
    )
    return path


def _config(assets, out, parent="llama", **kw) -> ElasticConfig:
    values = dict(parent=assets / parent, budgets=["0.5", "0.75"], data=assets / "text.txt", output_dir=out)
    return ElasticConfig(**{**values, **TINY, **kw})


def _run(args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _weights(run) -> dict[str, torch.Tensor]:
    weights = load_file(Path(run) / "model.safetensors")
    weights.update(
        {f"router.{k}": v for k, v in load_file(Path(run) / ELASTIC_DIR / "routers.safetensors").items()}
    )
    return weights


def test_run_holds_the_full_model_budgets_and_a_plot(run, capsys):
    state = load_state(run)
    labels = [b["label"] for b in state["budgets"]]
    assert labels == ["0.5", "0.75", "1.0"], "the full model is always a budget"
    full = AutoModelForCausalLM.from_pretrained(run)
    assert state["budgets"][-1]["params"] == sum(p.numel() for p in full.parameters())
    assert (run / ELASTIC_DIR / "budgets.png").stat().st_size > 0
    assert not list((run / ELASTIC_DIR / "training").glob("stage*/checkpoints")), "optimizer states removed"
    for b in state["budgets"][:-1]:
        assert {"loss", "kl"} <= b["eval"].keys() and b["eval"]["kl"] is not None
    assert cli.main(["info", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "elastic budgets" in shown and "hidden_size" in shown


def test_sliced_budget_reloads_generates_and_equals_the_masked_parent(run, tmp_path):
    assert (
        cli.main(
            ["elastic", "slice", str(run), "--budget", "0.5", "-o", str(tmp_path / "half"), "--no-progress"]
        )
        == 0
    )
    state = load_state(run)
    row = state["budgets"][0]
    sliced = AutoModelForCausalLM.from_pretrained(tmp_path / "half")
    assert sum(p.numel() for p in sliced.parameters()) == row["params"]
    out = sliced.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    assert json.loads((tmp_path / "half" / "elastic_budget.json").read_text())["budget"] == "0.5"

    parent = AutoModelForCausalLM.from_pretrained(run).eval()
    masks = RunMasks(run, parent)
    tokens = torch.randint(0, 98, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), masks.at(row["choice"]):
        masked = parent(tokens).logits
    torch.testing.assert_close(sliced(tokens).logits.detach(), masked, atol=1e-5, rtol=0)


def test_slice_all_nests_and_stores_less_than_one_elastic_run(run, tmp_path):
    assert (
        cli.main(["elastic", "slice", str(run), "--all", "-o", str(tmp_path / "all"), "--no-progress"]) == 0
    )
    dirs = sorted((tmp_path / "all").iterdir())
    assert [d.name for d in dirs] == ["budget-0.5", "budget-0.75", "budget-1.0"]
    plans = [json.loads((d / "nemocompress_plan.json").read_text())["kept"] for d in dirs]
    for small, large in zip(plans, plans[1:]):
        for axis, units in small.items():
            assert set(units) <= set(large.get(axis, units)), f"{axis} is not nested"
    separate = sum((d / "model.safetensors").stat().st_size for d in dirs)
    assert (run / "model.safetensors").stat().st_size < separate


@pytest.mark.parametrize(
    "parent,metric",
    [("llama", "params"), ("hybrid", "params"), ("hybrid", "memory"), ("moe", "active-params")],
)
def test_router_costs_land_within_5_percent_of_each_budget(assets, tmp_path, parent, metric):
    config = _config(assets, tmp_path / "run", parent, steps=150, budget_metric=metric, context_length=512)
    result = train_elastic(config, lambda: seeded_scores(config.parent))
    budgets = result.state["budgets"]
    errors = {b["label"]: round(b["error"], 4) for b in budgets}
    assert all(abs(e) <= 0.05 for e in errors.values()), errors
    own = {b["label"]: round(b["router_error"], 4) for b in budgets}
    assert all(abs(e) <= 0.10 for e in own.values()), f"the routers alone: {own}"
    cost = [r["cost_loss"] for r in result.records if "cost_loss" in r and r["budget"] == "0.5"]
    assert sum(cost[-5:]) < 0.25 * sum(cost[:5]), "the cost term is learned"
    full = AutoModelForCausalLM.from_pretrained(result.run_dir)  # a stock checkpoint: no mask left in it
    assert sum(p.numel() for p in full.parameters()) == budgets[-1]["params"]


def test_sigkill_then_resume_equals_the_uninterrupted_run_bitwise(assets, tmp_path):
    kw = dict(steps=12, save_every=2, eval_every=4)  # saves at 2, 4, 6 in each stage: the 5th in stage 2
    whole = train_elastic(_config(assets, tmp_path / "whole", **kw), lambda: seeded_scores(assets / "llama"))
    config = _config(assets, tmp_path / "killed", **kw)
    done = _run([str(SCRIPT), str(_yaml(config, tmp_path / "killed.yaml")), "--kill-in-save", "5"])
    assert done.returncode == -9, done.stderr[-3000:]
    training = tmp_path / "killed" / ELASTIC_DIR / "training"
    assert latest_checkpoint(training / "stage2").name == "step-00000002", "killed inside stage 2"
    assert not (tmp_path / "killed" / ELASTIC_DIR / "elastic.json").exists()
    with pytest.raises(ElasticError, match="has not finished"):
        api.info(tmp_path / "killed")
    resumed = train_elastic(_config(assets, tmp_path / "killed", resume=True, **kw), lambda: 1 / 0)
    a, b = _weights(whole.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.state["budgets"] == whole.state["budgets"]


def test_two_processes_equal_one(assets, tmp_path):
    kw = dict(steps=4, stage1_fraction=0.5)
    one = train_elastic(
        _config(assets, tmp_path / "one", batch_size=4, **kw), lambda: seeded_scores(assets / "llama")
    )
    config = _config(assets, tmp_path / "two", batch_size=2, **kw)
    _yaml(config, tmp_path / "two.yaml")
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = _run([*launch, str(SCRIPT), str(tmp_path / "two.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _weights(one.run_dir), _weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    losses = lambda run: [r["loss"] for r in load_result(run).records if "loss" in r]  # noqa: E731
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(one.run_dir)), rtol=1e-5, atol=1e-7
    )
    chosen = lambda budgets: [(b["label"], b["choice"]) for b in budgets]  # noqa: E731
    assert chosen(load_state(tmp_path / "two")["budgets"]) == chosen(one.state["budgets"])


def _train_args(assets, out, budgets, *more):
    return ["elastic", "train", "--parent", str(assets / "llama"), "--budgets", budgets, "--data",
            str(assets / "text.txt"), "-o", str(out), "--steps", "4", "--seq-len", "32", "--no-progress",
            "--calib-samples", "2", "--calib-seq-len", "32", *SPACE, *more]  # fmt: skip


@pytest.mark.parametrize(
    "budgets,message",
    [
        ("0", "fractions in (0, 1]"),
        ("-0.5", "fractions in (0, 1]"),
        ("1.5", "a fraction lies in (0, 1]"),
        ("2B", "is above the parent"),
        ("0.5,0.50", "are the same budget"),
        ("0.5,0.05", "is out of reach"),
        ("half", "cannot read"),
    ],
)
def test_bad_budgets_are_one_line_exit_2_nothing_written(assets, tmp_path, capsys, budgets, message):
    out = tmp_path / "run"
    assert cli.main(_train_args(assets, out, budgets)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_bad_runs_and_slices_are_one_line_exit_2_nothing_written(assets, run, tmp_path, capsys):
    def fails(args, message):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    out = tmp_path / "out"
    fails(["elastic", "slice", str(run), "--budget", "0.6", "-o", str(out)], "was not trained")
    fails(
        ["elastic", "slice", str(assets / "llama"), "--budget", "0.5", "-o", str(out)], "not an elastic run"
    )
    fails(_train_args(assets, run, "0.5,0.75"), "already exists")
    other = ["--parent", str(assets / "hybrid")]
    fails([*_train_args(assets, run, "0.5,0.75"), "--resume", *other], "another model")
    assert not out.exists()
    assert (
        cli.main(
            [
                "elastic",
                "slice",
                str(run),
                "--budget",
                "0.6",
                "--interpolate",
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert "interpolated" in shown
    note = json.loads((out / "elastic_budget.json").read_text())
    state = load_state(run)
    assert (
        note["interpolated"]
        and state["budgets"][0]["params"]
        <= sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters())
        <= state["budgets"][1]["params"]
    )


def test_the_runs_yaml_config_reads_back(run):
    config = ElasticConfig.from_yaml(run / ELASTIC_DIR / "elastic_config.yaml")
    assert config.budgets == ["0.5", "0.75"] and config.steps == 40 and config.max_width_pruning == 0.75
    assert load_state(run)["metric"] == "params"
