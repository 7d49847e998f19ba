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

from . import __version__
from .arch import DEFAULT_DIVISORS, Axis, get_adapter
from .checkpoint import atomic_output_dir, check_output_dir, list_tensors, load_config
from .data import build_samples
from .demo import DEMO_EXPORT, DemoResult, demo
from .distill import DistillConfig, DistillResult, TeacherCacheResult, cache_teacher, distill  # the commands
from .distill.models import load_causal_lm, load_tokenizer, vocabulary
from .elastic import ElasticConfig, ElasticResult, SliceResult, budgets_table, slice_run, train_elastic
from .elastic import load_state as load_elastic_state
from .elastic.generate import GenerateResult, generate_text, read_prompts
from .elastic.train import ELASTIC_DIR
from .errors import PlanError, UnsupportedModelError
from .eval_report import (
    DIRECTIONS,
    REPORT_FORMAT,
    Comparison,
    EvalResult,
    check_comparable,
    compare_reports,
    parse_tolerances,
)
from .evaluate import EvalError, evaluate
from .importance.artifact import ImportanceArtifact, describe_run
from .importance.calibrate import CalibrationCheckpoint, calibrate, load_model_and_samples
from .importance.depth import default_layer_metrics
from .importance.options import ImportanceOptions
from .importance.result import ImportanceResult
from .importance.selection import select_layers, windows_to_score
from .importance.weights import random_scores
from .prune.budget import DEVICE_PROFILES, Budget, parse_count
from .prune.cost import Cost, model_cost
from .prune.minitron import plan_from_targets
from .prune.plan import Plan
from .prune.search import (
    SearchOptions,
    SearchResult,
    SearchState,
    measure_decode_ms,
    prepare_search,
    run_search,
)
from .prune.slice import slice_checkpoint
from .report import format_table, human
from .xtoken import Projection  # importing xtoken registers its KD losses: pkl, hkl, uld, gold
from .zoo import ZOO, save_zoo_checkpoint, zoo_text

__all__ = [
    "ModelInfo",
    "ImportanceResult",
    "PruneResult",
    "info",
    "end_processes",
    "importance",
    "load_importance",
    "prune",
    "search",
    "Budget",
    "SearchOptions",
    "SearchResult",
    "parse_count",
    "DEVICE_PROFILES",
    "DEFAULT_DIVISORS",
    "PlanError",
    "demo",
    "DemoResult",
    "DEMO_EXPORT",
    "EvalResult",
    "Comparison",
    "eval_model",
    "zoo_checkpoint",
    "compare_reports",
    "parse_tolerances",
    "parse_export_config",
    "ImportanceOptions",
    "DistillConfig",
    "DistillResult",
    "distill",
    "TeacherCacheResult",
    "cache_teacher",
    "Projection",
    "TransplantResult",
    "xtoken_map",
    "xtoken_transplant",
    "ElasticConfig",
    "ElasticResult",
    "SliceResult",
    "elastic_train",
    "elastic_slice",
    "generate",
    "GenerateResult",
]


@dataclass
class ModelInfo:
    """A model's prunable axes and its cost."""

    model_type: str
    axes: list[Axis]
    layer_kinds: list[str]
    cost: Cost
    dtype: str
    elastic: dict | None = None  # an elastic RUN's state: its trained budgets

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
        text = f"{self.model_type}: {len(self.layer_kinds)} layers ({layers})\n\n{axes}\n\n{totals}"
        if self.elastic is not None:
            text += f"\n\nelastic budgets (slice with `nemocompress elastic slice`):\n{budgets_table(self.elastic)}"
        return text


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
    """Describe a checkpoint (config only; weights are not read); for an elastic RUN also its budgets."""
    elastic = None
    if (Path(model_dir) / ELASTIC_DIR).is_dir():
        elastic = load_elastic_state(model_dir)  # an unfinished RUN: says so
    config = load_config(model_dir)
    adapter = get_adapter(config)
    cost = model_cost(config, context_length, batch_size, _dtype(dtype))
    return ModelInfo(
        config.model_type, adapter.axes(config), adapter.layer_kinds(config), cost, dtype, elastic
    )


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
        memory = f"memory (bf16, {b.batch_size} x {b.context_length} tokens)"
        rows.append([memory, human(b.memory_bytes, "B"), human(a.memory_bytes, "B"), f"{ratio:.3f}x"])
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
    before = model_cost(config, context_length, batch_size, torch.bfloat16)  # as `info` and `eval` estimate
    after = model_cost(plan.apply_config(config), context_length, batch_size, torch.bfloat16)
    return PruneResult(plan, before, after, Path(output_dir))


