"""`nemocompress eval` and its regression gate, end to end on pruned zoo models; and the CI gate script."""

import importlib.util
import json
from pathlib import Path

import pytest

from nemocompress import api
from nemocompress.cli import main
from nemocompress.eval_report import GateError, compare_reports, parse_tolerances
from nemocompress.zoo import zoo_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EXPORT = {"hidden_size": 48, "mamba_num_heads": 6, "ffn_hidden_size": 64, "num_moe_experts": 3}
FAST = ["--samples", "8", "--seq-len", "64", "--generation-tokens", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A zoo parent, its text, a magnitude-pruned child and the parent's report (KL 0, top-1 1 to itself)."""
    w = tmp_path_factory.mktemp("eval")
    assert main(["zoo", "nemotron_h-hybrid", "-o", str(w / "parent"), "--text", str(w / "text.txt")]) == 0
    api.prune(w / "parent", w / "pruned", EXPORT, progress=False)
    args = ["eval", str(w / "parent"), "--data", str(w / "text.txt"), "--reference", str(w / "parent"), *FAST]
    assert main([*args, "-o", str(w / "parent.json")]) == 0
    return w


def _gate(w, *flags, model="pruned"):
    return main(["eval", str(w / model), "--data", str(w / "text.txt"), "--reference", str(w / "parent"),
                 *FAST, "--baseline", str(w / "parent.json"), *flags])  # fmt: skip


def test_the_report_holds_metrics_sizes_versions_and_the_data_fingerprint(work, capsys):
    report = json.loads((work / "parent.json").read_text())
    m = report["metrics"]
    assert m["kl"] == pytest.approx(0, abs=1e-6) and m["top1_agreement"] == 1.0
    assert m["loss"] > 0 and m["bits_per_byte"] > 0 and m["forward_tokens_per_s"] > 0
    assert m["params"] == report["cost"]["params"] and m["memory_bytes"] == report["cost"]["memory_bytes"]
    assert m["active_params"] < m["params"]  # top-2 of 4 routed experts
    assert set(report["versions"]) == {"nemocompress", "torch", "transformers"}
    assert len(report["data_fingerprint"]) == 16 and report["settings"]["seq_len"] == 64


def test_a_tight_tolerance_exits_3_naming_every_regressed_metric(work, capsys):
    assert _gate(work, "--max-regression", "0.0001") == 3
    out = capsys.readouterr().out
    regressed = out.split("regressed: ")[1].split("\n")[0].split(", ")
    assert {"kl", "top1_agreement"} <= set(regressed)
    assert "params" not in regressed  # sizes are reported (changed), not gated by default
    assert "changed" in out.split("params")[-1] or "changed" in out


def test_a_loose_tolerance_exits_0(work, capsys):
    assert _gate(work, "--max-regression", "1.0") == 0
    assert "no metric regressed" in capsys.readouterr().out


def test_per_metric_tolerances_override_and_gate_sizes(work, capsys):
    assert _gate(work, "--max-regression", "1.0", "--tolerance", "kl=0.0001") == 3
    assert capsys.readouterr().out.split("regressed: ")[1].startswith("kl\n")
    # the parent against its own report: nothing regressed, even with sizes gated at zero
    assert (
        _gate(
            work, "--max-regression", "0", "--tolerance", '{"params": 0, "memory_bytes": 0}', model="parent"
        )
        == 0
    )


def test_other_settings_are_refused_unless_forced(work, capsys):
    args = ["eval", str(work / "pruned"), "--data", str(work / "text.txt"), "--samples", "8", "--seq-len", "32",
            "--generation-tokens", "1", "--baseline", str(work / "parent.json")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and err.startswith("error: ")
        and "not comparable" in err
        and "seq_len 32 != baseline 64" in err
    )
    assert "--force" in err
    assert main([*args, "--force", "--max-regression", "100"]) == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w: ["eval", str(w / "nope"), "--data", str(w / "text.txt")], "nope is not a directory"),
        (lambda w: ["eval", str(w / "parent"), "--data", str(w / "missing.txt")], "missing.txt does not exist"),
        (lambda w: ["eval", str(w / "parent"), "--data", str(w / "text.txt"), "--baseline", str(w / "no.json")],
         "no.json does not exist"),
        (lambda w: ["eval", str(w / "parent"), "--data", str(w / "text.txt"), "--baseline", str(w / "text.txt")],
         "not a readable JSON report"),
        (lambda w: ["eval", str(w / "parent"), "--data", str(w / "text.txt"), "--tolerance", "speed=1"],
         "unknown metric 'speed'"),
        (lambda w: ["eval", str(w / "parent"), "--data", str(w / "text.txt"), "--seq-len", "1"], "--seq-len >= 2"),
        (lambda w: ["zoo", "gpt9", "-o", str(w / "z")], "no zoo model named 'gpt9'"),
        (lambda w: ["zoo", "llama", "-o", str(w / "parent")], "already exists"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(work, capsys, change, message):
    assert main(change(work)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and message in err


def test_a_reference_with_another_tokenizer_is_refused(work, tmp_path, capsys):
    assert main(["zoo", "llama", "-o", str(tmp_path / "other")]) == 0
    tokenizer = zoo_tokenizer()
    tokenizer.add_tokens(["<extra>"])  # same logit width (128), another token -> id map
    tokenizer.save_pretrained(tmp_path / "other")
    args = [
        "eval",
        str(work / "parent"),
        "--data",
        str(work / "text.txt"),
        "--reference",
        str(tmp_path / "other"),
    ]
    assert main([*args, *FAST]) == 2
    assert "different vocabularies" in capsys.readouterr().err


def test_direction_and_zero_baselines_of_the_gate():
    settings = {
        "samples": 1,
        "seq_len": 2,
        "heldout_fraction": 0.1,
        "seed": 0,
        "dtype": "f",
        "context_length": 1,
    }
    base = {
        "data_fingerprint": "x",
        "settings": settings,
        "metrics": {"loss": 2.0, "kl": 0.0, "top1_agreement": 0.5, "forward_tokens_per_s": 100.0},
    }
    new = {**base, "metrics": {"loss": 1.0, "kl": 0.05, "top1_agreement": 0.6, "forward_tokens_per_s": 10.0}}
    c = compare_reports(new, base, max_regression=0.02)
    assert c.regressed == ["kl"]  # loss down and top-1 up are better; throughput is not gated by default
    slow = compare_reports(new, base, 0.02, parse_tolerances(["forward_tokens_per_s=0.5", "kl=off"]))
    assert slow.regressed == ["forward_tokens_per_s"]
    with pytest.raises(GateError, match="fingerprint y != baseline x"):
        compare_reports({**new, "data_fingerprint": "y"}, base)


def _gate_script():
    spec = importlib.util.spec_from_file_location("eval_gate", ROOT / ".ci" / "eval_gate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ci_gate_passes_on_the_committed_baseline_and_fails_for_a_worse_model(tmp_path, capsys):
    gate = _gate_script()
    assert gate.run(tmp_path / "good") == 0
    assert "no metric regressed" in capsys.readouterr().out
    assert (
        gate.run(tmp_path / "worse", prune_flags=["--importance", "random"]) == 3
    )  # same sizes, worse units
    assert "regressed: kl" in capsys.readouterr().out
