"""GPU benchmarks run by benchmarks/gpu_check.sh, and its summary (JSON and Markdown).

- importance: calibration throughput (tokens/s) in bf16 for a SmolLM2-135M-sized Llama and a 1B-class
  NemotronH hybrid with random weights, built from configs: the width statistics alone (one forward per
  batch, with hooks) and with per-layer depth scores (one more forward per layer);
- distill: one run of a few steps of ``nemocompress.distill`` (bf16 autocast on GPU): tokens/s per step
  and peak memory, through the fused LM-head path and the logits path when DistillConfig has the
  ``fused_head`` switch, else the logits path only (said in the summary);
- kd_loss: the chunked and the fused (from hidden states) KD loss against a naive float32 one at
  vocabulary 131072 and 8192 tokens: forward + backward time and peak memory above the inputs.

    python benchmarks/gpu_bench.py --device cuda --out OUT               # the benchmarks, then the summary
    python benchmarks/gpu_bench.py --device cpu --toy --out OUT          # the same wiring at toy sizes
    python benchmarks/gpu_bench.py --summarize-only --out OUT            # the summary of what OUT holds

Results go to OUT/bench.json as each benchmark finishes (a benchmark killed by the caller's timeout leaves
the others); the summary adds OUT/environment.json and the ``pytest -m gpu`` results in OUT/pytest.xml
(JUnit XML) when present, and writes OUT/summary.json and OUT/summary.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import platform
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import torch.nn.functional as F

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
)  # fmt: skip
NEMOTRON_H_1B = dict(  # ~1.0B parameters: 7 Mamba-2, 7 MLP and 2 attention layers, 131k vocabulary
    vocab_size=131072, hidden_size=2048, intermediate_size=8192, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, layers_block_type=["mamba", "mlp"] * 3 + ["attention"] + ["mamba", "mlp"] * 4 + ["attention"],
    mamba_num_heads=64, mamba_head_dim=64, n_groups=8, ssm_state_size=128, chunk_size=128,
    tie_word_embeddings=False,
)  # fmt: skip
TOY_LLAMA = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)  # fmt: skip
TOY_NEMOTRON_H = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, layers_block_type=["mamba", "mlp", "attention"], mamba_num_heads=8, mamba_head_dim=16,
    n_groups=2, ssm_state_size=16, chunk_size=16,
)  # fmt: skip


def environment() -> dict:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpu": None, "gpu_memory_gib": None}  # fmt: skip
    for dist in ("transformers", "accelerate", "triton", "mamba-ssm", "causal-conv1d", "nemocompress"):
        env[dist] = version(dist)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"], env["gpu_memory_gib"] = props.name, round(props.total_memory / 2**30, 1)
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    _sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_gib(device: torch.device, before: int = 0) -> float | None:
    if device.type != "cuda":
        return None  # the CPU has no allocator statistics to read
    _sync(device)
    return round((torch.cuda.max_memory_allocated(device) - before) / 2**30, 3)


def _random_model(model_type: str, values: dict, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values), dtype=dtype)
    return model.eval()


# ---------------------------------------------------------------------------------------------- importance


def bench_importance(device: torch.device, toy: bool) -> list[dict]:
    from nemocompress.arch import get_adapter
    from nemocompress.importance.calibrate import calibrate

    cases = [
        ("SmolLM2-135M-sized llama", "llama", TOY_LLAMA if toy else SMOLLM2_135M, 32, 1024, 8),
        ("1B-class nemotron_h", "nemotron_h", TOY_NEMOTRON_H if toy else NEMOTRON_H_1B, 16, 1024, 4),
    ]
    rows = []
    for label, model_type, values, samples, seq_len, batch in cases:
        if toy:
            label, samples, seq_len, batch = f"{label} (toy size)", 4, 32, 2
        model = _random_model(model_type, values, device, torch.bfloat16)
        adapter = get_adapter(model.config)
        params = sum(p.numel() for p in model.parameters())
        ids = torch.randint(
            0, model.config.vocab_size, (samples, seq_len), generator=torch.Generator().manual_seed(0)
        )
        calibrate(model, adapter, ids[:batch], batch_size=batch, block_sizes=(), progress=False)  # warm-up
        for what, block_sizes, n in (("width", (), samples), ("width+depth", (1,), max(batch, samples // 4))):
            before = _reset_peak(device)
            start = time.perf_counter()
            calibrate(model, adapter, ids[:n], batch_size=batch, block_sizes=block_sizes, progress=False)
            _sync(device)
            seconds = time.perf_counter() - start
            rows.append({"model": label, "params_m": round(params / 1e6, 1), "scores": what, "tokens": n * seq_len,
                         "seq_len": seq_len, "batch_size": batch, "seconds": round(seconds, 3),
                         "tokens_per_s": round(n * seq_len / seconds, 1), "peak_gib": _peak_gib(device, before)})  # fmt: skip
            print(f"importance {label} {what}: {rows[-1]['tokens_per_s']} tokens/s", flush=True)
        del model
    return rows


# ------------------------------------------------------------------------------------------------- distill


def _distill_paths() -> list[tuple[str, dict]]:
    from nemocompress.distill import DistillConfig

    if "fused_head" in {f.name for f in dataclasses.fields(DistillConfig)}:
        return [("fused", {"fused_head": True}), ("logits", {"fused_head": False})]
    return [("logits (DistillConfig has no fused_head switch)", {})]


def bench_distill(device: torch.device, toy: bool) -> list[dict]:
    from nemocompress.distill import DistillConfig, distill
    from nemocompress.zoo import zoo_tokenizer

    teacher_values = dict(NEMOTRON_H_1B, layers_block_type=["mamba", "mlp", "attention", "mamba", "mlp", "mlp"],
                          hidden_size=1024, intermediate_size=4096, mamba_num_heads=32)  # fmt: skip
    student_values = dict(teacher_values, hidden_size=768, intermediate_size=3072, mamba_num_heads=24)
    if toy:
        teacher_values, student_values = TOY_NEMOTRON_H, dict(TOY_NEMOTRON_H, hidden_size=48)
    seq_len, batch, steps = (32, 2, 3) if toy else (1024, 4, 6)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, values in (("teacher", teacher_values), ("student", student_values)):
            _random_model("nemotron_h", values, torch.device("cpu"), torch.float32).save_pretrained(
                root / name
            )
            zoo_tokenizer().save_pretrained(root / name)
        import nemocompress

        text = "".join(p.read_text() for p in sorted(Path(nemocompress.__file__).parent.rglob("*.py")))
        (root / "data").mkdir()
        for i in range(8):
            (root / "data" / f"doc{i}.txt").write_text(text[i * len(text) // 8 : (i + 1) * len(text) // 8])
        for label, switch in _distill_paths():
            config = DistillConfig(
                teacher=str(root / "teacher"), student=str(root / "student"), data=str(root / "data"),
                output_dir=str(root / f"out-{len(rows)}"), steps=steps, seq_len=seq_len, batch_size=batch,
                eval_every=0, eval_samples=2, save_every=0, progress=False, **switch,
            )  # fmt: skip
            before = _reset_peak(device)
            records = [r for r in distill(config).records if "tokens_per_s" in r]
            rates = [r["tokens_per_s"] for r in records[1:]] or [
                records[0]["tokens_per_s"]
            ]  # first step warms up
            rows.append({"path": label, "vocab": teacher_values["vocab_size"], "seq_len": seq_len, "batch_size": batch,
                         "steps": steps, "tokens_per_s": round(statistics.median(rates), 1),
                         "peak_gib": _peak_gib(device, before), "final_kd": records[-1]["kd"]})  # fmt: skip
            print(
                f"distill {label}: {rows[-1]['tokens_per_s']} tokens/s, peak {rows[-1]['peak_gib']} GiB",
                flush=True,
            )
    return rows


# ------------------------------------------------------------------------------------------------- KD loss


def naive_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def bench_kd_loss(device: torch.device, toy: bool) -> list[dict]:
    from nemocompress.distill.losses import chunked_kd_loss, chunked_kd_loss_from_hidden

    vocab, tokens, width = (1024, 256, 64) if toy else (131072, 8192, 2048)
    g = torch.Generator(device).manual_seed(0)
    hidden = [torch.randn(tokens, width, generator=g, device=device).bfloat16() for _ in range(2)]
    heads = [
        (torch.randn(vocab, width, generator=g, device=device) * width**-0.5).bfloat16() for _ in range(2)
    ]
    hidden[0].requires_grad_()
    heads[0].requires_grad_()
    with torch.no_grad():
        teacher_logits = F.linear(hidden[1], heads[1])
    student_logits = F.linear(hidden[0], heads[0]).detach().requires_grad_()
    cases = {
        "naive float32 (logits given)": lambda: naive_forward_kl(student_logits, teacher_logits),
        "chunked_kd_loss (logits given)": lambda: chunked_kd_loss(student_logits, teacher_logits),
        "naive float32 (from hidden)": lambda: naive_forward_kl(
            F.linear(hidden[0], heads[0]), F.linear(hidden[1], heads[1])
        ),
        "chunked_kd_loss_from_hidden (fused)": lambda: chunked_kd_loss_from_hidden(
            hidden[0], heads[0], hidden[1], heads[1]
        ),
    }
    rows = []
    for label, loss_fn in cases.items():
        times, value = [], None
        for _ in range(3):
            for t in (student_logits, hidden[0], heads[0]):
                t.grad = None
            before = _reset_peak(device)
            start = time.perf_counter()
            loss = loss_fn()
            loss.backward()
            _sync(device)
            times.append(time.perf_counter() - start)
            value = loss.item()
        rows.append({"loss": label, "vocab": vocab, "tokens": tokens, "value": value,
                     "ms": round(1000 * min(times), 2), "peak_extra_gib": _peak_gib(device, before)})  # fmt: skip
        print(
            f"kd_loss {label}: {rows[-1]['ms']} ms, peak extra {rows[-1]['peak_extra_gib']} GiB", flush=True
        )
    return rows


BENCHMARKS = {"importance": bench_importance, "distill": bench_distill, "kd_loss": bench_kd_loss}


# ------------------------------------------------------------------------------------------------- summary


def pytest_results(path: Path) -> dict | None:
    """Per-test outcome, seconds and skip/failure message from a JUnit XML file (None if there is none)."""
    if not path.is_file():
        return None
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "").splitlines()[0][:200] if child.get("message") else ""
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        tests.append({"test": name, "outcome": outcome, "seconds": round(float(case.get("time", 0)), 2),
                      "message": message})  # fmt: skip
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(none)"]
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + " |" for r in rows]
    return lines


def write_summary(out: Path) -> dict:
    env_file, bench_file = out / "environment.json", out / "bench.json"
    summary = {
        "environment": json.loads(env_file.read_text()) if env_file.is_file() else environment(),
        "pytest": pytest_results(out / "pytest.xml"),
        "benchmarks": json.loads(bench_file.read_text()) if bench_file.is_file() else {},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    env = summary["environment"]
    md = [f"# GPU check: {env.get('gpu') or 'no GPU (' + str(env.get('device', 'cpu')) + ')'}", ""]
    md += _table([{"package": k, "version": v} for k, v in env.items()]) + [""]
    if summary["pytest"] is not None:
        counts = summary["pytest"]["counts"]
        md += ["## pytest -m gpu", "", ", ".join(f"{v} {k}" for k, v in counts.items()), ""]
        md += _table(summary["pytest"]["tests"]) + [""]
    for name in BENCHMARKS:
        result = summary["benchmarks"].get(name)
        md += [f"## {name}", ""]
        if result is None:
            md += ["not run (or killed by the time limit)", ""]
        elif "error" in result:
            md += [f"failed: {result['error']}", ""]
        else:
            md += _table(result["rows"]) + [""]
    (out / "summary.md").write_text("\n".join(md))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--toy", action="store_true", help="toy sizes (wiring checks, e.g. on the CPU)")
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--summarize-only", action="store_true", help="write the summary of OUT and stop")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            sys.exit(
                "gpu_bench: --device cuda but torch sees no CUDA device; pass --device cpu --toy to rehearse"
            )
        (args.out / "environment.json").write_text(
            json.dumps({**environment(), "device": str(device)}, indent=2)
        )
        results = {}
        for name in args.only or BENCHMARKS:
            start = time.perf_counter()
            try:
                results[name] = {"rows": BENCHMARKS[name](device, args.toy)}
            except Exception as e:  # one benchmark failing leaves the others' results
                results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
                print(f"{name} failed: {results[name]['error']}", flush=True)
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            (args.out / "bench.json").write_text(json.dumps(results, indent=2))
    write_summary(args.out)
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
