"""How much of the pruning gap does distillation recover? SmolLM2-135M pruned to ~2/3, then KD vs plain CE.

1. Fetch SmolLM2-135M-Instruct (the teacher) and prune it with Minitron one-shot pruning
   (hidden 576 -> 480, MLP 1536 -> 1024, query heads 9 -> 6; ~2/3 of the parameters), units ranked by
   activation importance on the train split of the training domain.
2. Train two copies of the pruned model for the same number of steps on the same tokens of one domain
   (default Shakespeare, prose): (a) KD, forward KL to the original (``kd_loss=kl``); (b) plain
   next-token CE fine-tuning (``kd_weight=0, ce_weight=1``). Same optimizer, schedule, batch and order.
3. Evaluate teacher, pruned, KD and CE models on held-out samples of the training domain and of a
   different one (default the Python standard library sources, code): loss (nats/token), KL to the
   teacher (nats/token), bits per byte; and how much of the pruned-vs-teacher gap each run closes.

Held-out documents are never trained on (document-level split, seed 0). Results go to
``WORKDIR/results.json`` and a Markdown table on stdout.

Usage (about 20 minutes on 2 idle CPU cores), then a timing check of both losses under equal load:
  python benchmarks/exp_distill_recovery.py --workdir /tmp/exp_distill
  python benchmarks/exp_distill_recovery.py --workdir /tmp/exp_distill --timing-only 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemocompress import api
from nemocompress.assets import fetch_smollm2, fetch_text
from nemocompress.data import build_samples
from nemocompress.distill import DistillConfig, distill
from nemocompress.evaluate import evaluate
from nemocompress.prune.cost import model_cost

EXPORT = {"hidden_size": 480, "ffn_hidden_size": 1024, "num_attention_heads": 6}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/exp_distill")
    p.add_argument("--train-domain", default="shakespeare")
    p.add_argument("--other-domain", default="python-stdlib")
    p.add_argument("--importance", default="activation", choices=("activation", "random", "magnitude"))
    p.add_argument("--calib-samples", type=int, default=16, help="activation calibration samples")
    p.add_argument("--calib-seq-len", type=int, default=128, help="tokens per calibration sample")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--eval-samples", type=int, default=16)
    p.add_argument(
        "--timing-only",
        type=int,
        default=0,
        metavar="N",
        help="only time steps: N rounds of 3 KD then 3 CE steps on WORKDIR/pruned (from a full run)",
    )
    return p.parse_args()


def step_timing(args, work: Path, teacher_dir: Path) -> None:
    """Seconds per step of KD and CE, interleaved so that both see the same machine load."""
    common = dict(
        teacher=teacher_dir, student=work / "pruned", data=fetch_text(args.train_domain), steps=3,
        seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, eval_every=0, eval_samples=1,
        save_every=0, overwrite=True, progress=False,
    )  # fmt: skip
    times = {"kd": [], "ce": []}
    for _ in range(args.timing_only):
        for name, kw in (("kd", {}), ("ce", {"kd_weight": 0.0, "ce_weight": 1.0})):
            result = distill(DistillConfig(**common, **kw, output_dir=work / f"timing_{name}"))
            times[name] += [r["step_s"] for r in result.records if "step_s" in r][1:]  # first step warms up
    tokens = args.batch_size * args.seq_len
    for name, t in times.items():
        t = sorted(t)
        median = t[len(t) // 2]
        print(f"{name}: median {median:.2f} s/step ({tokens / median:.0f} tokens/s) over {len(t)} steps: {t}")


def heldout_samples(tokenizer, corpus: str, seq_len: int, num: int) -> torch.Tensor:
    """``[num, seq_len]`` from the held-out documents of a corpus (the split the trainer never sees)."""
    return build_samples(tokenizer, fetch_text(corpus), seq_len, num_heldout=num).heldout


def evaluate_model(model, ids: torch.Tensor, teacher, tokenizer) -> dict:
    """Loss and KL(teacher || model) in nats per token, bits per byte and top-1 agreement over ``ids [N, S]``."""
    same = model is teacher  # KL of the teacher to itself: 0, agreement 1 (no second forward)
    report = evaluate(model, ids, tokenizer, reference=None if same else teacher, progress=False)
    return {
        "loss": report.loss,
        "kl": 0.0 if same else report.kl,
        "bpb": report.bits_per_byte,
        "top1": 1.0 if same else report.top1_agreement,
    }


def main() -> None:
    args = parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = fetch_smollm2()
    if args.timing_only:
        return step_timing(args, work, teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    timings = {}

    started = time.perf_counter()
    # a small calibration set: activation scores for widths need few tokens, and CPU time is short
    options = api.ImportanceOptions(
        ranking=args.importance, samples=args.calib_samples, seq_len=args.calib_seq_len
    )
    data = fetch_text(args.train_domain) if args.importance == "activation" else None
    pruned = api.prune(
        teacher_dir, work / "pruned", EXPORT, options, data=data, overwrite=True, progress=False
    )
    timings["prune_s"] = time.perf_counter() - started
    print(pruned.table(), flush=True)

    common = dict(
        teacher=teacher_dir, student=work / "pruned", data=fetch_text(args.train_domain), steps=args.steps,
        seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10,
        warmup_steps=max(1, args.steps // 10), eval_every=0, eval_samples=args.eval_samples, save_every=0,
        overwrite=True, progress=False,
    )  # fmt: skip
    runs = {
        "kd": DistillConfig(**common, output_dir=work / "kd", kd_loss="kl"),
        "ce": DistillConfig(**common, output_dir=work / "ce", kd_weight=0.0, ce_weight=1.0),
    }
    train_records = {}
    for name, config in runs.items():
        started = time.perf_counter()
        result = distill(config)
        timings[f"{name}_total_s"] = time.perf_counter() - started
        steps = [r for r in result.records if "tokens_per_s" in r]
        train_records[name] = {
            "tokens_per_step": args.batch_size * args.seq_len,
            "tokens": steps[-1]["tokens"],
            "step_s_mean": sum(r["step_s"] for r in steps) / len(steps),
            "tokens_per_s_mean": sum(r["tokens_per_s"] for r in steps) / len(steps),
            "first_loss": steps[0]["loss"],
            "last_loss": steps[-1]["loss"],
            "trainer_evals": result.evals,
        }
        print(name, json.dumps(train_records[name]), flush=True)

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    models = {
        "teacher": teacher_dir,
        "pruned": work / "pruned",
        "kd": work / "kd" / "final",
        "ce": work / "ce" / "final",
    }
    params = {
        k: model_cost(AutoModelForCausalLM.from_pretrained(v).config, 4096, 1, torch.bfloat16).params
        for k, v in (("teacher", teacher_dir), ("pruned", work / "pruned"))
    }
    evals = {}
    for domain in (args.train_domain, args.other_domain):
        ids = heldout_samples(tokenizer, domain, args.seq_len, args.eval_samples)
        for name, path in models.items():
            model = (
                teacher
                if name == "teacher"
                else AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            )
            evals[f"{domain}/{name}"] = evaluate_model(model, ids, teacher, tokenizer)
            print(domain, name, evals[f"{domain}/{name}"], flush=True)

    closed = {}
    for domain in (args.train_domain, args.other_domain):
        t, p = evals[f"{domain}/teacher"], evals[f"{domain}/pruned"]
        for name in ("kd", "ce"):
            a = evals[f"{domain}/{name}"]
            closed[f"{domain}/{name}"] = {
                "loss": (p["loss"] - a["loss"]) / (p["loss"] - t["loss"]),
                "kl": (p["kl"] - a["kl"]) / p["kl"],
            }
    results = {"args": vars(args), "export": EXPORT, "params": params, "timings": timings,
               "train": train_records, "evals": evals, "gap_closed": closed}  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=1))

    print(f"\nparams: teacher {params['teacher']:,}, pruned {params['pruned']:,}")
    print("| domain | model | loss | KL to teacher | bits/byte | loss gap closed | KL gap closed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for key, e in evals.items():
        c = closed.get(key)
        extra = f"{c['loss']:.0%} | {c['kl']:.0%}" if c else "- | -"
        domain, name = key.split("/")
        print(f"| {domain} | {name} | {e['loss']:.3f} | {e['kl']:.3f} | {e['bpb']:.3f} | {extra} |")


if __name__ == "__main__":
    main()