# ---------------------------------------------------------------------- budget search (MiniPuzzle)


def search_state_dir(output_dir: str | Path) -> Path:
    """Where a search keeps its progress until the winner is written: ``OUT.search`` beside ``OUT``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".search")


def search(
    model_dir: str | Path,
    output_dir: str | Path,
    budget: Budget,
    data: str | Path | None = None,
    search_options: SearchOptions | None = None,
    options: ImportanceOptions | None = None,
    scores: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> SearchResult:
    """Prune to a budget: enumerate candidates, rank the top ones zero-shot on the masked parent, distill them
    for ``search_options.kd_steps`` steps when asked (MiniPuzzle), and write the best as a stock checkpoint
    with ``search/report.json``, ``report.md`` and ``candidates.png`` inside.

    Every bad target (unreachable, contradictory, above the model, no axis left) raises PlanError before
    anything is loaded or written. Progress is saved in ``OUT.search``; ``resume`` continues it.
    """
    search_options = search_options or SearchOptions()
    if options is None:
        options = ImportanceOptions(ranking="activation" if (scores or data) else "magnitude")
    config = load_config(model_dir)
    prepared = prepare_search(config, budget, search_options)
    if data is None:
        raise PlanError(
            "a budget search scores candidates on held-out text: pass --data (file, folder or .jsonl)"
        )
    if output_dir is not None and Path(output_dir).exists() and not overwrite:
        check_output_dir(output_dir, overwrite, inputs=(model_dir,))
    list_tensors(model_dir)  # refuse a corrupt checkpoint before any work
    settings = {
        "model": str(Path(model_dir).resolve()),
        "data": str(Path(data).resolve()),
        "budget": budget.to_dict(),
        "search": search_options.to_dict(),
        "importance": options.to_dict(),
        "scores": str(scores) if scores else None,
    }
    state = SearchState.open(search_state_dir(output_dir), settings, resume, overwrite)
    depth = len(prepared.space.num_layers) > 1
    saved = state.directory / "importance"
    if scores is not None or not options.needs_data:
        found = _found(model_dir, config, None, options, scores, data, progress)
    elif saved.exists():
        found = load_importance(saved, model_dir, options)
    else:
        found = importance(
            model_dir, data, saved, options, (1,), progress=progress, resume=True, layers=depth
        )
    train = None
    if search_options.kd_steps:

        def train(student: Path, run: Path) -> Path:
            cfg = DistillConfig(
                teacher=str(model_dir), student=str(student), data=str(data), output_dir=str(run),
                steps=search_options.kd_steps, seq_len=search_options.seq_len,
                batch_size=search_options.batch_size, lr=search_options.kd_lr, seed=search_options.seed,
                eval_every=0, eval_samples=search_options.score_samples,
                save_every=max(25, search_options.kd_steps // 4), resume=run.exists(),
                progress=progress,
            )  # fmt: skip
            return distill(cfg).final_dir

    measure = None
    if budget.measure_latency:

        def measure(candidate_config) -> float:
            return measure_decode_ms(
                candidate_config, budget.context_length, budget.batch_size, budget.torch_dtype
            )

    return run_search(
        model_dir, output_dir, prepared, found, data, state, options.layer_metric, overwrite, progress,
        measure=measure, train=train,
    )  # fmt: skip


# ---------------------------------------------------------------------- eval


def eval_model(
    model_dir: str | Path,
    data: str | Path,
    reference: str | Path | None = None,
    samples: int = 16,
    seq_len: int = 256,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 4,
    context_length: int = 4096,
    dtype: str = "float32",
    device: str | None = None,
    generation_tokens: int = 32,
    progress: bool = True,
    baseline: EvalResult | None = None,
) -> EvalResult:
    """Evaluate a checkpoint on up to ``samples`` held-out samples of ``data`` (:func:`nemocompress.evaluate.evaluate`).

    The held-out split is the one importance and distillation never see for the same ``heldout_fraction``
    and ``seed`` (:func:`nemocompress.data.build_samples`). ``reference`` (e.g. the unpruned parent, same
    tokenizer) adds KL and top-1 agreement. Returns the report: metrics, params, active params and memory
    (bfloat16 weights and cache for one sequence of ``context_length`` tokens), versions, data fingerprint
    and settings; ``result.save(path)`` writes it as JSON and :func:`compare_reports` gates on it.
    ``baseline``: refuse (``GateError``) data or settings that this baseline report was not made with,
    before any model runs.
    """
    import transformers

    if samples < 1 or seq_len < 2 or batch_size < 1:
        raise EvalError(
            f"need --samples >= 1, --seq-len >= 2, --batch-size >= 1; got {samples}, {seq_len}, {batch_size}"
        )
    load_config(model_dir)  # CheckpointError for a missing model, before any work
    tokenizer = load_tokenizer(model_dir, reference)
    built = build_samples(tokenizer, data, seq_len, 0, samples, heldout_fraction, seed)
    settings = {**built.settings, "samples": samples, "dtype": dtype, "context_length": context_length}
    if baseline is not None:  # refuse another data set or other settings before any forward
        check_comparable(
            {"data_fingerprint": built.heldout_fingerprint, "settings": settings}, baseline.report
        )
    model = load_causal_lm(model_dir, _dtype(dtype))
    ref_model = None
    if reference is not None:
        ref_model = load_causal_lm(reference, _dtype(dtype))
        ref_tokenizer = load_tokenizer(reference, model_dir)
        if vocabulary(ref_model.config, ref_tokenizer) != vocabulary(model.config, tokenizer):
            raise EvalError(
                f"{reference} and {model_dir} have different vocabularies (logit width or tokenizer): KL and "
                "top-1 agreement need the same tokenizer; evaluate without --reference"
            )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if ref_model is not None:
        ref_model.to(device)
    measured = evaluate(
        model, built.heldout, tokenizer, ref_model, batch_size=batch_size, generation_tokens=generation_tokens,
        progress=progress,
    )  # fmt: skip
    cost = model_cost(model.config, context_length, 1, torch.bfloat16)
    metrics = {k: v for k, v in measured.to_dict().items() if k in DIRECTIONS}
    metrics |= {"params": cost.params, "active_params": cost.active_params, "memory_bytes": cost.memory_bytes}
    return EvalResult(
        {
            "format": REPORT_FORMAT,
            "model": str(model_dir),
            "reference": None if reference is None else str(reference),
            "data": str(data),
            "data_fingerprint": built.heldout_fingerprint,
            "settings": settings | {"batch_size": batch_size, "device": device},
            "metrics": metrics,
            "measured": {k: measured.to_dict()[k] for k in ("num_samples", "num_targets", "num_bytes")},
            "cost": cost.to_dict(),
            "versions": {
                "nemocompress": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }
    )


def zoo_checkpoint(
    name: str, output_dir: str | Path, seed: int = 0, text: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Write the pinned tiny zoo model ``name`` (seeded weights, the zoo tokenizer) to ``output_dir``.

    ``text``: also write the zoo's deterministic text corpus there (:func:`nemocompress.zoo.zoo_text`).
    """
    if name not in ZOO:
        raise UnsupportedModelError(f"no zoo model named {name!r}; choose one of {', '.join(sorted(ZOO))}")
    with atomic_output_dir(output_dir, overwrite) as tmp:
        save_zoo_checkpoint(name, tmp, seed)
    if text is not None:
        Path(text).parent.mkdir(parents=True, exist_ok=True)
        Path(text).write_text(zoo_text(seed=seed))
    return Path(output_dir)


