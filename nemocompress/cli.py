"""Command line: parses arguments and calls :mod:`nemocompress.api`, nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import types
import typing
from collections.abc import Mapping

from . import __version__, api
from .arch import SCORE_CHOICES
from .errors import NemocompressError
from .importance.options import ImportanceOptions
from .importance.rankings import RANKINGS

# Flags built from a function's keyword defaults: parameter -> metadata, as on the option dataclasses' fields
# (``help``; where needed ``flags``, ``aliases``, ``dest``, ``choices``, ``dashed``, ``default_help``, ``repeat``
# and ``deprecated`` old spellings, which still work and warn).
_MEMORY = {
    "context_length": {"help": "tokens per sequence for the memory estimate"},
    "batch_size": {
        "help": "sequences for the memory estimate",
        "flags": ("--memory-batch-size",),
        "dest": "memory_batch_size",
        "deprecated": ("--batch-size",),
    },
}
_INFO = {**_MEMORY, "dtype": {"help": "dtype for the memory estimate"}}
_EVAL = {
    "samples": {"help": "held-out samples, at most"},
    "seq_len": {"help": "tokens per sample"},
    "heldout_fraction": {"help": "share of documents held out"},
    "seed": {"help": "data split and packing"},
    "batch_size": {"help": "samples per forward"},
    "context_length": {"help": "tokens per sequence for the memory estimate"},
    "dtype": {"help": "the model's dtype while evaluating"},
    "device": {"help": "e.g. cuda:0", "default_help": "cuda if available, else cpu"},
    "generation_tokens": {"help": "greedy tokens timed with the cache"},
}
_GATE = {"max_regression": {"help": "relative tolerance of loss, bpb, kl and top-1"}}
_CACHE_TEACHER = {
    "teacher": {"help": "teacher checkpoint directory", "flags": ("--teacher",)},
    "data": {"help": "text file, folder or .jsonl", "flags": ("--data",)},
    "output_dir": {"help": "cache directory (written atomically)", "flags": ("-o", "--output")},
    "student": {
        "help": "student checkpoint: tokens made with its tokenizer; another one than the teacher's caches the "
        "teacher's own tokens and top-k (for --kd-loss pkl, hkl, uld, gold)",
        "flags": ("--student",),
        "default_help": "the teacher's tokenizer",
    },
    "seq_len": {"help": "tokens per sequence"},
    "num_samples": {"help": "train sequences to cache", "flags": ("--samples",), "default_help": "all"},
    "top_k": {"help": "logits kept per token"},
    "batch_size": {"help": "sequences per teacher forward"},
    "eval_samples": {"help": "held-out sequences"},
    "heldout_fraction": {"help": "share of documents held out (as distill's)"},
    "seed": {"help": "data split and packing"},
    "values_dtype": {
        "help": "dtype of the stored logit values",
        "choices": ("float32", "bfloat16", "float16"),
    },
    "overwrite": {"help": "replace an existing cache"},
}
_DEMO = {
    "samples": {"help": "held-out samples to score"},
    "seq_len": {"help": "tokens per sample"},
    "target_params": {"help": "parameters of the compressed model"},
    "kd_steps": {"help": "distillation steps (0: prune only)"},
    "kd_lr": {"help": "peak distillation learning rate"},
    "resume": {"help": "continue an interrupted demo in -o"},
}
_ZOO = {
    "seed": {"help": "weights and text seed"},
    "text": {"help": "also write the deterministic zoo text corpus to this file"},
    "overwrite": {"help": "replace an existing output directory"},
}


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: sets the same value and prints a one-line deprecation warning."""

    def __init__(self, option_strings, dest, use: str, **kwargs):
        self.use = use
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated here, use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


class _Repeated(argparse.Action):
    """A flag that may be given several times: once, its value; repeated, the list of values in order."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        if before is self.default:  # the first time
            setattr(namespace, self.dest, values)
        else:
            setattr(namespace, self.dest, [*(before if isinstance(before, list) else [before]), values])


def _value_type(annotation, default):
    """bool, int, float or str: the default's type, else the annotation without its None."""
    if default is not None and default is not inspect.Parameter.empty:
        return type(default)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:  # a repeated flag: the type of one value
        annotation = typing.get_args(annotation)[0]
    return annotation if annotation in (bool, int, float) else str


