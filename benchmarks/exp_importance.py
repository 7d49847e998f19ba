"""Importance experiments on real weights and real held-out text (slow: minutes to tens of minutes).

    python benchmarks/exp_importance.py --part smollm2   # rankings compared on SmolLM2-135M
    python benchmarks/exp_importance.py --part hybrid    # Minitron-SSM ablations on the reference hybrid
    python benchmarks/exp_importance.py --part layers    # layer metrics compared by dropping k layers

Every number is a zero-shot held-out loss (nats/token, lower is better) after pruning, measured on the
held-out split of the corpus, which calibration never sees. Results go to stdout as markdown.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemocompress.arch import get_adapter
from nemocompress.assets import fetch_smollm2, fetch_text
from nemocompress.data import calibration_samples, pack_tokens
from nemocompress.errors import PlanError
from nemocompress.evaluate import heldout_loss
from nemocompress.importance.artifact import ImportanceArtifact
from nemocompress.importance.calibrate import calibrate
from nemocompress.importance.depth import LAYER_METRICS, finalize_layer_scores
from nemocompress.importance.scoring import activation_scores, flap_scores
from nemocompress.importance.weights import magnitude_scores, random_scores
from nemocompress.prune.minitron import plan_from_targets
from nemocompress.prune.slice import slice_model

CACHE = "/tmp/nemocompress-exp-cache"  # calibration statistics, reused across runs of this script


def setup(model_dir, corpus, samples, seq_len, eval_samples, block_sizes):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    calib, heldout_docs = calibration_samples(tokenizer, fetch_text(corpus), samples, seq_len)
    heldout = pack_tokens(tokenizer, heldout_docs, seq_len, num_samples=eval_samples, seed=1)
    adapter = get_adapter(model.config)
    cache = (
        Path(CACHE) / f"{Path(model_dir).name}-{corpus}-{samples}x{seq_len}-{'-'.join(map(str, block_sizes))}"
    )
    if cache.is_dir():
        artifact = ImportanceArtifact.load(cache)
    else:
        start = time.perf_counter()
        artifact = calibrate(
            model,
            adapter,
            calib,
            batch_size=4,
            block_sizes=block_sizes,
            layer_metrics=LAYER_METRICS,
            token_moments=True,
        )
        print(f"calibration: {len(calib)} x {seq_len} tokens, {time.perf_counter() - start:.0f} s")
        artifact.save(cache)
    return model, adapter, artifact, heldout


def loss_after(model, targets, scores, heldout, group_aware=True) -> float:
    plan = plan_from_targets(model.config, targets, scores, group_aware=group_aware)
    return heldout_loss(slice_model(model, plan), heldout, progress=False)


def table(rows, headers) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def rankings(model, adapter, artifact) -> dict:
    sites = adapter.score_sites(model.config)
    axes = [(a.name, a.size) for a in adapter.axes(model.config)]
    return {
        "activation": activation_scores(sites, artifact.stats),
        "magnitude": magnitude_scores(model, adapter),
        "FLAP": flap_scores(sites, artifact.stats),
        "random": random_scores(axes, seed=0),
    }


def part_smollm2(args) -> None:
    model, adapter, artifact, heldout = setup(
        fetch_smollm2(), "shakespeare", args.samples, args.seq_len, args.eval, ()
    )
    base = heldout_loss(model, heldout, progress=False)
    print(f"\nSmolLM2-135M-Instruct, Shakespeare held-out loss before pruning: {base:.3f}\n")
    targets = {
        "MLP 1536 -> 1024": {"ffn_hidden_size": 1024},
        "attention heads 9 -> 6": {"num_attention_heads": 6},
        "embedding channels 576 -> 504": {"hidden_size": 504},  # a multiple of the 9 heads
    }
    scores = rankings(model, adapter, artifact)
    print(table([], ["pruned axis", *scores]), flush=True)
    for name, t in targets.items():
        losses = [f"{loss_after(model, t, s, heldout):.3f}" for s in scores.values()]
        print("| " + " | ".join([name, *losses]) + " |", flush=True)


def _model_dir(name: str):
    if name == "smollm2":
        return fetch_smollm2()
    from nemocompress.reference import reference_hybrid

    return reference_hybrid()


def part_hybrid(args) -> None:
    model, adapter, artifact, heldout = setup(
        _model_dir("hybrid"), "shakespeare", args.samples, args.seq_len, args.eval, ()
    )
    sites = adapter.score_sites(model.config)
    base = heldout_loss(model, heldout, progress=False)
    print(f"\nreference hybrid, Shakespeare held-out loss before pruning: {base:.3f}\n")
    heads, head_dim = model.config.mamba_num_heads, model.config.mamba_head_dim
    x = activation_scores(sites, artifact.stats)
    rows = [
        [
            "group-aware heads (x)",
            f"{heads} -> {heads // 2}",
            f"{loss_after(model, {'mamba_num_heads': heads // 2}, x, heldout):.3f}",
        ],
        [
            "naive global heads (x)",
            f"{heads} -> {heads // 2}",
            f"{loss_after(model, {'mamba_num_heads': heads // 2}, x, heldout, group_aware=False):.3f}",
        ],
    ]
    print(table(rows, ["Mamba head ranking", "heads", "held-out loss"]) + "\n")
    cut = {
        "heads": {"mamba_num_heads": heads * 3 // 4},
        "head channels": {"mamba_head_dim": head_dim * 3 // 4},
    }
    rows = [[name, str(t), f"{loss_after(model, t, x, heldout):.3f}"] for name, t in cut.items()]
    print(table(rows, ["prune 25% of Mamba width as", "target", "held-out loss"]) + "\n")
    rows = []
    for source in ("x", "z", "out_proj"):
        s = activation_scores(sites, artifact.stats, choices={"mamba": source})
        rows.append([source, *(f"{loss_after(model, t, s, heldout):.3f}" for t in cut.values())])
    print(table(rows, ["Mamba scores from", "heads 75%", "head channels 75%"]))


def part_layers(args) -> None:
    drops = [int(k) for k in args.drop.split(",")]
    model, adapter, artifact, heldout = setup(
        _model_dir(args.model), "shakespeare", args.samples, args.seq_len, args.eval, (1, *drops)
    )
    base = heldout_loss(model, heldout, progress=False)
    print(f"\n{args.model}: {adapter.num_layers(model.config)} layers, held-out loss before: {base:.3f}\n")
    single = finalize_layer_scores(artifact.layers[1])
    num_layers = adapter.num_layers(model.config)
    print(table([], ["layers chosen by", *(f"drop {k}" for k in drops)]), flush=True)
    for metric, values in single.items():
        cells = [_drop(model, num_layers - k, values, heldout) for k in drops]
        print(f"| {metric} (k least important) | " + " | ".join(cells) + " |", flush=True)
    for metric in ("nmse", "kl", "lm_loss"):
        cells = []
        for k in drops:
            start = int(finalize_layer_scores(artifact.layers[k])[metric].argmin())
            ranking = torch.ones(num_layers)
            ranking[start : start + k] = 0
            cells.append(_drop(model, num_layers - k, ranking, heldout))
        print(f"| {metric} (contiguous block) | " + " | ".join(cells) + " |", flush=True)


def _drop(model, keep: int, ranking: torch.Tensor, heldout) -> str:
    """Held-out loss without the lowest-ranked layers, or why the plan was refused."""
    try:
        plan = plan_from_targets(model.config, {"num_layers": keep}, {"layers": ranking})
    except PlanError as e:
        return f"refused ({str(e).split(';')[0]})"
    dropped = sorted(set(range(len(ranking))) - set(plan.kept["layers"]))
    return f"{heldout_loss(slice_model(model, plan), heldout, progress=False):.3f} (drops {dropped})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", required=True, choices=("smollm2", "hybrid", "layers"))
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "hybrid"), help="for --part layers")
    parser.add_argument("--drop", default="2,4", help="for --part layers: numbers of layers to drop")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval", type=int, default=16, help="held-out samples")
    args = parser.parse_args()
    torch.manual_seed(0)
    {"smollm2": part_smollm2, "hybrid": part_hybrid, "layers": part_layers}[args.part](args)


if __name__ == "__main__":
    main()
