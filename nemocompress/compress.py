"""The Minitron recipe in one resumable run: importance -> plan -> prune -> distill -> eval.

recipe = CompressRecipe(model="parent", data="text/", target_params="90M", kd_steps=200)
result = compress(recipe, "out")           # out/model: the distilled student, a stock checkpoint
print(result.table())                      # parent / pruned / distilled: size, held-out loss, bits per byte

What ``OUT`` holds::

    recipe.yaml              every setting; `nemocompress compress --recipe OUT/recipe.yaml -o OUT2` replays it
    stages/01-importance/    activation statistics of the parent (nemocompress.api.importance)
    stages/02-plan/          plan.json, the kept units (and search/, the budget search's report, for a target)
    stages/03-prune/         the pruned student, a stock checkpoint
    stages/04-distill/       the trainer's run: checkpoints/, metrics.jsonl, loss_curve.png, final/; DONE
    stages/05-eval/          parent.json, pruned.json, distilled.json (eval reports) and generations.json
    model/                   the final student, a stock checkpoint
    report.md, report.json, report.png

Every stage but the distillation is written to a temporary directory and renamed when complete
(:func:`nemocompress.checkpoint.atomic_output_dir`), so a stage directory that exists is finished; the
distillation is finished when its ``DONE`` marker exists, and until then resumes itself from its latest
checkpoint (bitwise on CPU). The calibration and the budget search keep their own progress beside their
stage (``.01-importance.partial``, ``.02-plan.work/pruned.search``) and continue from it. So ``resume``
continues at the stage and training step where a run stopped and never redoes a finished stage. Inputs
(model, data, teacher cache) are only read.

Under ``torchrun`` / ``accelerate launch`` the calibration is sharded and the distillation runs DDP or FSDP
as accelerate is configured; planning, slicing, evaluation and the report run on the main process, while the
others wait for the plan and the pruned checkpoint on the file system (``OUT`` must be shared by all
processes) and end once the student is distilled.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import (
    atomic_output_dir,
    check_output_dir,
    load_config,
    remove_stale_temporaries,
    replace_dir,
)
from .errors import NemocompressError, OutputError
from .report import format_table, human
from .settings import read_settings

__all__ = ["RECIPE_VERSION", "STAGES", "CompressError", "CompressRecipe", "CompressResult", "compress"]

RECIPE_VERSION = 1
STAGES = ("01-importance", "02-plan", "03-prune", "04-distill", "05-eval")
RECIPE_FILE = "recipe.yaml"
DONE = "DONE"
_PATHS = ("model", "data", "eval_data", "teacher_cache")
_TARGETS = ("target_params", "target_active_params", "target_memory")
_GIB = 2**30


def _rankings() -> tuple[str, ...]:
    from .importance.rankings import RANKINGS

    return tuple(RANKINGS)


class CompressError(NemocompressError, ValueError):
    """A compress setting, recipe or output directory is wrong; the message names the fix."""


@dataclass
class CompressRecipe:
    """Every setting of a compress run; ``recipe.yaml`` holds exactly these. Validated on construction.

    One of the targets (``target_params``, ``target_active_params``, ``target_memory`` GiB at
    ``context_length`` tokens) runs the budget search (:func:`nemocompress.api.search`, zero-shot, width
    only unless ``max_depth_pruning`` > 0); ``export_config`` gives the sizes instead. The student is then
    distilled from the parent for ``kd_steps`` steps (or ``kd_tokens`` tokens) of ``batch_size`` x
    ``seq_len`` tokens per process at ``kd_lr`` (0 steps: no distillation, with a warning), with the
    teacher's top-k logits from ``teacher_cache`` when given. Parent, pruned and distilled models are
    evaluated on ``eval_samples`` held-out samples of ``eval_data`` (default ``data``; the held-out split
    that calibration and training never see), and each continues ``prompt`` greedily.

    A field with ``help`` metadata is a flag of ``nemocompress compress`` (built by :mod:`nemocompress.cli`).
    """

    model: str | None = None
    data: str | None = field(
        default=None, metadata={"help": "text file, folder or .jsonl (train split used)"}
    )
    target_params: str | None = field(default=None, metadata={"help": "total parameters, e.g. 90M or 6B"})
    target_active_params: str | None = field(
        default=None, metadata={"help": "parameters used per token (MoE: top-k experts)"}
    )
    target_memory: float | None = field(
        default=None, metadata={"help": "GiB of weights + cache at --context-length (bf16)"}
    )
    context_length: int = field(default=4096, metadata={"help": "tokens per sequence for the memory target"})
    export_config: dict | None = field(
        default=None, metadata={"help": "sizes instead of a target: JSON, e.g. '{\"hidden_size\": 480}'"}
    )
    max_depth_pruning: float = field(
        default=0.0, metadata={"help": "largest share of layers the search may remove"}
    )
    top_k: int = field(default=4, metadata={"help": "candidates the search scores"})
    importance: str = field(default="activation", metadata={"help": "unit ranking", "choices": _rankings})
    calib_samples: int = field(default=64, metadata={"help": "calibration samples for importance"})
    kd_steps: int | None = field(
        default=None, metadata={"help": "distillation steps; 0: none", "default_help": "200, or --kd-tokens"}
    )
    kd_tokens: str | None = field(
        default=None, metadata={"help": "distillation tokens instead of steps, e.g. 2M"}
    )
    kd_lr: float = field(default=1e-4, metadata={"help": "peak distillation learning rate"})
    seq_len: int = field(
        default=512, metadata={"help": "tokens per sequence (calibration, search, KD, eval)"}
    )
    batch_size: int = field(default=4, metadata={"help": "sequences per step, split over the processes"})
    save_every: int = field(default=50, metadata={"help": "distillation checkpoint period in steps"})
    teacher_cache: str | None = field(
        default=None, metadata={"help": "teacher top-k logits from `nemocompress cache-teacher`"}
    )
    eval_data: str | None = field(
        default=None, metadata={"help": "text scored held out", "default_help": "--data"}
    )
    eval_samples: int = field(default=32, metadata={"help": "held-out samples evaluated"})
    prompt: str = field(default="The capital of France is", metadata={"help": "continued by each model"})
    generation_tokens: int = field(default=16, metadata={"help": "tokens generated from --prompt"})
    seed: int = field(default=0, metadata={"help": "data split, order and search"})
    version: int = RECIPE_VERSION

    def __post_init__(self):
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(Path(value).resolve()))
        if isinstance(self.export_config, str):
            from .api import parse_export_config

            self.export_config = parse_export_config(self.export_config)
        if self.kd_tokens is not None:
            self.kd_tokens = str(self.kd_tokens)
        self._check()

    def _check(self) -> None:
        if self.version != RECIPE_VERSION:
            raise CompressError(f"recipe version {self.version} is not supported (this is {RECIPE_VERSION})")
        if self.model is None:
            raise CompressError("no model: pass MODEL (a checkpoint directory) or give `model:` in --recipe")
        targets = [t for t in _TARGETS if getattr(self, t) is not None]
        if targets and self.export_config:
            raise CompressError(
                "--export-config gives the sizes; --target-* searches for them: pass one or the other, not both"
            )
        if not targets and not self.export_config:
            raise CompressError(
                "compress needs a target (--target-params, --target-active-params, --target-memory) or "
                "sizes (--export-config)"
            )
        if self.data is None:
            what = "scores units for the search" if targets else "scores the units to keep"
            raise CompressError(
                f"no data: pass --data PATH (text file, folder or .jsonl); importance {what} on its train split"
            )
        if self.kd_steps is not None and self.kd_tokens is not None:
            raise CompressError("pass --kd-steps or --kd-tokens, not both")
        if self.kd_steps is not None and self.kd_steps < 0:
            raise CompressError(f"--kd-steps must not be negative, got {self.kd_steps}")
        for name in ("seq_len", "batch_size", "calib_samples", "eval_samples", "top_k", "generation_tokens"):
            if getattr(self, name) < 1:
                raise CompressError(f"--{name.replace('_', '-')} must be a positive integer")
        if self.seq_len < 2:
            raise CompressError("--seq-len must be at least 2")
        if self.save_every < 0:
            raise CompressError("--save-every must not be negative (0: no checkpoints)")

    # ------------------------------------------------------------------ the distillation's length

    def steps(self) -> int:
        """Optimizer steps: ``kd_steps``, or ``kd_tokens`` over the tokens of one step, or 200."""
        if self.kd_tokens is not None:
            from .prune.budget import parse_count

            tokens = parse_count(self.kd_tokens, "--kd-tokens")
            return math.ceil(tokens / (self.batch_size * self.seq_len))
        return 200 if self.kd_steps is None else self.kd_steps

    # ------------------------------------------------------------------ YAML

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides) -> CompressRecipe:
        """From a mapping (keys may use dashes, as the flags do); non-None ``overrides`` win."""
        merged = {str(k).replace("-", "_"): v for k, v in values.items()}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise CompressError(
                f"unknown recipe key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> CompressRecipe:
        return cls.from_dict(read_settings(path, CompressError, "recipe", "kd_steps: 100"), **overrides)


# ---------------------------------------------------------------------- the result


@dataclass
class CompressResult:
    """Where the run wrote its outputs, and its report (``report.json``)."""

    output_dir: Path
    report: dict

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"

    def table(self) -> str:
        """The summary (empty on the processes other than the main one, which do not read the report)."""
        return summary_table(self.report) if self.report else ""


_ROWS = (
    ("params", lambda m: human(m["params"])),
    ("memory (bf16, ctx)", lambda m: human(m["memory_bytes"], "B")),
    ("held-out loss (nats/token)", lambda m: f"{m['loss']:.3f}"),
    ("bits per byte", lambda m: f"{m['bits_per_byte']:.3f}"),
    ("KL to parent (nats/token)", lambda m: "0" if m.get("kl") is None else f"{m['kl']:.3f}"),
    ("forward tokens/s", lambda m: f"{m['forward_tokens_per_s']:,.0f}"),
)


def summary_table(report: dict) -> str:
    """Parent / pruned / distilled side by side: size, held-out quality, speed and a generation."""
    models = report["models"]
    names = list(models)
    rows = [[label, *(show(models[n]["metrics"]) for n in names)] for label, show in _ROWS]
    prompt = report["recipe"]["prompt"]
    rows.append([f"{prompt!r} ->", *(repr(models[n]["generation"][:40]) for n in names)])
    return format_table(rows, ["", *names])


# ---------------------------------------------------------------------- the run


def compress(
    recipe: CompressRecipe,
    output_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> CompressResult:
    """Run ``recipe`` into ``output_dir`` (module docstring): every stage not yet finished, then the report.

    Bad input (a bad target or sizes, missing data, a missing model, an output directory holding another
    run without ``resume`` of the same recipe or ``overwrite``) raises before anything is written.
    ``kd_steps=0`` warns: a pruned model is rarely useful before it is distilled.
    """
    out = Path(output_dir).resolve()
    if resume and overwrite:
        raise CompressError("--resume continues the run in -o, --overwrite replaces it: pick one")
    state = _processes()
    _check_inputs(recipe)
    if recipe.batch_size % state.num_processes:
        raise CompressError(
            f"--batch-size {recipe.batch_size} does not split over {state.num_processes} processes: make it a "
            "multiple of the process count"
        )
    if recipe.steps() == 0:
        warnings.warn(
            "--kd-steps 0: the pruned model is not distilled; pruning without distillation loses most of the "
            "parent's quality (see report.md), so give it --kd-steps N unless you distill it yourself",
            stacklevel=2,
        )
    if state.is_main_process:
        _open_output(recipe, out, resume, overwrite)
    _barrier()
    stages = out / "stages"
    runs = {
        "01-importance": _importance,
        "02-plan": _plan,
        "03-prune": _prune,
        "04-distill": _distill,
        "05-eval": _eval,
    }
    everyone = {"01-importance", "04-distill"}  # the others run on the main process only
    for name, run in runs.items():
        if name in everyone or state.is_main_process:
            if not _done(stages / name):
                run(recipe, stages, progress)
            if name in everyone:
                _barrier()
        elif name != "05-eval":
            _wait_for(stages / name)
    if not state.is_main_process:
        return CompressResult(out, {})  # the main process evaluates and writes the report
    return CompressResult(out, _finish(recipe, out))


def _barrier() -> None:
    """Wait for every process while there is a process group (the trainer ends its group when done)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _wait_for(stage: Path, every_s: float = 1.0) -> None:
    """Wait for the main process to finish ``stage``, watching the file system (``OUT`` is shared by all
    processes) rather than in a collective, whose timeout (10 minutes under NCCL) a long search or slicing
    would pass. A main process that fails ends the launch (torchrun stops the others)."""
    while not _done(stage):
        time.sleep(every_s)