def _add_flag(p, name: str, default, annotation, meta: Mapping, parse_default: bool = True) -> None:
    """One flag from a field's or parameter's metadata; its default (the one help shows) is ``default``.

    ``parse_default=False`` parses an unset flag as None (``distill``: the --config file, else the dataclass,
    then decides). A parameter without a default is a required flag. ``repeat`` metadata makes a flag that
    may be given several times (given once, its value; repeated, the list of values in order).
    """
    kind = _value_type(annotation, default)
    required = default is inspect.Parameter.empty
    dash = name.replace("_", "-")
    dest = meta.get("dest", name)
    kwargs = {"default": default if parse_default and not required else None, "required": required}
    text = meta["help"]
    if kind is bool:
        kwargs["action"] = "store_false" if default else "store_true"
        flags = meta.get("flags", (f"--no-{dash}",) if default else (f"--{dash}",))
    else:
        choices = meta.get("choices")
        choices = None if choices is None else list(choices() if callable(choices) else choices)
        kwargs |= {"type": None if kind is str else kind, "choices": choices}
        if meta.get("repeat"):
            kwargs["action"] = _Repeated
        if meta.get("dashed"):  # shown and typed with dashes, stored with underscores
            kwargs["type"] = lambda value: value.replace("-", "_")
            kwargs["metavar"] = "{" + ",".join(c.replace("_", "-") for c in choices) + "}"
        flags = meta.get("flags", (f"--{dash}",))
        shown = meta.get("default_help", default)
        if shown is not None and not required:
            text = f"{text} (default {shown})"
    flags = (*meta.get("aliases", ()), *flags)
    p.add_argument(*flags, dest=dest, help=text.replace("%", "%%"), **kwargs)
    for old in meta.get("deprecated", ()):
        p.add_argument(
            old, dest=dest, type=kwargs.get("type"), action=_DeprecatedAlias, use=flags[-1],
            default=argparse.SUPPRESS, help=argparse.SUPPRESS,
        )  # fmt: skip


def _cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of option dataclass ``cls`` that are command-line flags (those with ``help`` metadata)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _dataclass_flags(p, cls, parse_default: bool = True, aliases: Mapping[str, tuple] | None = None) -> None:
    """A flag for every command-line field of ``cls``; ``aliases``: field -> extra spellings, shown first."""
    hints = typing.get_type_hints(cls)
    for f in _cli_fields(cls):
        meta = {**f.metadata, "aliases": (aliases or {}).get(f.name, ())}
        _add_flag(p, f.name, f.default, hints[f.name], meta, parse_default)


def _dataclass_values(args, cls) -> dict:
    """The parsed values of ``cls``'s command-line fields, by field name."""
    return {f.name: getattr(args, f.name) for f in _cli_fields(cls)}


def _signature_flags(p, func, specs: Mapping[str, Mapping]) -> None:
    """A flag for every parameter of ``func`` named in ``specs``, defaulting to the parameter's default."""
    params = inspect.signature(func, eval_str=True).parameters
    for name, meta in specs.items():
        _add_flag(p, name, params[name].default, params[name].annotation, meta)


def _kwargs(args, specs: Mapping[str, Mapping]) -> dict:
    """The parsed values of the flags made from ``specs``, by parameter name."""
    return {name: getattr(args, meta.get("dest", name)) for name, meta in specs.items()}


def _info(args) -> None:
    print(api.info(args.model, **_kwargs(args, _INFO)).table())


def _options(args) -> ImportanceOptions:
    ranking = args.importance or (
        "activation" if (getattr(args, "scores", None) or args.data) else "magnitude"
    )
    chosen = {group: getattr(args, f"{group}_source") for group in SCORE_CHOICES}
    sources = {group: variant for group, variant in chosen.items() if variant is not None}
    return ImportanceOptions(ranking=ranking, sources=sources, **_dataclass_values(args, ImportanceOptions))


_TARGETS = ("target_params", "target_active_params", "target_memory", "target_latency")


def _budget(args) -> api.Budget:
    count = api.parse_count
    return api.Budget(
        params=count(args.target_params, "--target-params") if args.target_params else None,
        active_params=count(args.target_active_params, "--target-active-params")
        if args.target_active_params
        else None,
        memory_gib=args.target_memory,
        latency_ms=args.target_latency,
        context_length=args.context_length,
        batch_size=args.memory_batch_size,
        dtype=args.memory_dtype,
        reserve_fraction=args.reserve_fraction,
        reserve_gib=args.reserve,
        device=args.device_profile,
        measure_latency=args.measure_latency,
    )