def end_processes() -> None:
    """Destroy the process group of a ``torchrun`` / ``accelerate launch`` run, if one was made.

    Call it once a multi-process command is done: a process that exits with its gloo group alive may abort
    ("terminate called without an active exception") while its peers are still finishing.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------- demo (in nemocompress.demo)


# ---------------------------------------------------------------------- xtoken (cross-tokenizer)


def xtoken_map(
    student_tokenizer: str | Path,
    teacher_tokenizer: str | Path,
    output: str | Path,
    top_k: int = 4,
    overwrite: bool = False,
) -> Projection:
    """Build the projection W from a student tokenizer to a teacher one and save it (safetensors).

    ``student_tokenizer`` / ``teacher_tokenizer``: directories holding a tokenizer (a checkpoint's, or
    one saved with ``save_pretrained``). ``top_k``: teacher tokens kept per student token. Returns the
    :class:`~nemocompress.xtoken.Projection` (``.table()`` prints its statistics).
    """
    from .xtoken import build_projection

    check_output_dir(output, overwrite, inputs=(student_tokenizer, teacher_tokenizer))  # before any work
    student, teacher = load_tokenizer(student_tokenizer), load_tokenizer(teacher_tokenizer)
    projection = build_projection(student, teacher, top_k=top_k)
    projection.save(output, overwrite=overwrite)
    return projection


@dataclass
class TransplantResult:
    """A model moved onto a new tokenizer: where it was written and the projection used."""

    output_dir: Path
    old_vocab: int
    new_vocab: int
    projection: Projection

    def table(self) -> str:
        s = self.projection.stats
        rows = [
            ["vocabulary (logits)", f"{self.old_vocab:,}", f"{self.new_vocab:,}"],
            ["new tokens that are old tokens", "", f"{s.get('exact_share', 0.0):.1%}"],
            ["new tokens mixed from old pieces", "", f"{1 - s.get('exact_share', 0.0):.1%}"],
            ["mean old pieces per mixed token", "", f"{s.get('mean_pieces', 0.0):.2f}"],
        ]
        return format_table(rows, ["transplant", "before", "after"])


TRANSPLANT_PROJECTION = "xtoken_projection.safetensors"


def xtoken_transplant(
    model: str | Path,
    tokenizer: str | Path,
    output: str | Path,
    top_k: int = 4,
    overwrite: bool = False,
) -> TransplantResult:
    """Give the checkpoint ``model`` the tokenizer in ``tokenizer``; write a stock checkpoint to ``output``.

    Each new token's embedding (and untied LM-head row) is the W-weighted mixture of the old rows of the
    tokens that spell it (:func:`nemocompress.xtoken.transplant.transplant_embeddings_`). ``output`` also
    holds the W used (new -> old tokenizer, ``xtoken_projection.safetensors``): the projection a
    cross-tokenizer distillation from the old model into the new one reads (``--projection``).
    """
    from .xtoken import build_projection
    from .xtoken.transplant import transplant_embeddings_

    check_output_dir(output, overwrite, inputs=(model,))
    old_tokenizer, new_tokenizer = load_tokenizer(model), load_tokenizer(tokenizer)
    lm = load_causal_lm(model)
    old_vocab = int(lm.config.vocab_size)
    projection = build_projection(new_tokenizer, old_tokenizer, top_k=top_k).resized(
        len(new_tokenizer), old_vocab
    )
    transplant_embeddings_(lm, projection)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(new_tokenizer, name)
        for config in (lm.config, lm.generation_config):
            if config is not None and hasattr(config, name):
                setattr(config, name, value)
    with atomic_output_dir(output, overwrite, inputs=(model,)) as tmp:
        lm.save_pretrained(tmp)
        new_tokenizer.save_pretrained(tmp)
        projection.save(tmp / TRANSPLANT_PROJECTION)
    return TransplantResult(Path(output), old_vocab, int(lm.config.vocab_size), projection)


# ---------------------------------------------------------------------- compress (in nemocompress.compress)

from .compress import RECIPE_FILE, CompressRecipe, CompressResult  # noqa: E402
from .compress import compress as _compress  # noqa: E402

__all__ += ["compress", "CompressRecipe", "CompressResult"]


def compress(
    output_dir: str | Path,
    recipe: str | Path | CompressRecipe | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **settings,
) -> CompressResult:
    """The Minitron recipe into ``output_dir``: importance -> plan -> prune -> distill -> eval, resumable.

    ``settings`` are :class:`CompressRecipe` fields (``model``, ``data``, ``target_params``, ``kd_steps``,
    ...); non-None ones win over ``recipe`` (a ``recipe.yaml`` path or a CompressRecipe). With ``resume`` and
    no ``recipe``, the recipe saved in ``output_dir`` is the base, so ``compress(out, resume=True)``
    continues a run; ``resume`` of another recipe is refused, as is an ``output_dir`` holding another run
    without ``overwrite``. See :mod:`nemocompress.compress` for what ``output_dir`` holds.
    """
    saved = Path(output_dir) / RECIPE_FILE
    if recipe is None and resume and saved.is_file():
        recipe = saved
    if isinstance(recipe, CompressRecipe):
        built = CompressRecipe.from_dict(recipe.to_dict(), **settings)
    elif recipe is not None:
        built = CompressRecipe.from_yaml(recipe, **settings)
    else:
        built = CompressRecipe.from_dict({}, **settings)
    return _compress(built, output_dir, resume=resume, overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------- elastic nested models


def elastic_train(
    config: ElasticConfig | None = None, options: ImportanceOptions | None = None, **settings
) -> ElasticResult:
    """Train an elastic parent (see :class:`~nemocompress.elastic.ElasticConfig`; ``settings`` are its
    fields, over ``config``'s): activation importance on the train split of ``data`` (``options``), then
    :func:`~nemocompress.elastic.train_elastic`. Returns the RUN's budgets and records."""
    if config is None:
        config = ElasticConfig.from_dict(settings)
    elif settings:
        config = ElasticConfig.from_dict(config.to_dict(), **settings)
    options = options or ImportanceOptions()

    def scores():
        found = importance(
            config.parent, config.data, None, options, block_sizes=(1,), progress=config.progress
        )
        return found.unit_scores(), found.layer_scores(1)[options.layer_metric]

    return train_elastic(config, scores)


#: Stock checkpoints of an elastic RUN's budgets, zero-shot (:func:`nemocompress.elastic.slice_run`).
elastic_slice = slice_run


def generate(
    model_dir: str | Path,
    prompts: str | list[str],
    think_budget: str | None = None,
    answer_budget: str | None = None,
    max_think_tokens: int = 256,
    max_new_tokens: int = 128,
) -> GenerateResult:
    """Greedy answers to ``prompts`` (a list, or a ``.jsonl`` path with ``prompt`` or ``text`` per line); an
    elastic RUN thinks at ``think_budget`` and answers at ``answer_budget``
    (:func:`nemocompress.elastic.generate_text`)."""
    if isinstance(prompts, (str, Path)):
        prompts = read_prompts(prompts)
    return generate_text(model_dir, prompts, think_budget, answer_budget, max_think_tokens, max_new_tokens)
