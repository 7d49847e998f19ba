"""Peak memory and time of chunked vs naive logit distillation (forward + backward).

Each variant runs in a fresh subprocess. On CPU, peak memory is the process's RSS
high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) minus the mark after the inputs are
made (they are filled chunk by chunk so that making them leaves no higher spike). On CUDA it
is ``torch.cuda.max_memory_allocated`` minus the memory allocated after the inputs exist.
Time is the best of ``--repeats`` forward+backward runs.

Variants (forward KL by default; see --divergence):
  naive           kd_loss: full float32 log_softmax of both models over [tokens, V]
  chunked         chunked_kd_loss over token chunks (gradient kept in the logits' dtype)
  trl             TRL's GKDTrainer.generalized_jsd_loss (if trl imports; beta mapped from --divergence)
  naive_hidden    F.linear for both LM heads, then kd_loss    (only with --hidden > 0)
  chunked_hidden  chunked_kd_loss_from_hidden                 (only with --hidden > 0)

Usage:
  python benchmarks/bench_chunked_kd.py --vocab 131072 --tokens 4096 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from nemocompress.distill.losses import CHUNK_ELEMENTS, chunked_kd_loss, chunked_kd_loss_from_hidden, kd_loss

MiB = 2**20
TRL_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": 0.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument(
        "--hidden", type=int, default=0, help="hidden width for the *_hidden variants; 0 skips them"
    )
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--divergence", choices=["forward_kl", "reverse_kl", "jsd"], default="forward_kl")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="tokens per chunk; default 2**25 // vocab"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- worker side


def filled(shape: tuple[int, ...], dtype: torch.dtype, device: str, scale: float, seed: int) -> torch.Tensor:
    """Random tensor made row block by row block, so making it needs no float32 copy of it all."""
    out = torch.empty(shape, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    step = max(1, 2**22 // max(1, shape[-1]))
    for start in range(0, shape[0], step):
        block = torch.randn((min(step, shape[0] - start), *shape[1:]), generator=gen, device=device)
        out[start : start + block.shape[0]] = block * scale
    return out


def make_inputs(args: argparse.Namespace, variant: str) -> dict[str, torch.Tensor]:
    dtype = getattr(torch, args.dtype)
    n, v, d = args.tokens, args.vocab, args.hidden
    if variant.endswith("_hidden"):
        return {
            "student_hidden": filled((n, d), dtype, args.device, 1.0, 1).requires_grad_(),
            "student_weight": filled((v, d), dtype, args.device, d**-0.5, 2).requires_grad_(),
            "teacher_hidden": filled((n, d), dtype, args.device, 1.0, 3),
            "teacher_weight": filled((v, d), dtype, args.device, d**-0.5, 4),
        }
    return {
        "student_logits": filled((n, v), dtype, args.device, 2.0, 1).requires_grad_(),
        "teacher_logits": filled((n, v), dtype, args.device, 2.0, 2),
    }


def loss_fn(args: argparse.Namespace, variant: str):
    kw = {"beta": 0.5, "chunk_size": args.chunk_size}
    div = args.divergence
    if variant == "naive":
        return lambda x: kd_loss(x["student_logits"], x["teacher_logits"], div, beta=0.5)
    if variant == "chunked":
        return lambda x: chunked_kd_loss(x["student_logits"], x["teacher_logits"], div, **kw)
    if variant == "trl":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDTrainer

        labels = torch.zeros(1, args.tokens, dtype=torch.long, device=args.device)
        return lambda x: GKDTrainer.generalized_jsd_loss(
            x["student_logits"][None], x["teacher_logits"][None], labels=labels, beta=TRL_BETA[div]
        )
    if variant == "naive_hidden":
        return lambda x: kd_loss(
            F.linear(x["student_hidden"], x["student_weight"]),
            F.linear(x["teacher_hidden"], x["teacher_weight"]),
            div,
        )
    if variant == "chunked_hidden":
        return lambda x: chunked_kd_loss_from_hidden(
            x["student_hidden"], x["student_weight"], x["teacher_hidden"], x["teacher_weight"], div, **kw
        )
    raise ValueError(f"unknown variant {variant!r}")


class PeakMemory:
    """Peak bytes above the level at construction: CUDA allocator stats or the RSS high-water mark."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def peak_above_base(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_worker(args: argparse.Namespace) -> dict:
    fn = loss_fn(args, args.worker)  # imports (trl) before the baseline
    inputs = make_inputs(args, args.worker)
    params = [t for t in inputs.values() if t.requires_grad]
    rss_at_base = None if args.device.startswith("cuda") else current_rss()
    peak = PeakMemory(args.device)
    runs, value = [], None
    for _ in range(args.repeats):
        for p in params:
            p.grad = None
        sync(args.device)
        start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        loss = fn(inputs)
        loss.backward()
        sync(args.device)
        after = resource.getrusage(resource.RUSAGE_SELF)
        runs.append(
            (time.perf_counter() - start, after.ru_utime - usage.ru_utime, after.ru_stime - usage.ru_stime)
        )
        value = loss.item()
        del loss
    seconds, user, system = min(runs)
    result = {
        "variant": args.worker,
        "peak_bytes": peak.peak_above_base(),
        "seconds": seconds,
        "user_seconds": user,
        "sys_seconds": system,
        "loss": value,
    }
    if rss_at_base is not None:  # a high-water mark above the live RSS at baseline would hide peaks
        result["baseline_slack_bytes"] = peak.base - rss_at_base
    return result


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- driver side