def _search_options(args) -> api.SearchOptions:
    try:
        divisors = json.loads(args.divisors) if args.divisors else None
    except json.JSONDecodeError as e:
        raise api.PlanError(f"--divisors is not JSON ({e}); write e.g. '{{\"hidden_size\": 64}}'") from None
    return api.SearchOptions(
        max_width_pruning=args.max_width_pruning,
        max_depth_pruning=args.max_depth_pruning,
        hparams_to_skip=tuple(args.hparams_to_skip),
        divisors=divisors,
        top_k=args.top_k,
        score=args.score,
        score_samples=args.score_samples,
        seq_len=args.seq_len,
        batch_size=args.search_batch_size,
        kd_steps=args.kd_steps,
        kd_lr=args.kd_lr,
        seed=args.seed,
    )


def _prune(args) -> None:
    targets = [name for name in _TARGETS if getattr(args, name) is not None]
    if targets and args.export_config:
        raise api.PlanError(
            "--export-config gives the sizes; --target-* searches for them: pass one or the other, not both"
        )
    if targets:
        result = api.search(
            args.model, args.output, _budget(args), args.data, _search_options(args), _options(args),
            scores=args.scores, overwrite=args.overwrite, resume=args.resume,
        )  # fmt: skip
        print(result.table())
        print(f"\nwrote {result.output_dir} (report in {result.output_dir / 'search'})")
        return
    if not args.export_config:
        raise api.PlanError(
            "prune needs sizes (--export-config) or a budget (--target-params, --target-memory, ...)"
        )
    if args.resume:
        raise api.PlanError(
            "--resume continues a budget search (--target-*); a one-shot prune has nothing to resume"
        )
    result = api.prune(
        args.model,
        args.output,
        args.export_config,
        _options(args),
        scores=args.scores,
        data=args.data,
        overwrite=args.overwrite,
        **_kwargs(args, _MEMORY),
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
    ranking = {"ranking": args.importance} if args.importance else {}
    result = api.demo(args.output, args.export_config, **ranking, **_kwargs(args, _DEMO))
    print(result.table())
    print(
        f"\ncompressed model: {result.compress.model_dir}\nreport: {result.compress.output_dir / 'report.md'}"
    )


def _eval(args) -> int:
    baseline = api.EvalResult.load(args.baseline) if args.baseline else None  # bad baseline: before any work
    tolerances = api.parse_tolerances(args.tolerance)
    result = api.eval_model(
        args.model,
        args.data,
        args.reference,
        baseline=None if args.force else baseline,
        **_kwargs(args, _EVAL),
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
    path = api.zoo_checkpoint(args.name, args.output, **_kwargs(args, _ZOO))
    print(f"wrote {path}" + (f" and {args.text}" if args.text else ""))


def _distill(args) -> None:
    flags = {k: v for k, v in _dataclass_values(args, api.DistillConfig).items() if v is not None}
    config = (
        api.DistillConfig.from_yaml(args.config, **flags)
        if args.config
        else api.DistillConfig.from_dict(flags)
    )
    result = api.distill(config)
    print(result.table())
    print(f"\nstudent: {result.final_dir}")


def _cache_teacher(args) -> None:
    result = api.cache_teacher(**_kwargs(args, _CACHE_TEACHER))
    print(result.table())
    print(f"\nwrote {result.output_dir}")


def _distill_flags(p) -> None:
    """Every flag parses unset as None: unset flags leave the --config file (or DistillConfig) default."""
    p.add_argument("--config", default=None, help="YAML file with the same keys; flags override it")
    _dataclass_flags(p, api.DistillConfig, parse_default=False)


def _ranking_flags(p, data_required: bool = False) -> None:
    """Calibration and ranking flags: ImportanceOptions' fields, and a score-site choice per group."""
    p.add_argument(
        "--data", required=data_required, help="calibration text: file, folder or .jsonl (train split used)"
    )
    # `importance` has no memory estimate, so its calibration batch, dtype and device also take short names
    short = {name: (f"--{name.replace('_', '-')}",) for name in ("batch_size", "dtype", "device")}
    _dataclass_flags(p, ImportanceOptions, aliases=short if data_required else {})
    for group, variants in SCORE_CHOICES.items():
        p.add_argument(
            f"--{group}-source",
            default=None,
            choices=variants,
            help=f"which {group} activation scores its units (default {variants[0]})",
        )


def _search_flags(p) -> None:
    """Budget targets and the search (MiniPuzzle); defaults from api.Budget and api.SearchOptions."""
    b, o = api.Budget(), api.SearchOptions()
    g = p.add_argument_group("budget search (instead of --export-config; all targets must hold)")
    g.add_argument("--target-params", default=None, help="total parameters, e.g. 6e9, 6B or 900M")
    g.add_argument(
        "--target-active-params", default=None, help="parameters used per token (MoE: top-k experts)"
    )
    g.add_argument("--target-memory", type=float, default=None, metavar="GIB", help="device memory in GiB")
    g.add_argument("--target-latency", type=float, default=None, metavar="MS", help="decode ms per step")
    g.add_argument(
        "--memory-dtype",
        "--dtype",
        dest="memory_dtype",
        default=b.dtype,
        choices=("bfloat16", "float16", "float32"),
        help=f"dtype of weights and cache (default {b.dtype})",
    )
    g.add_argument(
        "--reserve-fraction",
        type=float,
        default=b.reserve_fraction,
        help="share of --target-memory kept free (Nano 2: 0.05)",
    )
    g.add_argument(
        "--reserve",
        type=float,
        default=b.reserve_gib,
        metavar="GIB",
        help="GiB of --target-memory kept free for the framework (Nano 2: 1.3)",
    )
    g.add_argument(
        "--device-profile",
        default=b.device,
        help=f"roofline latency device: {', '.join(api.DEVICE_PROFILES)} or JSON "
        f'\'{{"bandwidth_gbs": 600, "tflops": 70}}\' (default {b.device})',
    )
    g.add_argument("--measure-latency", action="store_true", help="time candidates on this machine instead")
    g.add_argument(
        "--max-width-pruning",
        type=float,
        default=o.max_width_pruning,
        help=f"largest share removed from any width (default {o.max_width_pruning})",
    )
    g.add_argument(
        "--max-depth-pruning",
        type=float,
        default=o.max_depth_pruning,
        help=f"largest share of layers removed (default {o.max_depth_pruning})",
    )
    g.add_argument(
        "--hparams-to-skip", nargs="*", default=[], help="sizes not searched, e.g. num_attention_heads"
    )
    g.add_argument(
        "--divisors",
        default=None,
        help=f"JSON per-size divisors (default {json.dumps(api.DEFAULT_DIVISORS)})",
    )
    g.add_argument("--top-k", type=int, default=o.top_k, help=f"candidates scored (default {o.top_k})")
    g.add_argument("--score", default=o.score, help="lm-loss, kl, top1 or mc:FILE.jsonl (default kl)")
    g.add_argument(
        "--score-samples",
        type=int,
        default=o.score_samples,
        help=f"held-out sequences that score candidates (default {o.score_samples})",
    )
    g.add_argument(
        "--search-batch-size",
        type=int,
        default=o.batch_size,
        help=f"sequences per forward when scoring and distilling (default {o.batch_size})",
    )
    g.add_argument(
        "--kd-steps",
        type=int,
        default=o.kd_steps,
        help="MiniPuzzle: distillation steps for each of the top-k before choosing (default 0)",
    )
    g.add_argument("--kd-lr", type=float, default=o.kd_lr, help=f"their learning rate (default {o.kd_lr})")
    g.add_argument("--resume", action="store_true", help="continue an interrupted search into the same -o")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemocompress", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nemocompress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="axes, params, active params and memory of a checkpoint")
    p.add_argument("model", help="checkpoint directory (config.json + safetensors)")
    _signature_flags(p, api.info, _INFO)
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
        "--export-config", default=None, help="JSON sizes, e.g. '{\"hidden_size\": 96}', or a .json file"
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
    _signature_flags(p, api.prune, _MEMORY)
    _search_flags(p)
    p.set_defaults(func=_prune)

    p = sub.add_parser(
        "demo", help="SmolLM2-135M compressed (search, prune, distill) on Shakespeare, compared"
    )
    p.add_argument("-o", "--output", default=None, help="the compress run directory (default: in the cache)")
    p.add_argument(
        "--export-config",
        default=None,
        help=f"sizes instead of the target, e.g. {json.dumps(api.DEMO_EXPORT)}",
    )
    p.add_argument("--importance", default=None, choices=RANKINGS, help="unit ranking (default activation)")
    _signature_flags(p, api.demo, _DEMO)
    p.set_defaults(func=_demo)

    p = sub.add_parser("eval", help="held-out loss, bits per byte, KL and top-1 to a reference, throughput")
    p.add_argument("model", help="checkpoint directory (config.json + safetensors + tokenizer)")
    p.add_argument("--data", required=True, help="text file, folder or .jsonl (its held-out split is scored)")
    p.add_argument("--reference", default=None, help="e.g. the unpruned parent (same tokenizer): KL, top-1")
    _signature_flags(p, api.eval_model, _EVAL)
    p.add_argument("-o", "--output", default=None, help="write the JSON report here")
    p.add_argument("--baseline", default=None, help="a report to gate on: exit 3 if a metric regressed")
    _signature_flags(p, api.compare_reports, _GATE)
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
    _signature_flags(p, api.zoo_checkpoint, _ZOO)
    p.set_defaults(func=_zoo)

    p = sub.add_parser("distill", help="knowledge distillation of a student from a teacher")
    _distill_flags(p)
    p.set_defaults(func=_distill)

    p = sub.add_parser("cache-teacher", help="run the teacher once and store its top-k logits")
    _signature_flags(p, api.cache_teacher, _CACHE_TEACHER)
    p.set_defaults(func=_cache_teacher)
    _xtoken_parser(sub)
    _add_compress(sub)
    _elastic_parser(sub)
    _generate_parser(sub)
    return parser


# ---------------------------------------------------------------------- xtoken (cross-tokenizer)

_XTOKEN_MAP = {
    "student_tokenizer": {
        "help": "directory with the student's tokenizer",
        "flags": ("--student-tokenizer",),
    },
    "teacher_tokenizer": {
        "help": "directory with the teacher's tokenizer",
        "flags": ("--teacher-tokenizer",),
    },
    "output": {"help": "the projection W (.safetensors)", "flags": ("-o", "--output")},
    "top_k": {"help": "teacher tokens kept per student token"},
    "overwrite": {"help": "replace an existing file"},
}
_XTOKEN_TRANSPLANT = {
    "model": {"help": "checkpoint directory (config.json + safetensors + tokenizer)", "flags": ("--model",)},
    "tokenizer": {"help": "directory with the new tokenizer", "flags": ("--tokenizer",)},
    "output": {"help": "output checkpoint directory (written atomically)", "flags": ("-o", "--output")},
    "top_k": {"help": "old tokens mixed per new token"},
    "overwrite": {"help": "replace an existing output directory"},
}


def _xtoken_map(args) -> None:
    projection = api.xtoken_map(**_kwargs(args, _XTOKEN_MAP))
    print(projection.table())
    print(f"\nwrote {args.output}")


def _xtoken_transplant(args) -> None:
    result = api.xtoken_transplant(**_kwargs(args, _XTOKEN_TRANSPLANT))
    print(result.table())
    print(f"\nwrote {result.output_dir}")


def _xtoken_parser(sub) -> None:
    p = sub.add_parser(
        "xtoken", help="cross-tokenizer tools: the projection W between vocabularies, transplant"
    )
    commands = p.add_subparsers(dest="xtoken_command", required=True)
    m = commands.add_parser("map", help="build the projection W from a student tokenizer to a teacher one")
    _signature_flags(m, api.xtoken_map, _XTOKEN_MAP)
    m.set_defaults(func=_xtoken_map)
    t = commands.add_parser("transplant", help="give a model a new tokenizer (embeddings mixed through W)")
    _signature_flags(t, api.xtoken_transplant, _XTOKEN_TRANSPLANT)
    t.set_defaults(func=_xtoken_transplant)


def _add_compress(sub) -> None:
    """`compress`: every flag parses unset as None, so that --recipe (or the recipe of a --resume) fills it."""
    p = sub.add_parser("compress", help="importance -> plan -> prune -> distill -> eval in one resumable run")
    p.add_argument("model", nargs="?", default=None, help="checkpoint directory (or `model:` in --recipe)")
    p.add_argument("-o", "--output", required=True, help="run directory: stages/, model/, report.md")
    p.add_argument("--recipe", default=None, help="recipe.yaml of an earlier run (or by hand); flags win")
    p.add_argument("--resume", action="store_true", help="continue the run in -o (same recipe)")
    p.add_argument("--overwrite", action="store_true", help="replace what -o holds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _dataclass_flags(p, api.CompressRecipe, parse_default=False)
    p.set_defaults(func=_compress)


def _compress(args) -> None:
    result = api.compress(
        args.output, args.recipe, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
        model=args.model, **_dataclass_values(args, api.CompressRecipe),
    )  # fmt: skip
    if result.report:  # the main process (the others do not read the report)
        print(result.table())
        print(f"\nstudent: {result.model_dir}\nreport: {result.output_dir / 'report.md'}")


# ---------------------------------------------------------------------- elastic (nested submodels)


def _elastic_parser(sub) -> None:
    p = sub.add_parser("elastic", help="one parent with nested submodels per budget (Nemotron Elastic)")
    commands = p.add_subparsers(dest="elastic_command", required=True)
    t = commands.add_parser("train", help="train the parent and a router per axis for several budgets")
    t.add_argument("--config", default=None, help="YAML file with the same keys; flags override it")
    _dataclass_flags(t, api.ElasticConfig, parse_default=False)
    t.add_argument(
        "--calib-samples", type=int, default=None, help="importance calibration samples (default 32)"
    )
    t.add_argument(
        "--calib-seq-len", type=int, default=None, help="tokens per calibration sample (default 256)"
    )
    t.set_defaults(func=_elastic_train)
    s = commands.add_parser("slice", help="a stock checkpoint of a trained budget, no training")
    s.add_argument("run", help="RUN directory written by `elastic train`")
    s.add_argument(
        "-o", "--output", required=True, help="checkpoint directory (with --all: a folder of them)"
    )
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--budget", default=None, help="a trained budget, as given to --budgets")
    which.add_argument("--all", action="store_true", help="every trained budget, into OUTPUT/budget-B")
    s.add_argument(
        "--interpolate", action="store_true", help="allow an untrained budget (between trained ones)"
    )
    s.add_argument("--quant", action="store_true", help="export quantized (a RUN trained with --quant)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_elastic_slice)


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="greedy generation; an elastic RUN thinks small and answers large")
    p.add_argument("model", help="checkpoint directory or elastic RUN")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt", default=None, help="one prompt")
    which.add_argument("--prompts", default=None, help=".jsonl file, a 'prompt' per line")
    p.add_argument("--think-budget", default=None, help="budget of the reasoning (a RUN's trained budget)")
    p.add_argument("--answer-budget", default=None, help="budget of the answer (default: the full model)")
    p.add_argument("--max-think-tokens", type=int, default=256, help="then </think> is forced (default 256)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="answer tokens at most (default 128)")
    p.add_argument("--json", action="store_true", help="print JSON (text and phases) instead of tables")
    p.set_defaults(func=_generate)


def _generate(args) -> None:
    prompts = [args.prompt] if args.prompt is not None else args.prompts
    result = api.generate(
        args.model, prompts, args.think_budget, args.answer_budget, args.max_think_tokens, args.max_new_tokens
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return
    for i, out in enumerate(result.outputs):
        if out.thinking is not None:
            print(f"[{i}] thinking: {out.thinking}")
        print(f"[{i}] answer: {out.answer}\n")
    print(result.table())


def _elastic_train(args) -> None:
    flags = {k: v for k, v in _dataclass_values(args, api.ElasticConfig).items() if v is not None}
    config = (
        api.ElasticConfig.from_yaml(args.config, **flags)
        if args.config
        else api.ElasticConfig.from_dict(flags)
    )
    calib = {"samples": args.calib_samples, "seq_len": args.calib_seq_len}
    options = ImportanceOptions(**{k: v for k, v in calib.items() if v is not None})
    result = api.elastic_train(config, options)
    print(result.table())
    print(
        f"\nelastic run: {result.run_dir} (the full model loads from it; slice with `nemocompress elastic slice`)"
    )


def _elastic_slice(args) -> None:
    results = api.elastic_slice(
        args.run,
        args.output,
        args.budget,
        args.all,
        args.interpolate,
        args.overwrite,
        not args.no_progress,
        args.quant,
    )
    print(api.SliceResult.table(results))
    if any(r.interpolated for r in results):
        print("\ninterpolated: no router chose this architecture and no training step saw it")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except NemocompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        api.end_processes()


if __name__ == "__main__":
    sys.exit(main())
