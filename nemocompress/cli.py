"""Command line: parses arguments and calls :mod:`nemocompress.api`, nothing more."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__, api
from .arch import SCORE_CHOICES
from .distill import DistillConfig, cache_teacher, distill
from .distill.losses import intermediate_loss_names, kd_loss_names
from .errors import NemocompressError
from .importance.activation import SEQ_AGGREGATIONS
from .importance.depth import LAYER_METRICS
from .importance.options import CALIBRATION_DTYPES, LAYER_SELECTIONS, ImportanceOptions
from .importance.rankings import RANKINGS
from .importance.scoring import BATCH_AGGREGATIONS, EXPERT_METRICS


def _info(args) -> None:
    print(api.info(args.model, args.context_length, args.batch_size, args.dtype).table())


def _options(args) -> ImportanceOptions:
    ranking = args.importance or (
        "activation" if (getattr(args, "scores", None) or args.data) else "magnitude"
    )
    return ImportanceOptions(
        ranking=ranking,
        seq_agg=args.seq_agg,
        batch_agg=args.batch_agg,
        sources={} if args.mamba_source is None else {"mamba": args.mamba_source},
        expert_metric=args.expert_metric,
        layer_metric=args.layer_metric,
        layer_selection=args.layer_selection,
        samples=args.samples,
        seq_len=args.seq_len,
        batch_size=args.calib_batch_size,
        seed=args.seed,
        dtype=args.calib_dtype,
        device=args.calib_device,
    )


def _prune(args) -> None:
    result = api.prune(
        args.model,
        args.output,
        args.export_config,
        _options(args),
        scores=args.scores,
        data=args.data,
        overwrite=args.overwrite,
        context_length=args.context_length,
        batch_size=args.batch_size,
    )
    print(result.table())
    print(f"\nwrote {result.output_dir}")


def _importance(args) -> None:
    result = api.importance(
        args.model,
        args.data,
        args.output,
        _options(args),
        tuple(args.block_size),
        args.overwrite,
        resume=args.resume,
        layers=not args.no_layers,
    )
    print(result.table())
    if result.plots:
        print(f"\nplots: {', '.join(str(p) for p in result.plots)}")
    print(f"wrote {args.output}")


def _demo(args) -> None:
    result = api.demo(
        args.output, args.export_config, args.importance or "activation", args.samples, args.seq_len
    )
    print(result.table())
    print(f"\npruned checkpoint: {result.prune.output_dir}")


def _eval(args) -> int:
    baseline = api.EvalResult.load(args.baseline) if args.baseline else None  # bad baseline: before any work
    tolerances = api.parse_tolerances(args.tolerance)
    result = api.eval_model(
        args.model,
        args.data,
        args.reference,
        samples=args.samples,
        seq_len=args.seq_len,
        heldout_fraction=args.heldout_fraction,
        seed=args.seed,
        batch_size=args.batch_size,
        context_length=args.context_length,
        dtype=args.dtype,
        device=args.device,
        generation_tokens=args.generation_tokens,
        baseline=None if args.force else baseline,
    )
    print(result.table())
    if args.output:
        print(f"\nwrote {result.save(args.output)}")
    if baseline is None:
        return 0
    comparison = api.compare_reports(
        result.report, baseline.report, args.max_regression, tolerances, force=args.force
    )
    print(f"\nagainst {args.baseline}:\n{comparison.table()}")
    return 3 if comparison.regressed else 0


def _zoo(args) -> None:
    path = api.zoo_checkpoint(args.name, args.output, args.seed, args.text, args.overwrite)
    print(f"wrote {path}" + (f" and {args.text}" if args.text else ""))


def _distill(args) -> None:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config") and v is not None}
    config = DistillConfig.from_yaml(args.config, **flags) if args.config else DistillConfig.from_dict(flags)
    result = distill(config)
    print(result.table())
    print(f"\nstudent: {result.final_dir}")


def _cache_teacher(args) -> None:
    result = cache_teacher(
        args.teacher,
        args.data,
        args.output,
        seq_len=args.seq_len,
        num_samples=args.samples,
        top_k=args.top_k,
        batch_size=args.batch_size,
        eval_samples=args.eval_samples,
        seed=args.seed,
        values_dtype=args.values_dtype,
        overwrite=args.overwrite,
    )
    print(result.table())
    print(f"\nwrote {result.output_dir}")


def _distill_flags(p) -> None:
    """Every flag defaults to None: unset flags leave the --config file (or DistillConfig) default."""
    p.add_argument("--config", default=None, help="YAML file with the same keys; flags override it")
    p.add_argument("--teacher", default=None, help="teacher checkpoint directory")
    p.add_argument("--student", default=None, help="student checkpoint directory (e.g. a pruned teacher)")
    p.add_argument("--data", default=None, help="text file, folder or .jsonl (train split trained on)")
    p.add_argument("-o", "--output", default=None, help="output directory (checkpoints, metrics, final/)")
    p.add_argument("--teacher-cache", default=None, help="top-k logits from `nemocompress cache-teacher`")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per micro-batch and process (4)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-4)")
    p.add_argument("--min-lr", type=float, default=None, help="end of the cosine decay (default 1e-5)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup (default 5%% of steps)")
    p.add_argument("--kd-loss", default=None, choices=kd_loss_names(), help="logit divergence (default kl)")
    p.add_argument("--kd-weight", type=float, default=None, help="weight of the KD term (default 1)")
    p.add_argument("--top-k", type=int, default=None, help="teacher logits kept by topk-kl (default 64)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature (default 1)")
    p.add_argument("--ce-weight", type=float, default=None, help="weight of next-token CE (default 0)")
    p.add_argument(
        "--intermediate", default=None, choices=intermediate_loss_names(), help="hidden-state loss"
    )
    p.add_argument(
        "--no-fused-head", dest="fused_head", action="store_false", default=None,
        help="compute full logits instead of fusing the LM heads into the chunked loss",
    )  # fmt: skip
    p.add_argument("--eval-every", type=int, default=None, help="held-out evaluation period (default 100)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint period (default 100)")
    p.add_argument("--seed", type=int, default=None, help="data split and order (default 0)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the latest checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None, help="delete OUT and start over")


def _ranking_flags(p, data_required: bool = False) -> None:
    """Calibration and ranking flags (``prune`` keeps ``--batch-size`` for its memory estimate)."""
    p.add_argument(
        "--data", required=data_required, help="calibration text: file, folder or .jsonl (train split used)"
    )
    p.add_argument("--samples", type=int, default=32, help="calibration samples (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample (default 256)")

    def flags(name):  # `importance` has no memory estimate, so it also takes the short names
        return (f"--{name}", f"--calib-{name}") if data_required else (f"--calib-{name}",)

    p.add_argument(
        *flags("batch-size"),
        dest="calib_batch_size",
        type=int,
        default=4,
        help="samples per forward (default 4)",
    )
    p.add_argument(
        *flags("dtype"),
        dest="calib_dtype",
        default="float32",
        choices=CALIBRATION_DTYPES,
        help="the model's dtype while calibrating (default float32)",
    )
    p.add_argument(
        *flags("device"),
        dest="calib_device",
        default=None,
        help="device to calibrate on, e.g. cuda:0 (default: this process's GPU if any, else cpu)",
    )
    p.add_argument(
        "--seq-agg", default="mean", choices=SEQ_AGGREGATIONS, help="over the sequence (default mean)"
    )
    p.add_argument("--batch-agg", default="l2", choices=BATCH_AGGREGATIONS, help="over samples (default l2)")
    p.add_argument(
        "--mamba-source",
        default=None,
        choices=SCORE_CHOICES["mamba"],
        help=f"Mamba activation to score (default {SCORE_CHOICES['mamba'][0]})",
    )
    p.add_argument(
        "--expert-metric", default="reap", choices=EXPERT_METRICS, help="MoE expert score (default reap)"
    )
    p.add_argument(
        "--layer-metric",
        default="nmse",
        type=lambda name: name.replace("-", "_"),
        choices=list(LAYER_METRICS),
        metavar="{" + ",".join(m.replace("_", "-") for m in LAYER_METRICS) + "}",
        help="layer importance (default nmse; kl and lm-loss run the LM head once per layer)",
    )
    p.add_argument(
        "--layer-selection",
        default="individual",
        choices=LAYER_SELECTIONS,
        help="which layers num_layers drops",
    )
    p.add_argument("--seed", type=int, default=0, help="data shuffling and --importance random")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemocompress", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nemocompress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def costs(p):
        p.add_argument(
            "--context-length", type=int, default=4096, help="tokens per sequence for memory (default 4096)"
        )
        p.add_argument("--batch-size", type=int, default=1, help="sequences for memory (default 1)")

    p = sub.add_parser("info", help="axes, params, active params and memory of a checkpoint")
    p.add_argument("model", help="checkpoint directory (config.json + safetensors)")
    costs(p)
    p.add_argument("--dtype", default="bfloat16", help="dtype for memory (default bfloat16)")
    p.set_defaults(func=_info)

    p = sub.add_parser("importance", help="activation importance of every unit and layer, saved for reuse")
    p.add_argument("model", help="checkpoint directory (config.json + safetensors)")
    p.add_argument("-o", "--output", required=True, help="scores directory (written atomically)")
    p.add_argument("--importance", default=None, choices=list(RANKINGS), help="ranking shown in the summary")
    p.add_argument(
        "--block-size", type=int, nargs="+", default=[1], help="layer windows to score (default 1)"
    )
    p.add_argument(
        "--no-layers",
        action="store_true",
        help="skip layer scoring (most of the run's time) for width-only pruning",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing scores directory")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted calibration into the same -o"
    )
    _ranking_flags(p, data_required=True)
    p.set_defaults(func=_importance)

    p = sub.add_parser("prune", help="Minitron one-shot prune to explicit sizes")
    p.add_argument("model", help="checkpoint directory (config.json + safetensors)")
    p.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--export-config", required=True, help="JSON sizes, e.g. '{\"hidden_size\": 96}', or a .json file"
    )
    p.add_argument(
        "--importance",
        default=None,
        choices=list(RANKINGS),
        help="unit ranking (default: activation with --scores/--data, else magnitude)",
    )
    p.add_argument("--scores", default=None, help="scores directory from `nemocompress importance`")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    _ranking_flags(p)
    costs(p)
    p.set_defaults(func=_prune)

    p = sub.add_parser("demo", help="fetch SmolLM2-135M and Shakespeare, prune, compare before/after")
    p.add_argument(
        "-o", "--output", default=None, help="where to write the pruned model (default: in the cache)"
    )
    p.add_argument("--export-config", default=None, help=f"sizes (default {json.dumps(api.DEMO_EXPORT)})")
    p.add_argument("--importance", default=None, choices=RANKINGS, help="unit ranking (default activation)")
    p.add_argument("--samples", type=int, default=16, help="held-out samples to score (default 16)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample (default 256)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("eval", help="held-out loss, bits per byte, KL and top-1 to a reference, throughput")
    p.add_argument("model", help="checkpoint directory (config.json + safetensors + tokenizer)")
    p.add_argument("--data", required=True, help="text file, folder or .jsonl (its held-out split is scored)")
    p.add_argument("--reference", default=None, help="e.g. the unpruned parent (same tokenizer): KL, top-1")
    p.add_argument("--samples", type=int, default=16, help="held-out samples, at most (default 16)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample (default 256)")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="share held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="data split and packing (default 0)")
    p.add_argument("--batch-size", type=int, default=4, help="samples per forward (default 4)")
    p.add_argument("--context-length", type=int, default=4096, help="tokens for memory (default 4096)")
    p.add_argument("--dtype", default="float32", help="the model's dtype while evaluating (default float32)")
    p.add_argument("--device", default=None, help="e.g. cuda:0 (default: cuda if available, else cpu)")
    p.add_argument(
        "--generation-tokens", type=int, default=32, help="greedy tokens timed with the cache (default 32)"
    )
    p.add_argument("-o", "--output", default=None, help="write the JSON report here")
    p.add_argument("--baseline", default=None, help="a report to gate on: exit 3 if a metric regressed")
    p.add_argument(
        "--max-regression", type=float, default=0.02, help="relative tolerance of loss, bpb, kl, top-1 (0.02)"
    )
    p.add_argument(
        "--tolerance",
        action="append",
        default=None,
        metavar="METRIC=VALUE",
        help="per-metric tolerance (repeatable; or a JSON object / .json file); gates throughput and sizes "
        "too, e.g. forward_tokens_per_s=0.5; 'off' stops gating a metric",
    )
    p.add_argument("--force", action="store_true", help="compare although data or settings differ")
    p.set_defaults(func=_eval)

    p = sub.add_parser("zoo", help="write a pinned tiny zoo model (and its text corpus) for tests and CI")
    p.add_argument("name", help="zoo model name (nemocompress.zoo.ZOO), e.g. nemotron_h-hybrid")
    p.add_argument("-o", "--output", required=True, help="checkpoint directory (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="weights and text seed (default 0)")
    p.add_argument("--text", default=None, help="also write the deterministic zoo text corpus to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_zoo)

    p = sub.add_parser("distill", help="knowledge distillation of a student from a teacher")
    _distill_flags(p)
    p.set_defaults(func=_distill)

    p = sub.add_parser("cache-teacher", help="run the teacher once and store its top-k logits")
    p.add_argument("--teacher", required=True, help="teacher checkpoint directory")
    p.add_argument("--data", required=True, help="text file, folder or .jsonl")
    p.add_argument("-o", "--output", required=True, help="cache directory (written atomically)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--samples", type=int, default=None, help="train sequences to cache (default all)")
    p.add_argument("--top-k", type=int, default=64, help="logits kept per token (default 64)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per teacher forward (default 4)")
    p.add_argument("--eval-samples", type=int, default=16, help="held-out sequences (default 16)")
    p.add_argument("--seed", type=int, default=0, help="data split and packing (default 0)")
    p.add_argument(
        "--values-dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="logit values"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    p.set_defaults(func=_cache_teacher)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except NemocompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
