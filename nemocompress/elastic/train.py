"""Elastic training: one parent, nested submodels for several budgets, routers that choose them.

result = train_elastic(ElasticConfig(parent="p", budgets=["0.5", "0.75"], data="text/", output_dir="run"),
                       scores=lambda: (unit_scores, layer_scores))
print(result.table())

The recipe (Nemotron Elastic, METHODS.md section 5): importance orders once (``scores``, e.g. from
:func:`nemocompress.api.importance`), an :class:`~nemocompress.elastic.space.ElasticSpace` over the
search's size choices, routers trained with the parent by the distillation loop
(:func:`~nemocompress.distill.distill` with an :class:`~nemocompress.elastic.model.ElasticModel` extension)
against the frozen original parent, in two stages: stage 1 (``stage1_fraction`` of the steps) on
``stage1_seq_len``-token sequences with budgets drawn uniformly, stage 2 on ``seq_len`` tokens with
``budget_weights`` (largest budget first; 0.5 / 0.3 / 0.2 for three budgets). The full model is always a
budget. Each stage is a distillation run (its own learning-rate warmup and cosine, checkpoints, bitwise
resume); the Gumbel temperature and logit scale run over the whole run.

The RUN directory, when complete:

- the trained parent as a stock checkpoint (``from_pretrained(RUN)`` loads it: the full model deploys as is);
- ``elastic/elastic.json``: budgets, chosen architectures and their costs, the space (size choices, the
  rank of every unit, the layer order), the cost settings; ``elastic/routers.safetensors``;
  ``elastic/elastic_config.yaml``; ``elastic/training/stage{1,2}/`` (metrics, loss curves); and
  ``elastic/budgets.png`` (held-out KL to the parent per budget over training).

While training RUN holds only ``elastic/``; the model files and ``elastic.json`` are written last.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..checkpoint import atomic_file, check_output_dir, load_config
from ..distill import DistillConfig, distill
from ..distill.config import DistillError
from ..distill.metrics import read_metrics
from ..errors import NemocompressError, OutputError
from ..prune.budget import Budget, parse_count
from ..report import format_table, human
from ..settings import read_settings
from .model import ElasticModel, Schedule, budget_probabilities
from .quant import check_quant
from .space import ElasticSpace

__all__ = [
    "ELASTIC_DIR",
    "ElasticConfig",
    "ElasticError",
    "ElasticResult",
    "resolve_budgets",
    "train_elastic",
]

ELASTIC_DIR = "elastic"
STATE = "elastic.json"
ROUTERS = "routers.safetensors"
QUANTIZERS = "quantizers.safetensors"
SPACE = "space.json"
CONFIG_FILE = "elastic_config.yaml"
STATE_VERSION = 1
METRICS = {"params": "params", "active-params": "active_params", "memory": "memory", "latency": "latency"}
_GIB = 2**30


class ElasticError(NemocompressError, ValueError):
    """Bad elastic settings, budgets or RUN directory."""


@dataclass
class ElasticConfig:
    """Everything an elastic run needs; a field with ``help`` is a flag of ``nemocompress elastic train``.

    ``budgets``: fractions of the parent's ``budget_metric`` in (0, 1], or absolute values (params with
    suffixes, 6B / 900M; memory in GiB; latency in ms). Memory and latency are taken at ``context_length``
    x ``memory_batch_size`` tokens in ``dtype`` (latency: the roofline estimate on ``device_profile``).
    ``tolerance``: how near a budget some architecture must come (relative), else the budget is refused.
    """

    parent: str | None = field(default=None, metadata={"help": "parent checkpoint directory"})
    budgets: list[str] | None = field(
        default=None, metadata={"help": "comma list, e.g. 0.5,0.75,1.0 (fractions) or 60M,90M"}
    )
    data: str | None = field(default=None, metadata={"help": "text file, folder or .jsonl (train split)"})
    output_dir: str | None = field(
        default=None, metadata={"help": "the RUN directory", "flags": ("-o", "--output")}
    )
    budget_metric: str = field(
        default="params", metadata={"help": "what a budget limits", "choices": tuple(METRICS)}
    )
    steps: int = field(default=200, metadata={"help": "optimizer steps, both stages"})
    seq_len: int = field(default=512, metadata={"help": "tokens per sequence in stage 2"})
    stage1_seq_len: int | None = field(
        default=None, metadata={"help": "tokens per sequence in stage 1", "default_help": "--seq-len / 4"}
    )
    stage1_fraction: float = field(default=0.5, metadata={"help": "share of the steps in stage 1"})
    budget_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "stage-2 budget weights, largest budget first",
            "default_help": "0.5,0.3,0.2 for 3",
        },
    )
    batch_size: int = field(default=4, metadata={"help": "sequences per micro-batch and process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate of the parent"})
    min_lr: float = field(default=1e-5, metadata={"help": "end of each stage's cosine decay"})
    warmup_steps: int | None = field(
        default=None, metadata={"help": "warmup steps per stage", "default_help": "5% of the stage"}
    )
    kd_loss: str = field(default="kl", metadata={"help": "logit divergence to the frozen parent"})
    cost_weight: float = field(default=1.0, metadata={"help": "lambda of the router's cost term"})
    router_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the routers"})
    tolerance: float = field(default=0.05, metadata={"help": "how near a budget an architecture must come"})
    temperature: tuple[float, float] = (1.0, 0.05)
    logit_scale: tuple[float, float] = (1.0, 10.0)
    max_width_pruning: float = field(default=0.6, metadata={"help": "largest share of a width removed"})
    max_depth_pruning: float = field(default=0.5, metadata={"help": "largest share of the layers removed"})
    hparams_to_skip: list[str] = field(default_factory=list)
    divisors: dict[str, int] | None = None
    context_length: int = field(default=4096, metadata={"help": "tokens of memory and latency budgets"})
    memory_batch_size: int = field(default=1, metadata={"help": "sequences of memory and latency budgets"})
    dtype: str = field(default="bfloat16", metadata={"help": "dtype of memory and latency budgets"})
    device_profile: str = field(default="h100", metadata={"help": "device of latency budgets"})
    quant: str | None = field(
        default=None,
        metadata={"help": "train with fake quantization (ModelOpt): fp8 (CPU too) or nvfp4 (GPU)",
                  "choices": ("fp8", "nvfp4"), "default_help": "none"},
    )  # fmt: skip
    eval_every: int = field(default=50, metadata={"help": "held-out evaluation period (every budget)"})
    eval_samples: int = field(default=8, metadata={"help": "held-out sequences evaluated"})
    save_every: int = field(default=50, metadata={"help": "checkpoint period in steps, 0: none"})
    seed: int = field(default=0, metadata={"help": "data split and order, budget and Gumbel draws"})
    mixed_precision: str = "auto"
    resume: bool = field(default=False, metadata={"help": "continue the RUN"})
    overwrite: bool = field(default=False, metadata={"help": "delete the RUN and start over"})
    progress: bool = field(default=True, metadata={"help": "no progress bars"})

    def __post_init__(self):
        self.budgets = self.budgets or []
        if isinstance(self.budgets, str):
            self.budgets = [b for b in self.budgets.split(",") if b.strip()]
        self.budgets = [str(b).strip() for b in self.budgets]
        if isinstance(self.budget_weights, str):
            self.budget_weights = [float(w) for w in self.budget_weights.split(",")]
        for name in ("parent", "data", "output_dir"):
            if getattr(self, name) is None:
                raise ElasticError(
                    f"elastic training needs --{name.replace('_', '-').replace('output-dir', 'output')}"
                )
            setattr(self, name, str(getattr(self, name)))
        if not self.budgets:
            raise ElasticError("give --budgets, e.g. 0.5,0.75,1.0")
        if self.budget_metric not in METRICS:
            raise ElasticError(f"--budget-metric {self.budget_metric!r}: use one of {', '.join(METRICS)}")
        if not 0 <= self.stage1_fraction <= 1:
            raise ElasticError(f"--stage1-fraction must lie in [0, 1], got {self.stage1_fraction}")
        if self.cost_weight < 0 or not 0 < self.tolerance < 1:
            raise ElasticError("--cost-weight must be >= 0 and --tolerance in (0, 1)")
        if self.budget_weights is not None and any(w < 0 for w in self.budget_weights):
            raise ElasticError(f"--budget-weights must not be negative, got {self.budget_weights}")
        for name in ("steps", "seq_len", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ElasticError(f"--{name.replace('_', '-')} must be a positive integer")
        self.temperature, self.logit_scale = tuple(self.temperature), tuple(self.logit_scale)

    @property
    def first_seq_len(self) -> int:
        return self.stage1_seq_len or max(8, self.seq_len // 4)

    def cost_settings(self) -> Budget:
        return Budget(context_length=self.context_length, batch_size=self.memory_batch_size, dtype=self.dtype,
                      device=self.device_profile)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["temperature"], values["logit_scale"] = list(self.temperature), list(self.logit_scale)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **overrides) -> ElasticConfig:
        """Keys may use dashes, as the flags do; non-None overrides win."""
        merged = {str(k).replace("-", "_"): v for k, v in values.items()}
        merged.update({k.replace("-", "_"): v for k, v in overrides.items() if v is not None})
        if "output" in merged:
            merged["output_dir"] = merged.pop("output")
        unknown = sorted(set(merged) - {f.name for f in fields(cls)})
        if unknown:
            raise ElasticError(f"unknown elastic setting(s) {', '.join(unknown)}")
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> ElasticConfig:
        return cls.from_dict(read_settings(path, ElasticError), **overrides)


# ---------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class ResolvedBudget:
    label: str
    target: float  # in the metric's unit (params; memory bytes; latency ms)


def _describe(metric: str, value: float) -> str:
    if metric in ("params", "active_params"):
        return f"{human(value)} {'active params' if metric == 'active_params' else 'params'}"
    if metric == "memory":
        return f"{value / _GIB:.4g} GiB"
    return f"{value:.4g} ms"


def resolve_budgets(values: list[str], metric: str, parent_value: float) -> list[ResolvedBudget]:
    """Budgets as targets, smallest first, the full model included (as ``1.0``). Fractions in (0, 1];
    larger numbers are absolute (suffixes for counts, GiB for memory, ms for latency)."""
    resolved = []
    for raw in values:
        try:
            number = float(raw)
        except ValueError:
            number = None
        if number is not None and number <= 0:
            raise ElasticError(f"budget {raw}: budgets are fractions in (0, 1] or absolute values above 1")
        if number is not None and number <= 1:
            target = number * parent_value
        elif metric in ("params", "active_params"):
            if number is not None and number < 1000:
                raise ElasticError(
                    f"budget {raw}: a fraction lies in (0, 1]; write an absolute {metric.replace('_', ' ')} "
                    "budget as a count such as 60M"
                )
            target = float(parse_count(raw, f"budget {raw}"))
        elif number is not None:
            target = number * _GIB if metric == "memory" else number
        else:
            raise ElasticError(f"budget {raw}: write a fraction such as 0.5 or a number in the metric's unit")
        if target > parent_value * (1 + 1e-9):
            raise ElasticError(
                f"budget {raw} ({_describe(metric, target)}) is above the parent ({_describe(metric, parent_value)}); "
                "budgets shrink the parent"
            )
        resolved.append(ResolvedBudget(raw, min(target, parent_value)))
    targets = [round(b.target, 6) for b in resolved]
    duplicates = sorted({b.label for b, t in zip(resolved, targets) if targets.count(t) > 1})
    if duplicates:
        raise ElasticError(f"budgets {', '.join(duplicates)} are the same budget; give each size once")
    if not any(abs(b.target - parent_value) <= 1e-9 * parent_value for b in resolved):
        resolved.append(ResolvedBudget("1.0", parent_value))
    return sorted(resolved, key=lambda b: b.target)


def check_reachable(
    budgets, table: np.ndarray, valid: np.ndarray, tolerance: float, metric: str, bounds: str
) -> None:
    """Refuse a budget that no architecture of the space comes within ``tolerance`` of."""
    values = np.where(valid, table, np.nan)
    for b in budgets:
        error = np.abs(values - b.target) / b.target
        best = np.nanargmin(error)
        if error.flat[best] > tolerance:
            nearest = values.flat[best]
            raise ElasticError(
                f"budget {b.label} ({_describe(metric, b.target)}) is out of reach: the nearest architecture "
                f"under {bounds} has {_describe(metric, nearest)}; raise --max-width-pruning / "
                f"--max-depth-pruning or change the budget"
            )


# ---------------------------------------------------------------------- the run


@dataclass
class ElasticResult:
    run_dir: Path
    state: dict
    records: list[dict] = field(default_factory=list)

    def table(self) -> str:
        return budgets_table(self.state)


def budgets_table(state: Mapping) -> str:
    """One row per trained budget: its architecture, cost, distance to the target, held-out loss and KL."""
    metric = state["metric"]
    rows = []
    for b in state["budgets"]:
        arch = ", ".join(f"{k} {v}" for k, v in b["sizes"].items())
        ev = b.get("eval", {})
        rows.append([
            b["label"], _describe(metric, b["target"]), arch, human(b["params"]), f"{b['memory'] / _GIB:.3g} GiB",
            f"{b['error']:+.1%}", _fmt(ev.get("loss")), _fmt(ev.get("kl")),
        ])  # fmt: skip
    return format_table(
        rows, ["budget", "target", "architecture", "params", "memory", "vs target", "held-out loss", "KL"]
    )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _stage_plan(config: ElasticConfig, num_budgets: int) -> list[tuple[str, int, int, tuple[float, ...]]]:
    """(name, steps, seq_len, budget weights smallest-first) of the stages that have steps."""
    first = round(config.stage1_fraction * config.steps)
    weights = config.budget_weights
    if weights is None:
        weights = [0.5, 0.3, 0.2] if num_budgets == 3 else list(range(num_budgets, 0, -1))
    if len(weights) != num_budgets:
        raise ElasticError(
            f"--budget-weights has {len(weights)} values for {num_budgets} budgets (the full model included)"
        )
    stages = [("stage1", first, config.first_seq_len, budget_probabilities(num_budgets, None)),
              ("stage2", config.steps - first, config.seq_len, budget_probabilities(num_budgets, weights[::-1]))]  # fmt: skip
    return [s for s in stages if s[1] > 0]


def _fingerprint(config) -> dict:
    return {"model_type": config.model_type, "config": {k: v for k, v in config.to_dict().items()
            if isinstance(v, int | float | str | bool) and not k.startswith("_") and k != "transformers_version"}}  # fmt: skip


def train_elastic(
    config: ElasticConfig,
    scores: Callable[[], tuple[Mapping[str, torch.Tensor], torch.Tensor | None]],
) -> ElasticResult:
    """Train the elastic parent of ``config`` (module docstring). ``scores()`` -> (unit scores per axis,
    layer scores or None), called only when the RUN has no space yet. Bad input raises before writing."""
    from accelerate import PartialState
    from safetensors.torch import load_file

    state_proc = PartialState(cpu=not torch.cuda.is_available())  # on CPU under torchrun: gloo
    run = Path(config.output_dir)
    edir = run / ELASTIC_DIR
    parent_config = load_config(config.parent)
    check_output_dir(run, overwrite=True, inputs=(config.parent, config.data))
    if config.resume and not config.overwrite and (edir / CONFIG_FILE).is_file():
        _check_same_run(edir, config, parent_config)
        if (edir / STATE).is_file():
            return load_result(run)
    if run.exists() and not (config.resume or config.overwrite):
        raise OutputError(f"{run} already exists: pass --resume to continue it, --overwrite to start over")
    check_quant(config.quant)
    metric = METRICS[config.budget_metric]
    settings = config.cost_settings()
    probe = _random_space(parent_config, config)  # sizes and costs need no scores: check budgets first
    table, valid = probe.cost_tables(settings)
    parent_value = float(table[metric][probe.full])
    budgets = resolve_budgets(config.budgets, metric, parent_value)
    check_reachable(budgets, table[metric], valid, config.tolerance, metric, _bounds(config))
    saved_space = edir / "training" / SPACE
    if saved_space.is_file() and config.resume and not config.overwrite:
        space = ElasticSpace.from_dict(parent_config, json.loads(saved_space.read_text()))
    else:
        space = _build_space(parent_config, config, *scores())
    table, valid = space.cost_tables(settings)  # depth costs follow the real layer order
    check_reachable(budgets, table[metric], valid, config.tolerance, metric, _bounds(config))
    stages = _stage_plan(config, len(budgets))
    state_proc.wait_for_everyone()  # every process has checked the RUN before the main one writes to it

    if state_proc.is_main_process:
        if config.overwrite and run.exists():
            shutil.rmtree(run)
        (edir / "training").mkdir(parents=True, exist_ok=True)
        with atomic_file(edir / CONFIG_FILE) as tmp:
            tmp.write_text(
                yaml.safe_dump({**config.to_dict(), "resume": False, "overwrite": False}, sort_keys=False)
            )
        with atomic_file(edir / "training" / "parent.json") as tmp:
            tmp.write_text(json.dumps(_fingerprint(parent_config), indent=1))
        if not saved_space.is_file():
            with atomic_file(saved_space) as tmp:
                tmp.write_text(json.dumps(space.to_dict()))
    state_proc.wait_for_everyone()

    elastic = ElasticModel(space, [b.target for b in budgets], table[metric], valid,
                           Schedule(config.steps, seed=config.seed), config.cost_weight, [b.label for b in budgets],
                           config.router_lr / config.lr, tolerance=config.tolerance, quant=config.quant)  # fmt: skip
    student, offset, records = config.parent, 0, []
    for name, steps, seq_len, weights in stages:
        out = edir / "training" / name
        routers = out / ROUTERS
        elastic.schedule = Schedule(
            config.steps, offset, weights, config.seed, config.temperature, config.logit_scale
        )
        scales = out / QUANTIZERS
        if routers.is_file() and (out / "final").is_dir():  # a stage finished before an interruption
            elastic.routers.load_state_dict(load_file(routers))
            elastic.quant_state = load_file(scales) if config.quant else None
        else:
            distill(_distill_config(config, student, out, steps, seq_len), elastic, end_processes=False)
            if state_proc.is_main_process:
                if config.quant:  # before the routers: their file marks the stage as done
                    _save_tensors(scales, elastic.quant_state)
                _save_tensors(routers, elastic.routers.state_dict())
            state_proc.wait_for_everyone()
        records += [{**r, "stage": name} for r in read_metrics(out / "metrics.jsonl")]
        student, offset = str(out / "final"), offset + steps
    elastic.detach()
    state = _final_state(elastic, budgets, config, metric, table, records, parent_config)
    if state_proc.is_main_process:
        _write_run(run, Path(student), elastic, state, records)
    state_proc.wait_for_everyone()
    return ElasticResult(run, state, records)


def _bounds(config: ElasticConfig) -> str:
    return f"--max-width-pruning {config.max_width_pruning} / --max-depth-pruning {config.max_depth_pruning}"


def _build_space(parent_config, config: ElasticConfig, unit, layers) -> ElasticSpace:
    return ElasticSpace.build(parent_config, unit, layers, config.max_width_pruning, config.max_depth_pruning,
                              config.hparams_to_skip, config.divisors)  # fmt: skip


def _random_space(parent_config, config: ElasticConfig) -> ElasticSpace:
    from ..arch import get_adapter

    adapter = get_adapter(parent_config)
    unit = {a.name: torch.arange(a.size, 0, -1).float() for a in adapter.axes(parent_config)}
    return _build_space(
        parent_config, config, unit, torch.arange(adapter.num_layers(parent_config), 0, -1).float()
    )


def _check_same_run(edir: Path, config: ElasticConfig, parent_config) -> None:
    parent = edir / "training" / "parent.json"
    if parent.is_file() and json.loads(parent.read_text()) != _fingerprint(parent_config):
        raise ElasticError(f"{edir.parent} is an elastic run of another model than {config.parent}")
    before = yaml.safe_load((edir / CONFIG_FILE).read_text()) or {}
    keep = ("budgets", "budget_metric", "steps", "seq_len", "stage1_seq_len", "stage1_fraction", "budget_weights",
            "batch_size", "grad_accum", "lr", "router_lr", "min_lr", "kd_loss", "cost_weight", "seed", "max_width_pruning",
            "max_depth_pruning", "context_length", "memory_batch_size", "dtype", "device_profile", "quant")  # fmt: skip
    now = config.to_dict()
    changed = [f"{k} {before.get(k)!r} -> {now[k]!r}" for k in keep if before.get(k) != now[k]]
    if changed:
        raise ElasticError(f"settings differ from the RUN's: {'; '.join(changed)}; resume with the same ones")


def _distill_config(
    config: ElasticConfig, student: str, out: Path, steps: int, seq_len: int
) -> DistillConfig:
    try:
        return DistillConfig(
            teacher=config.parent, student=student, data=config.data, output_dir=str(out), steps=steps,
            seq_len=seq_len, batch_size=config.batch_size, grad_accum=config.grad_accum, lr=config.lr,
            min_lr=config.min_lr, warmup_steps=config.warmup_steps, kd_loss=config.kd_loss,
            eval_every=config.eval_every, eval_samples=config.eval_samples, save_every=config.save_every,
            seed=config.seed, mixed_precision=config.mixed_precision, progress=config.progress,
            resume=out.exists(),
        )  # fmt: skip
    except DistillError as e:
        raise ElasticError(str(e)) from None


def _final_state(elastic: ElasticModel, budgets, config, metric, tables, records, parent_config) -> dict:
    """The RUN's elastic.json: per budget its choice, sizes and costs (``tables``: every metric of every
    combination), the routers' own choice, the last held-out evaluation."""
    chosen, changed = elastic.architectures()
    settings = config.cost_settings()
    table = tables[metric]
    last = [r for r in records if any(k.startswith("eval/loss@") for k in r)]
    rows = []
    for b, (budget, choice) in enumerate(zip(budgets, chosen)):
        value, own = float(table[choice]), elastic.most_probable(b)
        ev = {}
        if last:
            r = last[-1]
            ev = {k: r.get(f"eval/{k}@{budget.label}") for k in ("loss", "kl", "bpb", "top1")}
        rows.append({
            "label": budget.label, "target": budget.target, "choice": list(choice),
            "sizes": elastic.space.export_sizes(choice), "layers": elastic.space.kept_layers(choice),
            "value": value, "error": value / budget.target - 1,
            "params": int(tables["params"][choice]), "active_params": int(tables["active_params"][choice]),
            "memory": int(tables["memory"][choice]), "latency_ms": float(tables["latency"][choice]),
            "from_router": b not in changed, "router_choice": list(own),
            "router_error": float(table[own]) / budget.target - 1, "eval": ev,
        })  # fmt: skip
    return {
        "version": STATE_VERSION, "parent": _fingerprint(parent_config), "metric": metric,
        "cost_settings": settings.to_dict(), "tolerance": config.tolerance, "budgets": rows,
        "space": elastic.space.to_dict(), "steps": config.steps, "quant": config.quant,
    }  # fmt: skip


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)