def _processes():
    """accelerate's process state, as the trainer makes it (on CPU, gloo across processes under torchrun)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _done(stage: Path) -> bool:
    if stage.name == "04-distill":
        return (stage / DONE).is_file()
    return stage.is_dir()


def _check_inputs(recipe: CompressRecipe) -> None:
    """Refuse a missing model or data, a bad target or bad sizes: before any work."""
    from .arch import get_adapter
    from .checkpoint import list_tensors
    from .data import load_texts
    from .importance.weights import random_scores
    from .prune.minitron import plan_from_targets
    from .prune.search import prepare_search

    config = load_config(recipe.model)
    list_tensors(recipe.model)
    for path in (recipe.data, recipe.eval_data):
        if path is not None and not Path(path).exists():
            load_texts(path)  # DataError naming the path
    if recipe.export_config:
        axes = [(a.name, a.size) for a in get_adapter(config).axes(config)]
        plan_from_targets(config, recipe.export_config, random_scores(axes))
    else:
        prepare_search(config, _budget(recipe), _search_options(recipe))
    if recipe.teacher_cache is not None and not Path(recipe.teacher_cache).is_dir():
        raise CompressError(f"--teacher-cache {recipe.teacher_cache} is not a directory from `cache-teacher`")


def _open_output(recipe: CompressRecipe, out: Path, resume: bool, overwrite: bool) -> None:
    """Create ``out`` with ``recipe.yaml``, or check that it holds the same recipe (``resume``)."""
    inputs = tuple(p for p in (getattr(recipe, name) for name in _PATHS) if p is not None)
    check_output_dir(out, overwrite=True, inputs=inputs)
    saved = out / RECIPE_FILE
    if out.exists() and not overwrite:
        if not saved.is_file():
            raise OutputError(
                f"{out} exists and holds no {RECIPE_FILE}: choose another -o, or pass --overwrite to replace it"
            )
        if not resume:
            raise OutputError(
                f"{out} holds a compress run: pass --resume to continue it, --overwrite to start over, or "
                "choose another -o"
            )
        before = CompressRecipe.from_yaml(saved).to_dict()
        now = recipe.to_dict()
        changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in now if before.get(k) != now.get(k)]
        if changed:
            raise OutputError(
                f"--resume: {out} holds a run of another recipe ({'; '.join(changed[:4])}); repeat its settings "
                f"(--recipe {saved}) or pass --overwrite to start over"
            )
        return
    with atomic_output_dir(out, overwrite, inputs) as tmp:
        recipe.save_yaml(tmp / RECIPE_FILE)
        (tmp / "stages").mkdir()


# ---------------------------------------------------------------------- the stages


def _options(recipe: CompressRecipe):
    from .importance.options import ImportanceOptions

    return ImportanceOptions(
        ranking=recipe.importance, samples=recipe.calib_samples, seq_len=recipe.seq_len, batch_size=recipe.batch_size,
        seed=recipe.seed,
    )  # fmt: skip


def _budget(recipe: CompressRecipe):
    from .prune.budget import Budget, parse_count

    count = {
        t: parse_count(getattr(recipe, t), "--" + t.replace("_", "-"))
        for t in _TARGETS[:2]
        if getattr(recipe, t)
    }
    return Budget(
        params=count.get("target_params"), active_params=count.get("target_active_params"),
        memory_gib=recipe.target_memory, context_length=recipe.context_length,
    )  # fmt: skip


def _search_options(recipe: CompressRecipe):
    from .prune.search import SearchOptions

    width_only = ("num_layers",) if recipe.max_depth_pruning == 0 else ()  # an empty depth share: no choice
    return SearchOptions(
        max_depth_pruning=recipe.max_depth_pruning, hparams_to_skip=width_only, top_k=recipe.top_k, score_samples=min(16, recipe.eval_samples),
        seq_len=recipe.seq_len, batch_size=recipe.batch_size, seed=recipe.seed,
    )  # fmt: skip


def _prunes_layers(recipe: CompressRecipe) -> bool:
    if recipe.export_config:
        return "num_layers" in recipe.export_config
    return recipe.max_depth_pruning > 0


def _importance(recipe: CompressRecipe, stages: Path, progress: bool) -> None:
    from . import api

    layers = _prunes_layers(recipe)
    api.importance(
        recipe.model, recipe.data, stages / "01-importance", _options(recipe), (1,), progress=progress,
        resume=True, layers=layers,
    )  # fmt: skip


def _work(stages: Path) -> Path:
    """Where the plan stage lets the pruner write (and the search keep its state) until the plan is saved."""
    return stages / ".02-plan.work"


def _plan(recipe: CompressRecipe, stages: Path, progress: bool) -> None:
    """The pruner's plan, by the budget search or from the sizes, saved with the search's report.

    The pruner writes its checkpoint into the work directory; the prune stage renames it into place.
    """
    from . import api
    from .prune.slice import PLAN_FILE

    pruned = _work(stages) / "pruned"
    scores = stages / "01-importance"
    if not pruned.exists():
        if recipe.export_config:
            api.prune(
                recipe.model, pruned, recipe.export_config, _options(recipe), scores=scores, progress=progress
            )
        else:
            api.search(
                recipe.model, pruned, _budget(recipe), recipe.data, _search_options(recipe), _options(recipe),
                scores=scores, resume=True, progress=progress,
            )  # fmt: skip
    with atomic_output_dir(stages / "02-plan", inputs=(recipe.model,)) as tmp:
        shutil.copy2(pruned / PLAN_FILE, tmp / "plan.json")
        if (pruned / "search").is_dir():
            shutil.copytree(pruned / "search", tmp / "search")


def _prune(recipe: CompressRecipe, stages: Path, progress: bool) -> None:
    """The pruned checkpoint: the plan stage's, renamed into place, or sliced again from the plan."""
    from .prune.plan import Plan
    from .prune.slice import slice_checkpoint

    target = stages / "03-prune"
    pruned = _work(stages) / "pruned"
    remove_stale_temporaries(target)
    if pruned.is_dir():
        replace_dir(pruned, target)
    else:
        slice_checkpoint(recipe.model, Plan.load(stages / "02-plan" / "plan.json"), target, progress=progress)
    shutil.rmtree(_work(stages), ignore_errors=True)


