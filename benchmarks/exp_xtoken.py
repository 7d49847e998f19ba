"""Cross-tokenizer distillation on real models: P-KL, H-KL, ULD, GOLD and CE-only from one start.

1. Teacher: SmolLM2-135M-Instruct. Student: the teacher pruned to about 2/3 (the sizes of
   exp_distill_recovery.py, weight-magnitude ranking by default) and transplanted onto GPT-2's tokenizer
   (``nemocompress xtoken transplant``: multi-digit number tokens, where SmolLM2 splits digits), so the
   two tokenizers differ.
2. Equal steps from that one start, same data order: ``--kd-loss pkl``, ``hkl``, ``uld``, ``gold`` (CE
   mixed in by dynamic scaling, X-Token's default) and CE only.
3. Held-out bits per byte (the one rule: per-token losses do not compare across tokenizers) on the
   training domain's held-out documents (Shakespeare) and on number-heavy text (lines of the Python
   standard library where digits are at least a quarter of the characters), the same bytes for every
   model.

Results go to ``WORKDIR/results.json`` and a Markdown table on stdout.

``--start DIR`` transplants a given smaller checkpoint of the teacher instead (e.g. the distilled student of
``benchmarks/exp_compress.py``), a start much nearer the teacher.

Usage (CPU; about 20 minutes on 2 idle cores at the defaults):
  python benchmarks/exp_xtoken.py --workdir /tmp/exp_xtoken
  python benchmarks/exp_xtoken.py --workdir /tmp/exp_xtoken --steps 10 --losses pkl,ce   # a quick check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from exp_distill_recovery import EXPORT
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemocompress import api
from nemocompress.assets import fetch_smollm2, fetch_text, fetch_tokenizer
from nemocompress.data import load_texts, split_texts
from nemocompress.distill import DistillConfig, distill
from nemocompress.evaluate import evaluate

LOSSES = ("pkl", "hkl", "uld", "gold", "ce")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/exp_xtoken")
    p.add_argument("--tokenizer", default="gpt2", help="the student's new tokenizer (nemocompress.assets)")
    p.add_argument("--importance", default="magnitude", choices=("magnitude", "random"))
    p.add_argument(
        "--start",
        default=None,
        help="a smaller checkpoint of the teacher (e.g. a compress run's model/) to transplant instead of pruning",
    )
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-bytes", type=int, default=24_000, help="bytes of each held-out text evaluated")
    return p.parse_args()


def number_heavy_text(limit: int) -> str:
    """Lines of the standard library sources where digits are at least 25% of the non-space characters."""
    lines = []
    for text in load_texts(fetch_text("python-stdlib")):
        for line in text.splitlines():
            body = line.strip()
            if len(body) >= 12 and sum(c.isdigit() for c in body) >= 0.25 * len(body.replace(" ", "")):
                lines.append(line)
        if sum(map(len, lines)) > limit:
            break
    return "\n".join(lines)[:limit]


def text_bpb(model_dir: Path, text: str, seq_len: int) -> float:
    """Bits per byte of a model on ``text`` in windows of ``seq_len`` of its own tokens."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer.encode(text, add_special_tokens=False)
    windows = torch.tensor(ids[: len(ids) // seq_len * seq_len]).view(-1, seq_len)
    return evaluate(model, windows, tokenizer, progress=False).bits_per_byte


def main() -> None:
    args = parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    teacher = fetch_smollm2()
    data = fetch_text("shakespeare")
    timings = {}

    started = time.perf_counter()
    start = args.start
    if start is None:
        options = api.ImportanceOptions(ranking=args.importance)
        api.prune(teacher, work / "pruned", EXPORT, options, overwrite=True, progress=False)
        start = work / "pruned"
    moved = api.xtoken_transplant(start, fetch_tokenizer(args.tokenizer), work / "student", overwrite=True)
    timings["prune_and_transplant_s"] = time.perf_counter() - started
    print(moved.table(), flush=True)

    common = dict(
        student=work / "student", data=data, steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size,
        lr=args.lr, min_lr=args.lr / 10, warmup_steps=max(1, args.steps // 10), eval_every=0, eval_samples=4,
        save_every=0, overwrite=True, progress=False,
    )  # fmt: skip
    runs = {}
    for loss in args.losses.split(","):
        if loss == "ce":
            config = DistillConfig(**common, output_dir=work / "ce", kd_weight=0.0, ce_weight=1.0)
        else:
            projection = work / "student" / api.TRANSPLANT_PROJECTION if loss in ("pkl", "hkl") else None
            config = DistillConfig(
                **common, teacher=teacher, kd_loss=loss, projection=projection, output_dir=work / loss
            )
        started = time.perf_counter()
        result = distill(config)
        steps = [r for r in result.records if "loss" in r]
        runs[loss] = {"seconds": time.perf_counter() - started, "first": steps[0], "last": steps[-1]}
        print(loss, json.dumps(runs[loss]), flush=True)

    heldout = "\n".join(split_texts(load_texts(data), 0.1, 0)[1])[: args.eval_bytes]
    texts = {"shakespeare held-out": heldout, "number-heavy": number_heavy_text(args.eval_bytes)}
    models = {"teacher (SmolLM2)": teacher, "start (pruned, transplanted)": work / "student"}
    models |= {name: work / name / "final" for name in runs}
    evals = {
        m: {t: text_bpb(path, text, args.seq_len) for t, text in texts.items()} for m, path in models.items()
    }
    results = {
        "args": vars(args),
        "export": None if args.start else EXPORT,
        "timings": timings,
        "runs": runs,
        "bpb": evals,
    }
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\n| model | {' | '.join(texts)} (bits/byte) |")
    print("|---|" + "---:|" * len(texts))
    for name, row in evals.items():
        print(f"| {name} | " + " | ".join(f"{row[t]:.3f}" for t in texts) + " |")


if __name__ == "__main__":
    main()
