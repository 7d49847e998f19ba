"""Cross-tokenizer distillation cost: a P-KL training step against a same-tokenizer KL step, and building W.

Step: what the trainer does per micro-batch (``nemocompress.distill.trainer._loss_terms`` and the
backward) on small random Llama-style models whose vocabularies are real tokenizers' (SmolLM2 49,152;
Qwen 151,851), on real text (the Python standard library, tokenized by SmolLM2's tokenizer):

- ``kl-fused``: same-tokenizer forward KL, the trainer's default path (LM heads fused into the loss);
- ``kl-logits``: the same on full logits (``--no-fused-head``);
- ``pkl-same``: P-KL with a teacher of the same tokenizer (W the identity): equal shapes to the KL sides,
  so the ratio is the cost of the cross-tokenizer machinery (teacher re-tokenization, alignment, the
  top-k column slice and the sparse product);
- ``pkl-qwen``: P-KL with the teacher on Qwen's tokenizer (its LM head is 3x wider).

Time is the process CPU time of the best of ``--repeats`` steps after one warm-up step (one thread by
default, so that a shared machine's load moves it less than wall time), in one process per side (sides
alternated over ``--rounds``); wall time is printed beside it. W build: time and peak RSS above the level once both tokenizers are
loaded, in a fresh process, for SmolLM2 -> Qwen and SmolLM2 -> GPT-2.

Usage:
  python benchmarks/bench_xtoken.py                         # batch 2 x 256 tokens
  python benchmarks/bench_xtoken.py --seq-len 64 --rounds 1 # a quick check
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
from bench_chunked_kd import MiB, current_rss
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from nemocompress.assets import fetch_smollm2, fetch_text, fetch_tokenizer
from nemocompress.data import load_texts
from nemocompress.distill import DistillConfig
from nemocompress.distill.trainer import _fused_head, _loss_terms, _Trainable
from nemocompress.xtoken import CrossTokenizerKD, build_projection

SIDES = ("kl-fused", "kl-logits", "pkl-same", "pkl-qwen")
TARGET = 1.5  # pkl-same / the faster of kl-fused and kl-logits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per step worker")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _tokenizers():
    return AutoTokenizer.from_pretrained(fetch_smollm2()), AutoTokenizer.from_pretrained(
        fetch_tokenizer("qwen")
    )


def _model(vocab: int, args, seed: int) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "llama", vocab_size=vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        max_position_embeddings=4 * args.seq_len,
    )  # fmt: skip
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _input_ids(tokenizer, args) -> torch.Tensor:
    text = "\n".join(load_texts(fetch_text("python-stdlib"))[:20])
    ids = tokenizer.encode(text, add_special_tokens=False)
    need = args.batch * args.seq_len
    return torch.tensor(ids[1000 : 1000 + need]).view(args.batch, args.seq_len)


def run_step_worker(args) -> dict:
    torch.set_num_threads(args.threads)
    student_tok, qwen_tok = _tokenizers()
    side = args.worker
    kd_loss = "kl" if side.startswith("kl") else "pkl"
    config = DistillConfig(teacher="t", student="s", data="d", output_dir="o", kd_loss=kd_loss,
                           fused_head=side == "kl-fused")  # fmt: skip
    teacher_tok = qwen_tok if side == "pkl-qwen" else student_tok
    student = _model(len(student_tok), args, 1).train()
    teacher = _model(len(teacher_tok), args, 2).eval().requires_grad_(False)
    cross = None
    if kd_loss == "pkl":
        cross = CrossTokenizerKD(
            "pkl", student_tok, teacher_tok, student_width=len(student_tok), teacher_width=len(teacher_tok)
        )
    fused = _fused_head(config, student, teacher, fsdp=False)[0] if side == "kl-fused" else None
    model = _Trainable(student, None, fused[0] if fused else None)
    input_ids = _input_ids(student_tok, args)
    num_items = args.batch * (args.seq_len - 1)
    times = []
    for i in range(args.repeats + 1):
        model.zero_grad(set_to_none=True)
        start, cpu = time.perf_counter(), time.process_time()
        terms = _loss_terms(model, teacher, input_ids, None, config, num_items, [], fused, cross)
        terms[0].backward()
        if i:  # the first step is the warm-up
            times.append((time.process_time() - cpu, time.perf_counter() - start))
    cpu, wall = min(times)
    return {"side": side, "cpu_seconds": cpu, "seconds": wall, "kd": float(terms[1])}


def run_build_worker(args) -> dict:
    student_tok = AutoTokenizer.from_pretrained(fetch_smollm2())
    name = args.worker.split(":")[1]
    teacher_tok = AutoTokenizer.from_pretrained(fetch_tokenizer(name))
    base = current_rss()
    start = time.perf_counter()
    projection = build_projection(student_tok, teacher_tok)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"teacher": name, "seconds": seconds, "peak_bytes": peak, "stats": projection.stats,
            "shape": list(projection.shape)}  # fmt: skip


def spawn(args, worker: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", worker]
    for key in ("batch", "seq_len", "hidden", "layers", "repeats", "threads"):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if proc.returncode != 0:
        raise SystemExit(f"{worker} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(
            json.dumps(run_build_worker(args) if args.worker.startswith("build:") else run_step_worker(args))
        )
        return
    load = os.getloadavg()[0]
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            result = spawn(args, side)
            best[side] = min(best.get(side, float("inf")), result["cpu_seconds"])
            print(f"round {r + 1} {side:<10} step {result['cpu_seconds']:.3f} s CPU ({result['seconds']:.3f} s wall)  "
                  f"kd {result['kd']:.4f}", flush=True)  # fmt: skip
    print(f"\nbatch {args.batch} x {args.seq_len} tokens, hidden {args.hidden}, {args.layers} layers, "
          f"threads {args.threads}, load average at start {load:.1f}; best process CPU time per step")  # fmt: skip
    for side in SIDES:
        print(f"{side:<10} best step {best[side]:.3f} s  ({best[side] / best['kl-fused']:.2f}x kl-fused, "
              f"{best[side] / best['kl-logits']:.2f}x kl-logits)")  # fmt: skip
    reference = min(best["kl-fused"], best["kl-logits"])  # the faster same-tokenizer step
    ratio = best["pkl-same"] / reference
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"P-KL / faster KL step at equal shapes: {ratio:.2f}x (target <= {TARGET}) {verdict}")
    print()
    for name in ("qwen", "gpt2"):
        r = spawn(args, f"build:{name}")
        s = r["stats"]
        print(f"W SmolLM2 -> {name} {r['shape'][0]:,} x {r['shape'][1]:,}: {r['seconds']:.1f} s, peak "
              f"{r['peak_bytes'] / MiB:.0f} MiB above the loaded tokenizers; exact {s['exact_share']:.1%}, "
              f"mean pieces {s['mean_pieces']:.2f}, coverage student {s['student_coverage']:.1%} "
              f"teacher {s['teacher_coverage']:.1%}, nnz {s['nnz']:,}")  # fmt: skip


if __name__ == "__main__":
    main()