def distill_config(recipe: CompressRecipe, stages: Path, progress: bool = True, num_processes: int = 1):
    """The :class:`~nemocompress.distill.DistillConfig` of the distill stage (resuming an unfinished run)."""
    from .distill import DistillConfig

    run = stages / "04-distill"
    steps = recipe.steps()
    return DistillConfig(
        teacher=recipe.model, student=str(stages / "03-prune"), data=recipe.data, output_dir=str(run),
        teacher_cache=recipe.teacher_cache, kd_loss="topk-kl" if recipe.teacher_cache else "kl",
        steps=steps, seq_len=recipe.seq_len, batch_size=recipe.batch_size // num_processes, lr=recipe.kd_lr,
        min_lr=min(recipe.kd_lr, 1e-5), eval_every=max(1, steps // 4), eval_samples=min(16, recipe.eval_samples),
        save_every=recipe.save_every, seed=recipe.seed, resume=run.exists(), progress=progress,
    )  # fmt: skip


def _distill(recipe: CompressRecipe, stages: Path, progress: bool) -> None:
    from .distill import distill

    state = _processes()
    run = stages / "04-distill"
    if recipe.steps() == 0:
        if state.is_main_process:
            with atomic_output_dir(run) as tmp:
                (tmp / DONE).write_text("skipped: --kd-steps 0\n")
        return
    config = distill_config(recipe, stages, progress, state.num_processes)  # every process, before any writes
    _barrier()
    distill(config)
    if state.is_main_process:
        (run / DONE).write_text("distilled\n")


def _eval(recipe: CompressRecipe, stages: Path, progress: bool) -> None:
    """Each model on the same held-out samples (KL to the parent for the students) and a generation."""
    from . import api
    from .distill.models import load_causal_lm, load_tokenizer
    from .evaluate import generate_text

    data = recipe.eval_data or recipe.data
    generations = {}
    with atomic_output_dir(stages / "05-eval") as tmp:
        for name, model_dir in _models(recipe, stages).items():
            reference = None if name == "parent" else recipe.model
            result = api.eval_model(
                model_dir, data, reference, samples=recipe.eval_samples, seq_len=recipe.seq_len,
                seed=recipe.seed, batch_size=recipe.batch_size, context_length=recipe.context_length,
                generation_tokens=recipe.generation_tokens, progress=progress,
            )  # fmt: skip
            result.save(tmp / f"{name}.json")
            model = load_causal_lm(model_dir)
            generations[name] = generate_text(
                model, load_tokenizer(model_dir), recipe.prompt, recipe.generation_tokens
            )
            del model
        (tmp / "generations.json").write_text(json.dumps(generations, indent=1))


def _models(recipe: CompressRecipe, stages: Path) -> dict[str, str]:
    models = {"parent": recipe.model, "pruned": str(stages / "03-prune")}
    final = stages / "04-distill" / "final"
    if final.is_dir():
        models["distilled"] = str(final)
    return models


# ---------------------------------------------------------------------- the final model and the report


def _finish(recipe: CompressRecipe, out: Path) -> dict:
    """``OUT/model`` (the last student) and ``report.png``, ``report.md``, ``report.json`` (last)."""
    from .distill.metrics import plot_loss_curve, read_metrics
    from .prune.slice import PLAN_FILE

    stages = out / "stages"
    models = _models(recipe, stages)
    final = Path(models["distilled" if "distilled" in models else "pruned"])
    if not (out / "model").is_dir():
        with atomic_output_dir(out / "model") as tmp:
            for item in final.iterdir():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            shutil.copy2(stages / "02-plan" / "plan.json", tmp / PLAN_FILE)  # as `prune` leaves it
    records = read_metrics(stages / "04-distill" / "metrics.jsonl")
    report = build_report(recipe, stages, records)
    plot_loss_curve(records, out / "report.png")
    (out / "report.md").write_text(report_markdown(report))
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def build_report(recipe: CompressRecipe, stages: Path, records: list[dict]) -> dict:
    """The run as plain data: the recipe, the plan, the distillation and each model's eval report."""
    evaluated = stages / "05-eval"
    generations = json.loads((evaluated / "generations.json").read_text())
    models = {}
    for name in generations:
        metrics = json.loads((evaluated / f"{name}.json").read_text())["metrics"]
        models[name] = {"metrics": metrics, "generation": generations[name]}
    plan = json.loads((stages / "02-plan" / "plan.json").read_text())
    train = [r for r in records if "tokens_per_s" in r]
    return {
        "format": "nemocompress-compress/1",
        "recipe": recipe.to_dict(),
        "config_updates": plan["config_updates"],
        "distill": {
            "steps": train[-1]["step"] if train else 0,
            "tokens": train[-1]["tokens"] if train else 0,
            "train_tokens_per_s": sum(r["tokens_per_s"] for r in train) / len(train) if train else None,
            "evals": [r for r in records if "eval/loss" in r],
        },
        "models": models,
    }


def report_markdown(report: dict) -> str:
    r, d = report["recipe"], report["distill"]
    target = (
        ", ".join(f"{t} {r[t]}" for t in _TARGETS if r.get(t) is not None) or f"sizes {r['export_config']}"
    )
    sizes = ", ".join(
        f"{k}={v}" for k, v in report["config_updates"].items() if not isinstance(v, list | dict)
    )
    speed = f" at {d['train_tokens_per_s']:,.0f} tokens/s" if d["train_tokens_per_s"] else ""
    lines = [
        f"# Compressed {r['model']}",
        "",
        f"Target: {target}. Plan: {sizes}.",
        f"Distillation: {d['steps']} steps, {d['tokens']:,} tokens{speed} (curve: report.png).",
        f"Held-out: {r['eval_samples']} x {r['seq_len']} tokens of {r['eval_data'] or r['data']}.",
        "",
        "```",
        summary_table(report),
        "```",
        "",
    ]
    return "\n".join(lines)