def _write_run(run: Path, final: Path, elastic: ElasticModel, state: dict, records: list[dict]) -> None:

    from ..checkpoint import replace_dir

    edir = run / ELASTIC_DIR
    staging = run / ".model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(final, staging)
    for p in staging.iterdir():  # into RUN: the trained parent at the top level
        target = run / p.name
        if target.is_dir():
            replace_dir(p, target)
        else:
            p.replace(target)
    staging.rmdir()
    _save_tensors(edir / ROUTERS, elastic.routers.state_dict())
    if elastic.quant is not None:
        _save_tensors(edir / QUANTIZERS, elastic.quant_state)
    _plot_budgets(records, state, edir / "budgets.png")
    for stage in (edir / "training").glob("stage*"):  # the parent is in RUN now; optimizer states go
        shutil.rmtree(stage / "checkpoints", ignore_errors=True)
        shutil.rmtree(stage / "final", ignore_errors=True)
    with atomic_file(edir / STATE) as tmp:  # last: its presence marks a complete RUN
        tmp.write_text(json.dumps(state, indent=1))


def _plot_budgets(records: list[dict], state: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    offsets, total = {}, 0
    for r in records:
        offsets.setdefault(r["stage"], total)
        if "tokens_per_s" in r:
            total = max(total, offsets[r["stage"]] + r["step"])
    for b in state["budgets"]:
        key = f"eval/kl@{b['label']}"
        points = [(offsets[r["stage"]] + r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"budget {b['label']} ({human(b['params'])} params)")
    ax.set_xlabel("step (both stages)")
    ax.set_ylabel("held-out KL to the parent (nats / token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_state(run: str | Path) -> dict:
    path = Path(run) / ELASTIC_DIR / STATE
    if not path.is_file():
        partial = (Path(run) / ELASTIC_DIR).is_dir()
        why = "its training has not finished: continue it with `elastic train ... --resume`" if partial else (
            "it is not an elastic run (no elastic/elastic.json)")  # fmt: skip
        raise ElasticError(f"{run}: {why}")
    state = json.loads(path.read_text())
    if state.get("version") != STATE_VERSION:
        raise ElasticError(
            f"{path}: version {state.get('version')} is not supported (this nemocompress reads {STATE_VERSION})"
        )
    return state


def load_result(run: str | Path) -> ElasticResult:
    run = Path(run)
    records = []
    for stage in sorted((run / ELASTIC_DIR / "training").glob("stage*")):
        records += [{**r, "stage": stage.name} for r in read_metrics(stage / "metrics.jsonl")]
    return ElasticResult(run, load_state(run), records)
