"""Peak memory and time of one distillation step: the trainer's LM-head-fused loss vs its logits path.

A step here is what the trainer does per micro-batch (``nemocompress.distill.trainer._loss_terms``
and the backward): the teacher forward (no grad), the student forward and backward, and the KD (+ CE)
loss, on small random Llama-style models with a large vocabulary. The optimizer update, the same on
both sides, is left out.

- fused: ``DistillConfig(fused_head=True)`` (the default): both trunks return their last hidden state
  and ``chunked_distill_loss_from_hidden`` runs both LM heads chunk by chunk, so neither model's
  ``[tokens, vocab]`` logits exist.
- logits: ``fused_head=False`` (``--no-fused-head``): both models make their full logits, then
  ``chunked_kd_loss`` (and ``cross_entropy_loss`` with ``--ce-weight``).

Each side runs in a fresh subprocess; the sides alternate over ``--rounds`` (fused, logits, logits,
fused, ...) so that a change in machine load hits both. Peak memory is the child's RSS high-water
mark (``ru_maxrss``) minus the mark once the models and inputs exist and a 16-token warm-up step has run (the method and helpers of
bench_chunked_kd.py; on CUDA ``torch.cuda.max_memory_allocated``); the largest over the rounds is
reported. Time is the best step over all rounds (``--repeats`` steps per child).

Usage:
  python benchmarks/bench_distill_step.py                       # vocab 131072, 1 x 4096 tokens
  python benchmarks/bench_distill_step.py --vocab 8192 --seq-len 512 --rounds 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from bench_chunked_kd import MiB, PeakMemory, current_rss, sync
from transformers import AutoConfig, AutoModelForCausalLM

from nemocompress.distill import DistillConfig
from nemocompress.distill.trainer import _fused_head, _loss_terms, _Trainable

SIDES = ("fused", "logits")
TARGETS = {"memory": 0.5, "time": 1.1}  # fused / logits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--student-hidden", type=int, default=64)
    parser.add_argument("--teacher-hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tied", action="store_true", help="tie the LM heads to the embeddings")
    parser.add_argument("--kd-loss", default="kl")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--ce-weight", type=float, default=0.0)
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="tokens per chunk; default 2**25 // vocab"
    )
    parser.add_argument("--repeats", type=int, default=2, help="steps per child process")
    parser.add_argument("--rounds", type=int, default=2, help="child processes per side, alternated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- worker side


def make_model(args: argparse.Namespace, hidden: int, seed: int) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "llama", vocab_size=args.vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=args.tied, max_position_embeddings=args.seq_len,
    )  # fmt: skip
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(args.device)


def run_worker(args: argparse.Namespace) -> dict:
    config = DistillConfig(
        teacher="t", student="s", data="d", output_dir="o", kd_loss=args.kd_loss, temperature=args.temperature,
        ce_weight=args.ce_weight, chunk_size=args.chunk_size, fused_head=args.worker == "fused",
    )  # fmt: skip
    student = make_model(args, args.student_hidden, seed=1).train()
    teacher = make_model(args, args.teacher_hidden, seed=2).eval().requires_grad_(False)
    fused, why_not = _fused_head(config, student, teacher, fsdp=False)
    if (fused is not None) != (args.worker == "fused"):
        raise SystemExit(f"the {args.worker} side did not get its path: {why_not}")
    model = _Trainable(student, None, fused[0] if fused else None)
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen).to(args.device)
    num_items = args.batch * (args.seq_len - 1)
    warm_up = _loss_terms(model, teacher, input_ids[:, :16], None, config, num_items, [], fused)
    warm_up[0].backward()  # library and kernel set-up, outside the measured peak
    del warm_up
    rss_at_base = None if args.device.startswith("cuda") else current_rss()
    peak = PeakMemory(args.device)
    runs, loss = [], None
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)  # as the trainer does after each optimizer step
        sync(args.device)
        start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        terms = _loss_terms(model, teacher, input_ids, None, config, num_items, [], fused)
        terms[0].backward()
        sync(args.device)
        after = resource.getrusage(resource.RUSAGE_SELF)
        runs.append(
            (time.perf_counter() - start, after.ru_utime - usage.ru_utime, after.ru_stime - usage.ru_stime)
        )
        loss = [float(t) for t in terms[:3]]
        del terms
    seconds, user, system = min(runs)
    result = {"side": args.worker, "peak_bytes": peak.peak_above_base(), "seconds": seconds,
              "user_seconds": user, "sys_seconds": system, "loss": loss}  # fmt: skip
    if rss_at_base is not None:
        result["baseline_slack_bytes"] = peak.base - rss_at_base
    return result


# --------------------------------------------------------------------------- driver side


def spawn(args: argparse.Namespace, side: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", side]
    for key, value in vars(args).items():
        if key in ("worker", "rounds") or value is None or value is False:
            continue
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise SystemExit(f"{side} worker failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_bytes": max(r["peak_bytes"] for r in runs),
            "slack": max(r.get("baseline_slack_bytes", 0) for r in runs)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(args.rounds):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            result = spawn(args, side)
            runs[side].append(result)
            print(f"round {i + 1} {side:<7} peak {result['peak_bytes'] / MiB:8.0f} MiB  best step "
                  f"{result['seconds']:6.2f} s", flush=True)  # fmt: skip
    tokens = args.batch * args.seq_len
    print(
        f"\nvocab={args.vocab} tokens={tokens} ({args.batch} x {args.seq_len}) student hidden={args.student_hidden} "
        f"teacher hidden={args.teacher_hidden} layers={args.layers} tied={args.tied} kd_loss={args.kd_loss} "
        f"T={args.temperature} ce_weight={args.ce_weight} device={args.device} threads={torch.get_num_threads()} "
        f"load average at start {load[0]:.1f}"
    )
    summary = {side: summarize(r) for side, r in runs.items()}
    print(f"{'side':<8}{'peak MiB':>10}{'step s':>9}{'user s':>8}{'sys s':>8}  loss, kd, ce")
    for side, s in summary.items():
        values = ", ".join(f"{v:.6f}" for v in s["loss"])
        print(f"{side:<8}{s['peak_bytes'] / MiB:>10.0f}{s['seconds']:>9.2f}{s['user_seconds']:>8.1f}"
              f"{s['sys_seconds']:>8.1f}  {values}")  # fmt: skip
        if s["slack"] > 64 * MiB:
            print(
                f"{'':<8}(baseline high-water was {s['slack'] / MiB:.0f} MiB above live RSS: peak may be understated)"
            )
    fused, logits = summary["fused"], summary["logits"]
    ratios = {
        "memory": fused["peak_bytes"] / logits["peak_bytes"],
        "time": fused["seconds"] / logits["seconds"],
    }
    for name, ratio in ratios.items():
        verdict = "PASS" if ratio <= TARGETS[name] else "FAIL"
        print(f"{name} fused / logits: {ratio:.3f} (target <= {TARGETS[name]}) {verdict}")


if __name__ == "__main__":
    main()
