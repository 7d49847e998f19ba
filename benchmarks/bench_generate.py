"""Budget-controlled generation: tokens/s of each phase and the cost of the answer's re-prefill, against
generating everything at the large budget (one model, masks switched once; issue 12).

For an elastic RUN (a chat or plain tokenizer with ``<think>``/``</think>``) and held-out arithmetic prompts:
(a) think and answer at the largest budget (one phase after another on one cache: no re-prefill), and
(b) for every smaller budget, think at it and answer at the largest (the switch re-prefills the context).
Each side runs ``--repeats`` times, interleaved; the best (lowest latency) run of each is reported. Greedy.
Latency here is wall time on this machine (CPU unless a GPU is there), not a serving prediction.

  python benchmarks/bench_generate.py --run /tmp/exp_reasoning/run
"""

from __future__ import annotations

import argparse

from nemocompress import api
from nemocompress.elastic import load_state
from nemocompress.reasoning import arithmetic_problems


def measure(run, prompts, think, answer, args) -> dict:
    result = api.generate(run, prompts, think, answer, args.max_think_tokens, args.max_new_tokens)
    phases = [o.phases for o in result.outputs]
    think_tokens = sum(p[0].tokens for p in phases)
    answer_tokens = sum(p[1].tokens for p in phases)
    return {
        "latency_s": sum(ph.latency_s for p in phases for ph in p),
        "think_tok_s": think_tokens / sum(p[0].decode_s for p in phases),
        "answer_tok_s": answer_tokens / max(1e-9, sum(p[1].decode_s for p in phases)),
        "reprefill_ms": 1e3 * sum(p[1].prefill_s for p in phases) / len(phases),
        "reprefill_tokens": sum(p[1].prefill_tokens for p in phases) / len(phases),
        "think_tokens": think_tokens / len(phases),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="elastic RUN with a thinking tokenizer")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-think-tokens", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    labels = [b["label"] for b in sorted(load_state(args.run)["budgets"], key=lambda b: b["target"])]
    large = labels[-1]
    prompts = [q.prompt for q in arithmetic_problems(args.prompts, "heldout", seed=1)]
    sides = [(large, large)] + [(small, large) for small in labels[:-1]]
    best: dict = {}
    for _ in range(args.repeats):
        for side in sides:  # interleaved
            row = measure(args.run, prompts, *side, args)
            if side not in best or row["latency_s"] < best[side]["latency_s"]:
                best[side] = row
    base = best[(large, large)]["latency_s"]
    print(
        "| think | answer | latency (s, all prompts) | vs all-large | think tok/s | answer tok/s | re-prefill ms (tokens) |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for (think, answer), r in best.items():
        rows.append({"think": think, "answer": answer, **r, "ratio": r["latency_s"] / base})
        print(f"| {think} | {answer} | {r['latency_s']:.3f} | {r['latency_s'] / base:.2f}x | {r['think_tok_s']:.1f} | "
              f"{r['answer_tok_s']:.1f} | {r['reprefill_ms']:.1f} ({r['reprefill_tokens']:.0f}) |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
