"""Command line: parses arguments and calls :mod:`nemocompress.api`, nothing more."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__, api
from .errors import NemocompressError


def _info(args) -> None:
    print(api.info(args.model, args.context_length, args.batch_size, args.dtype).table())


def _prune(args) -> None:
    result = api.prune(
        args.model,
        args.output,
        args.export_config,
        importance=args.importance,
        seed=args.seed,
        overwrite=args.overwrite,
        context_length=args.context_length,
        batch_size=args.batch_size,
    )
    print(result.table())
    print(f"\nwrote {result.output_dir}")


def _demo(args) -> None:
    result = api.demo(args.output, args.export_config, args.importance, args.samples, args.seq_len)
    print(result.table())
    print(f"\npruned checkpoint: {result.prune.output_dir}")


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

    p = sub.add_parser("prune", help="Minitron one-shot prune to explicit sizes")
    p.add_argument("model", help="checkpoint directory (config.json + safetensors)")
    p.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--export-config", required=True, help="JSON sizes, e.g. '{\"hidden_size\": 96}', or a .json file"
    )
    p.add_argument("--importance", default="magnitude", choices=api.IMPORTANCE_CHOICES, help="unit ranking")
    p.add_argument("--seed", type=int, default=0, help="seed for --importance random")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    costs(p)
    p.set_defaults(func=_prune)

    p = sub.add_parser("demo", help="fetch SmolLM2-135M and Shakespeare, prune, compare before/after")
    p.add_argument(
        "-o", "--output", default=None, help="where to write the pruned model (default: in the cache)"
    )
    p.add_argument("--export-config", default=None, help=f"sizes (default {json.dumps(api.DEMO_EXPORT)})")
    p.add_argument("--importance", default="magnitude", choices=api.IMPORTANCE_CHOICES)
    p.add_argument("--samples", type=int, default=16, help="held-out samples to score (default 16)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample (default 256)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except NemocompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