def variants_to_run(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    wanted = (
        args.variants.split(",")
        if args.variants
        else ["naive", "chunked", "trl", "naive_hidden", "chunked_hidden"]
    )
    notes = []
    if args.hidden <= 0:
        wanted = [v for v in wanted if not v.endswith("_hidden")]
    if "trl" in wanted and importlib.util.find_spec("trl") is None:
        wanted.remove("trl")
        notes.append("trl: skipped (not installed)")
    return wanted, notes


def spawn(args: argparse.Namespace, variant: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", variant]
    for key in ("vocab", "tokens", "hidden", "dtype", "divergence", "repeats", "device"):
        argv += [f"--{key}", str(getattr(args, key))]
    if args.chunk_size is not None:
        argv += ["--chunk-size", str(args.chunk_size)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        return {
            "variant": variant,
            "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1],
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(args: argparse.Namespace, results: list[dict], notes: list[str]) -> None:
    chunk = args.chunk_size or max(1, CHUNK_ELEMENTS // args.vocab)
    print(
        f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} dtype={args.dtype} "
        f"divergence={args.divergence} chunk={chunk} device={args.device} threads={torch.get_num_threads()}"
    )
    base = {r["variant"]: r for r in results if "error" not in r}
    print(
        f"{'variant':<16}{'peak MiB':>10}{'time s':>9}{'user s':>8}{'sys s':>8}{'mem/naive':>11}{'time/naive':>12}  loss"
    )
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<16} failed: {r['error']}")
            continue
        ref = base.get("naive_hidden" if r["variant"].endswith("_hidden") else "naive")
        mem_ratio = f"{r['peak_bytes'] / ref['peak_bytes']:.3f}" if ref else "-"
        time_ratio = f"{r['seconds'] / ref['seconds']:.3f}" if ref else "-"
        print(
            f"{r['variant']:<16}{r['peak_bytes'] / MiB:>10.0f}{r['seconds']:>9.2f}{r['user_seconds']:>8.1f}"
            f"{r['sys_seconds']:>8.1f}{mem_ratio:>11}{time_ratio:>12}"
            f"  {r['loss']:.6f}"
        )
        slack = r.get("baseline_slack_bytes", 0)
        if slack > 64 * MiB:
            print(
                f"{'':<16}(baseline high-water was {slack / MiB:.0f} MiB above live RSS: peak may be understated)"
            )
    for note in notes:
        print(note)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    variants, notes = variants_to_run(args)
    results = [spawn(args, v) for v in variants]
    print_table(args, results, notes)


if __name__ == "__main__":
    main()
