"""Importance cost, measured in one run against plain forward passes over the same batches.

- width scores: one pass with the activation hooks vs a plain forward pass (target <= 1.15x), as
  `nemocompress importance` collects them (with the token moments FLAP needs) and without those moments;
- layer scores for every layer: time in full-forward equivalents (target <= 0.6 L, L = number of layers),
  with the default metrics (nmse, hidden_mse, cosine: no LM head per layer) and with all five (kl and lm_loss
  run the LM head once per layer).

    python benchmarks/bench_importance.py                       # a NemotronH-style hybrid (random weights)
    python benchmarks/bench_importance.py --experts 64          # the same with 64 routed experts, 6 active
    python benchmarks/bench_importance.py --model DIR           # any supported checkpoint
    python benchmarks/bench_importance.py --width-only          # the hooks only, no layer scoring
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from nemocompress.arch import get_adapter
from nemocompress.importance.activation import ActivationCollector
from nemocompress.importance.depth import LAYER_METRICS, default_layer_metrics, layer_stats
from nemocompress.report import format_table

HYBRID = dict(
    vocab_size=4096, hidden_size=192, head_dim=32, intermediate_size=512, num_attention_heads=6, num_key_value_heads=2,
    layers_block_type=["mamba", "mlp", "mamba", "attention", "mamba", "moe", "mamba", "mlp"],
    mamba_num_heads=8, mamba_head_dim=24, n_groups=2, ssm_state_size=16, chunk_size=64,
    n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128, moe_shared_expert_intermediate_size=256,
)  # fmt: skip


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each function, the functions run in turn ``repeats`` times (drift hits all alike)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, slot in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            slot.append(time.perf_counter() - start)
    return [min(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint directory (default: a random NemotronH hybrid)"
    )
    parser.add_argument(
        "--experts", type=int, default=8, help="routed experts of the default hybrid (6 active when above 8)"
    )
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width-only", action="store_true", help="time the width hooks only")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        routing = dict(n_routed_experts=args.experts, num_experts_per_tok=2 if args.experts <= 8 else 6)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("nemotron_h", **{**HYBRID, **routing}))
    model.eval()
    adapter = get_adapter(model.config)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (args.batch_size, args.seq_len)) for _ in range(args.batches)]

    @torch.no_grad()
    def plain():
        for b in batches:
            model(b, use_cache=False)

    def hooked():
        ActivationCollector(model, adapter).collect(batches)

    def hooked_without_moments():
        ActivationCollector(model, adapter, token_moments=False).collect(batches)

    def layers(metrics):
        return lambda: layer_stats(model, adapter, batches, metrics=metrics)

    plain()  # warm up
    t_plain, t_hooked, t_without = best_times([plain, hooked, hooked_without_moments], args.repeats)
    num_layers = adapter.num_layers(model.config)
    rows = [["plain forward", f"{t_plain:.2f}", "1.00x", ""]]
    for label, t in (("width scores (hooks)", t_hooked), ("width scores without token moments", t_without)):
        rows.append([label, f"{t:.2f}", f"{t / t_plain:.3f}x", "PASS" if t / t_plain <= 1.15 else "FAIL"])
    layer_parts = (
        () if args.width_only else (("default", default_layer_metrics()), ("all", tuple(LAYER_METRICS)))
    )
    for label, metrics in layer_parts:
        equivalents = best_times([layers(metrics)], 1)[0] / t_plain
        rows.append(
            [
                f"all {num_layers} layer scores, {label} metrics",
                f"{equivalents * t_plain:.2f}",
                f"{equivalents:.2f} forwards = {equivalents / num_layers:.2f} L",
                "PASS" if equivalents <= 0.6 * num_layers else "FAIL",
            ]
        )
    tokens = args.batches * args.batch_size * args.seq_len
    print(
        f"{model.config.model_type}, {num_layers} layers, {tokens} tokens, best of {args.repeats}, {torch.get_num_threads()} threads"
    )
    print(format_table(rows, ["", "seconds", "vs plain forward", "target"]))


if __name__ == "__main__":
    main()
