"""Does a small submodel thinking and a large one answering beat fixed budgets? (Star Elastic, issue 12)

1. the parent gets ``<think>`` / ``</think>`` tokens (embeddings resized, new rows the mean of the others);
2. it is fine-tuned on seeded synthetic arithmetic with worked reasoning (``nemocompress.reasoning``, next-token
   CE, ``--finetune-steps``), so that it can do the task at all;
3. that task-tuned parent is elastic-trained on the same train problems (``--budgets``, KD from itself);
4. every (think, answer) budget pair answers ``--test-problems`` held-out problems (never trained on) with
   ``nemocompress generate`` (greedy): accuracy (the first number of the answer equals the result) and mean
   latency per problem (both phases, the answer's re-prefill included; one budget for both phases continues
   the think cache: that is the fixed budget alone).

Writes WORKDIR/results.json, WORKDIR/pareto.png (accuracy against latency, fixed budgets marked) and a Markdown
table on stdout. Usage (the settings of RESULTS.md):
  python benchmarks/exp_reasoning.py --parent hybrid --workdir /tmp/exp_reasoning
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from pathlib import Path

from nemocompress import api
from nemocompress.assets import fetch_smollm2
from nemocompress.distill import DistillConfig, distill
from nemocompress.distill.models import load_causal_lm, load_tokenizer
from nemocompress.reasoning import add_thinking_tokens, arithmetic_problems, write_problems
from nemocompress.reference import reference_hybrid


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--parent", default="hybrid", help="hybrid (the reference NemotronH), smollm2, or a checkpoint"
    )
    p.add_argument("--workdir", default="/tmp/exp_reasoning")
    p.add_argument("--train-problems", type=int, default=3000)
    p.add_argument("--test-problems", type=int, default=40)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--elastic-steps", type=int, default=200)
    p.add_argument("--budgets", default="0.5,0.75", help="elastic budgets (the full model is added)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak lr (elastic: a tenth of it)")
    p.add_argument("--max-think-tokens", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--max-width-pruning", type=float, default=0.6)
    p.add_argument("--max-depth-pruning", type=float, default=0.5)
    return p.parse_args(argv)


def prepare_parent(source: Path, out: Path) -> Path:
    """The parent with thinking tokens (a stock checkpoint)."""
    model, tokenizer = load_causal_lm(source), load_tokenizer(source)
    old = model.get_input_embeddings().weight.shape[0]
    if add_thinking_tokens(tokenizer) and len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        print(f"added <think>/</think>: vocab {old} -> {len(tokenizer)}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def first_number(text: str) -> str | None:
    m = re.search(r"-?\d+", text)
    return m.group(0) if m else None


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    source = {"hybrid": lambda: reference_hybrid(progress=False), "smollm2": fetch_smollm2}.get(
        args.parent, lambda: Path(args.parent)
    )()
    parent = prepare_parent(Path(source), work / "parent-think")
    tokenizer = load_tokenizer(parent)
    train = write_problems(tokenizer, arithmetic_problems(args.train_problems, "train"), work / "train.jsonl")
    test = arithmetic_problems(args.test_problems, "heldout")
    timings = {}

    t = time.perf_counter()
    tuned = distill(DistillConfig(
        student=str(parent), data=str(train), output_dir=str(work / "finetune"), steps=args.finetune_steps,
        seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, kd_weight=0.0, ce_weight=1.0,
        eval_every=0, save_every=0, overwrite=True, progress=False,
    )).final_dir  # fmt: skip
    timings["finetune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    run = work / "run"
    config = api.ElasticConfig(
        parent=tuned, budgets=args.budgets, data=train, output_dir=run, steps=args.elastic_steps,
        seq_len=args.seq_len, stage1_seq_len=args.seq_len // 2, batch_size=args.batch_size, lr=args.lr / 10,
        eval_every=0, save_every=0, overwrite=True, progress=False, max_width_pruning=args.max_width_pruning,
        max_depth_pruning=args.max_depth_pruning,
    )  # fmt: skip
    trained = api.elastic_train(config, api.ImportanceOptions(samples=8, seq_len=args.seq_len))
    print(trained.table())
    timings["elastic_s"] = time.perf_counter() - t

    labels = [b["label"] for b in trained.state["budgets"]]
    params = {b["label"]: b["params"] for b in trained.state["budgets"]}
    rows = []
    t = time.perf_counter()
    for think, answer in itertools.product(labels, labels):
        result = api.generate(
            run, [p.prompt for p in test], think, answer, args.max_think_tokens, args.max_new_tokens
        )
        correct = [first_number(o.answer) == p.answer for o, p in zip(result.outputs, test)]
        latency = [sum(ph.latency_s for ph in o.phases) for o in result.outputs]
        think_tokens = [o.phases[0].tokens for o in result.outputs]
        rows.append({
            "think": think, "answer": answer, "accuracy": sum(correct) / len(correct),
            "latency_s": sum(latency) / len(latency), "think_tokens": sum(think_tokens) / len(think_tokens),
            "reprefill_s": sum(o.phases[1].prefill_s for o in result.outputs) / len(result.outputs),
            "fixed": think == answer,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    timings["generate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - began
    results = {"args": vars(args), "params": params, "rows": rows, "timings": timings}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    plot(rows, params, work / "pareto.png")
    print(table(rows, params))
    print(verdict(rows))
    return results


def table(rows, params) -> str:
    lines = ["| think | answer | accuracy | latency (s/problem) | think tokens | answer re-prefill (ms) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: r["latency_s"]):
        tag = " (fixed)" if r["fixed"] else ""
        lines.append(
            f"| {r['think']} ({params[r['think']] / 1e6:.2f}M){tag} | {r['answer']} ({params[r['answer']] / 1e6:.2f}M) | "
            f"{r['accuracy']:.3f} | {r['latency_s']:.3f} | {r['think_tokens']:.1f} | {r['reprefill_s'] * 1e3:.1f} |"
        )
    return "\n".join(lines)


def verdict(rows) -> str:
    """Whether a mixed pair is on the Pareto front above the fixed budgets: more accurate than every fixed
    budget that is at least as fast."""
    fixed = [r for r in rows if r["fixed"]]
    wins = [r for r in rows if not r["fixed"]
            and all(r["accuracy"] > f["accuracy"] for f in fixed if f["latency_s"] <= r["latency_s"])]  # fmt: skip
    if not wins:
        return (
            "No mixed (think, answer) pair beats the fixed budgets at equal or lower latency on this scale."
        )
    best = max(wins, key=lambda r: r["accuracy"])
    return (f"think {best['think']} / answer {best['answer']}: accuracy {best['accuracy']:.3f} at "
            f"{best['latency_s']:.3f} s/problem beats every fixed budget at least as fast.")  # fmt: skip


def plot(rows, params, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(
            r["latency_s"],
            r["accuracy"],
            marker="s" if r["fixed"] else "o",
            color="C0" if r["fixed"] else "C1",
        )
        ax.annotate(f"{r['think']}/{r['answer']}", (r["latency_s"], r["accuracy"]), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: r["latency_s"]):
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    ax.plot(
        [r["latency_s"] for r in front],
        [r["accuracy"] for r in front],
        "--",
        color="gray",
        label="Pareto front",
    )
    ax.scatter([], [], marker="s", color="C0", label="fixed budget")
    ax.scatter([], [], marker="o", color="C1", label="think / answer budgets")
    ax.set_xlabel("latency per problem (s, greedy, CPU)")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
