"""Zero-shot scoring cost per search candidate, in forward passes of the validation set (target <= 1.2),
and the enumeration time of a 12B-class search space, in one run.

``--score kl`` compares each candidate with the parent's predictions, which ``make_scorer`` computes once
(one parent forward over the validation set) and caches; each candidate is then the parent masked to it
(``score_masked``), one forward. Measured in one run on a NemotronH-style hybrid with random weights:

- counted: forward calls of the parent during ``make_scorer`` + scoring ``--candidates`` masked candidates,
  divided by (batches per pass x candidates); the naive way (``evaluate(candidate, reference=parent)``)
  costs 2 per candidate;
- timed: scoring one masked candidate (forward, masks, KL and top-1 arithmetic) over one plain forward pass
  of the parent over the same validation set, and the cached reference's build, the three run in turn, best
  of ``--repeats``; amortized: a candidate plus the reference's build time spread over the candidates.

The arithmetic over the vocabulary (loss, KL, top-1) grows with tokens x vocab, a forward with tokens x
parameters: on this 192-wide model with a 4096 vocabulary it is a visible share of a forward, on real
models (hidden 2048+, vocab 32k+) a small one.

Enumeration: the default space (ModelOpt's defaults: --max-width-pruning 0.4, --max-depth-pruning 0.2) of
the published Nemotron Nano 12B v2 Base config under the Nano 2 budget (22.06 GiB - 5% - 1.3 GiB at 128k
tokens, bf16, batch 1), every candidate costed from its config (no model built); best of 3.

    python benchmarks/bench_search_scoring.py
    python benchmarks/bench_search_scoring.py --candidates 20 --samples 16 --seq-len 512
    python benchmarks/bench_search_scoring.py --hidden 768 --vocab 32768    # a wider model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_importance import best_times
from transformers import AutoConfig, AutoModelForCausalLM

from nemocompress.arch import get_adapter
from nemocompress.importance.weights import random_scores
from nemocompress.prune.budget import Budget
from nemocompress.prune.minitron import plan_from_targets
from nemocompress.prune.score import make_scorer, score_masked
from nemocompress.prune.search import SearchOptions, prepare_search
from nemocompress.reference import REFERENCE_MODEL
from nemocompress.report import format_table

TARGET = 1.2
NANO_12B = Path(__file__).parents[1] / "tests" / "prune" / "data" / "nemotron_nano_12b_v2_base.json"


def enumeration_seconds(repeats: int = 3) -> tuple[float, object]:
    """Best-of-``repeats`` seconds to build and enumerate the Nano 12B space under the Nano 2 budget."""
    fields = {k: v for k, v in json.loads(NANO_12B.read_text()).items() if not k.startswith("_")}
    config = AutoConfig.for_model(
        fields.pop("model_type"), **{k: v for k, v in fields.items() if k != "architectures"}
    )
    budget = Budget(memory_gib=22.06, reserve_fraction=0.05, reserve_gib=1.3, context_length=131072)
    best, prepared = float("inf"), None
    for _ in range(repeats):
        began = time.perf_counter()
        prepared = prepare_search(config, budget, SearchOptions())
        best = min(best, time.perf_counter() - began)
    return best, prepared


def candidate_plans(config, count: int, seed: int) -> list:
    """``count`` plans between about 50% and 90% of every width and of the layers, random unit choices."""
    adapter = get_adapter(config)
    scores = random_scores([(a.name, a.size) for a in adapter.axes(config)], seed=seed)
    sizes = {
        "hidden_size": config.hidden_size,
        "ffn_hidden_size": config.intermediate_size,
        "mamba_num_heads": config.mamba_num_heads,
        "moe_ffn_hidden_size": config.moe_intermediate_size,
    }
    plans = []
    for i in range(count):
        share = 0.5 + 0.4 * i / max(count - 1, 1)
        targets = {k: max(8, int(v * share) // 8 * 8) for k, v in sizes.items()}
        plans.append(plan_from_targets(config, targets, scores))
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--samples", type=int, default=16, help="validation samples")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=REFERENCE_MODEL["hidden_size"], help="hidden size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "nemotron_h", **{**REFERENCE_MODEL, "vocab_size": args.vocab, "hidden_size": args.hidden}
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(args.device).eval()
    adapter = get_adapter(config)
    heldout = torch.randint(0, args.vocab, (args.samples, args.seq_len))
    plans = candidate_plans(config, args.candidates, seed=0)
    batches_per_pass = -(-args.samples // args.batch_size)

    @torch.no_grad()
    def plain():
        for start in range(0, args.samples, args.batch_size):
            model(heldout[start : start + args.batch_size].to(args.device), use_cache=False)

    plain()  # warm up
    calls = []
    counter = model.register_forward_hook(lambda *_: calls.append(1))
    scorer = make_scorer("kl", model, None, heldout, batch_size=args.batch_size)
    values = [score_masked(scorer, model, plan.kept_tensors(), adapter) for plan in plans]
    counter.remove()
    counted = len(calls) / batches_per_pass / len(plans)

    kept = plans[len(plans) // 2].kept_tensors()

    def masked():
        score_masked(scorer, model, kept, adapter)

    def reference():
        make_scorer("kl", model, None, heldout, batch_size=args.batch_size)

    t_plain, t_masked, t_reference = best_times([plain, masked, reference], args.repeats)
    per_candidate = t_masked / t_plain
    amortized = (t_masked + t_reference / len(plans)) / t_plain

    def verdict(x: float) -> str:
        return "PASS" if x <= TARGET else "FAIL"

    n = len(plans)
    rows = [
        ["plain forward over the validation set", f"{t_plain:.3f}", "1.00", ""],
        [f"counted: (1 reference + {n} candidates) / {n}", "", f"{counted:.2f}", verdict(counted)],
        [
            "timed: one masked candidate, kl",
            f"{t_masked:.3f}",
            f"{per_candidate:.2f}",
            verdict(per_candidate),
        ],
        [
            "timed: the cached reference (once per search)",
            f"{t_reference:.3f}",
            f"{t_reference / t_plain:.2f}",
            "",
        ],
        [f"timed: amortized over {n} candidates", "", f"{amortized:.2f}", verdict(amortized)],
        ["naive: evaluate(candidate, reference=parent)", "", "2.00 (counted)", ""],
    ]
    threads = torch.get_num_threads()
    print(
        f"nemotron_h {config.hidden_size} wide, {len(config.layers_block_type)} layers, vocab {args.vocab}; "
        f"{args.samples} x {args.seq_len} tokens, batch {args.batch_size}, {args.device}, {threads} "
        f"threads, best of {args.repeats}; kl of the {n} candidates {min(values):.3f}..{max(values):.3f}"
    )
    print(format_table(rows, ["", "seconds", "forward passes per candidate", f"target <= {TARGET}"]))
    seconds, prepared = enumeration_seconds()
    e = prepared.enumeration
    print(
        f"\nenumeration, Nemotron Nano 12B v2 Base under the Nano 2 budget (19.66 GiB at 128k, bf16): "
        f"{e.total:,} candidates costed, {e.fitting:,} fit, {seconds:.2f} s (best of 3) = "
        f"{e.total / seconds:,.0f} candidates/s; closest: {e.candidates[0].name}, "
        f"{e.candidates[0].memory_bytes / 2**30:.3f} GiB"
    )


if __name__ == "__main__":
    main()
