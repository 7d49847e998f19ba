"""The search space of a budget search, with ModelOpt's names and defaults, and its enumeration.

space = SearchSpace.build(config, max_width_pruning=0.4, max_depth_pruning=0.2)
found = enumerate_candidates(space, budget)          # every candidate that meets the budget, closest first

Choices of a width (ModelOpt's ``mcore_minitron`` rule): every multiple of the axis's divisor up to its
size, plus the size itself, sorted; only the top ``1 - max_width_pruning`` share of that list is kept
(``choices[int((1 - f) * len(choices)):]``). Units kept per group (attention heads per KV group, Mamba
heads per group) make the divisor a multiple of the group count. A divisor that leaves a small model fewer
than ``MIN_CHOICES`` choices that its config accepts is halved until it does not, and the space says so.

Depth is chosen per layer kind (how many Mamba, attention, MLP, MoE layers stay; the layer importance
ranking says which): the total follows ModelOpt's ``num_layers`` rule with ``max_depth_pruning``, and every
kind keeps at least one layer (an attention-free hybrid cannot use its cache). Each candidate is costed
from the config alone by :class:`~nemocompress.prune.cost.CostModel`, vectorized over the whole product.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..arch import DEFAULT_DIVISORS, get_adapter
from ..errors import PlanError
from ..report import format_table
from .budget import Budget
from .cost import CostModel

__all__ = [
    "DEFAULT_DIVISORS",
    "MIN_CHOICES",
    "Candidate",
    "Enumeration",
    "SearchSpace",
    "enumerate_candidates",
]

MIN_CHOICES = 4
#: Candidates kept in memory after enumeration (closest to the budget first); the count of all is kept.
MAX_LISTED = 20000


def _top_share(choices: list[int], fraction: float) -> list[int]:
    """The top ``fraction`` of ``choices``; always at least the largest (``--max-*-pruning 0`` keeps the size)."""
    return sorted(choices)[min(int((1 - fraction) * len(choices)), len(choices) - 1) :]


def _multiples(size: int, step: int) -> list[int]:
    return sorted(set(range(step, size + 1, step)) | {size})


@dataclass
class SearchSpace:
    """Choices per ModelOpt export key (``num_layers``: totals), the layer kinds and their counts.

    ``notes``: what was changed and why (divisors scaled down for a small model, skipped keys).
    """

    config: object
    choices: dict[str, list[int]]
    layer_kinds: dict[str, int]
    num_layers: list[int]
    divisors: dict[str, int]
    max_width_pruning: float = 0.4
    max_depth_pruning: float = 0.2
    hparams_to_skip: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        config,
        max_width_pruning: float = 0.4,
        max_depth_pruning: float = 0.2,
        hparams_to_skip: Sequence[str] = (),
        divisors: Mapping[str, int] | None = None,
    ) -> SearchSpace:
        adapter = get_adapter(config)
        for name, value in (
            ("--max-width-pruning", max_width_pruning),
            ("--max-depth-pruning", max_depth_pruning),
        ):
            if not 0 <= value < 1:
                raise PlanError(f"{name} must lie in [0, 1), got {value}")
        keys = dict(adapter.export_keys)
        unknown = sorted(set(hparams_to_skip) - set(keys))
        if unknown:
            raise PlanError(
                f"--hparams-to-skip {', '.join(unknown)}: not a searchable size of this {config.model_type} model; "
                f"use {', '.join(keys)}"
            )
        bad = sorted(set(divisors or {}) - set(DEFAULT_DIVISORS))
        if bad:
            raise PlanError(f"--divisors {', '.join(bad)}: unknown key; use {', '.join(DEFAULT_DIVISORS)}")
        divs = {**DEFAULT_DIVISORS, **(divisors or {})}
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in divs.values()):
            raise PlanError(f"--divisors must map keys to positive integers, got {divisors}")
        axes = adapter.axes(config)
        choices, notes, used = {}, [], {}
        for key, kind in keys.items():
            instances = [a for a in axes if a.kind == kind]
            if kind == "depth" or not instances or key in hparams_to_skip:
                continue
            axis = instances[0]
            step = math.lcm(divs[key], axis.groups)
            valid = _accepted(adapter, config, kind)
            pick = _top_share([c for c in _multiples(axis.size, step) if valid(c)], max_width_pruning)
            divisor, first = divs[key], len(pick)
            while len(pick) < MIN_CHOICES and divisor > 1 and max_width_pruning > 0:
                divisor //= 2
                finer = _top_share(
                    [c for c in _multiples(axis.size, math.lcm(divisor, axis.groups)) if valid(c)],
                    max_width_pruning,
                )
                if len(finer) > len(pick):
                    pick = finer
            if divisor != divs[key]:
                notes.append(
                    f"{key} divisor {divs[key]} -> {divisor}: the model ({axis.size}) is too small for {divs[key]} "
                    f"({first} choice(s) within --max-width-pruning {max_width_pruning} that its config accepts)"
                )
            used[key] = divisor
            if len(pick) > 1:
                choices[key] = pick
        if hparams_to_skip:
            notes.append(f"not searched: {', '.join(hparams_to_skip)}")
        total = adapter.num_layers(config)
        kinds = adapter.layer_kinds(config)
        counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
        if "num_layers" in hparams_to_skip or "num_layers" not in keys:
            num_layers = [total]
        else:
            num_layers, divisor = (
                _top_share(_multiples(total, divs["num_layers"]), max_depth_pruning),
                divs["num_layers"],
            )
            while len(num_layers) < MIN_CHOICES and divisor > 1 and max_depth_pruning > 0:
                divisor //= 2
                num_layers = _top_share(_multiples(total, divisor), max_depth_pruning)
            if divisor != divs["num_layers"]:
                notes.append(
                    f"num_layers divisor {divs['num_layers']} -> {divisor}: the model has {total} layers"
                )
            used["num_layers"] = divisor
        if not choices and len(num_layers) == 1:
            raise PlanError(
                "no size is left to search (every axis is skipped or has one choice); remove names from "
                "--hparams-to-skip or raise --max-width-pruning / --max-depth-pruning"
            )
        return cls(
            config, choices, counts, num_layers, used, max_width_pruning, max_depth_pruning,
            tuple(hparams_to_skip), notes,
        )  # fmt: skip

    def depth_choices(self) -> list[dict[str, int]]:
        """Every way to keep layers per kind with a total in :attr:`num_layers` (each kind keeps >= 1)."""
        lowest = min(self.num_layers)
        total = sum(self.layer_kinds.values())
        ranges = [range(max(1, n - (total - lowest)), n + 1) for n in self.layer_kinds.values()]
        allowed = set(self.num_layers)
        return [
            dict(zip(self.layer_kinds, combo))
            for combo in itertools.product(*ranges)
            if sum(combo) in allowed
        ]

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.choices.values()) * len(self.depth_choices())

    def table(self) -> str:
        rows = [[k, len(v), _short(v)] for k, v in self.choices.items()]
        rows.append(["num_layers", len(self.num_layers), _short(self.num_layers)])
        if len(self.layer_kinds) > 1:
            rows.append(
                [
                    "layers per kind",
                    len(self.depth_choices()),
                    ", ".join(f"{k} {n}" for k, n in self.layer_kinds.items()),
                ]
            )
        return format_table(rows, ["size", "choices", "values"])


def _short(values: list[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 8 else f"{values[0]}, {values[1]}, ... {values[-1]}"


def _accepted(adapter, config, kind: str):
    """Whether the family's config accepts ``kind`` at a size with every other axis as it is."""
    return lambda count: bool(np.all(adapter.valid_sizes(config, {kind: np.asarray(count)})))


@dataclass(frozen=True)
class Candidate:
    """One architecture: ModelOpt export sizes, layers kept per kind, and its costs by the cost model."""

    export_config: dict[str, int]
    layers: dict[str, int]
    params: int
    active_params: int
    memory_bytes: int
    kv_cache_bytes: int
    state_bytes: int
    latency_ms: float

    @property
    def name(self) -> str:
        parts = [f"{k}={v}" for k, v in self.export_config.items() if k != "num_layers"]
        return " ".join(parts + [f"layers={'/'.join(str(n) for n in self.layers.values())}"])

    def metrics(self) -> dict[str, float]:
        return {
            "params": self.params,
            "active_params": self.active_params,
            "memory": self.memory_bytes,
            "latency": self.latency_ms,
        }

    def to_dict(self) -> dict:
        return {
            "export_config": self.export_config,
            "layers": self.layers,
            "params": self.params,
            "active_params": self.active_params,
            "memory_bytes": self.memory_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "state_bytes": self.state_bytes,
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Candidate:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass
class Enumeration:
    """The outcome of :func:`enumerate_candidates`: fitting candidates closest-first, and counts."""

    candidates: list[Candidate]
    total: int
    fitting: int
    rejected_by_config: int
    seconds: float = 0.0


def _costs(space: SearchSpace, budget: Budget):
    """Cost arrays over the product of width choices [W] x depth choices [D] (shape [W, D])."""
    adapter = get_adapter(space.config)
    kinds = {k: adapter.export_keys[k] for k in space.choices}
    grids = np.meshgrid(*[np.asarray(v) for v in space.choices.values()], indexing="ij") if kinds else []
    widths = {kind: g.reshape(-1, 1) for kind, g in zip(kinds.values(), grids)}
    depth = space.depth_choices()
    layers = {k: np.asarray([d[k] for d in depth]).reshape(1, -1) for k in space.layer_kinds}
    cost = CostModel(space.config)(
        widths, layers, budget.context_length, budget.batch_size, budget.torch_dtype
    )
    shape = (len(next(iter(widths.values()))) if widths else 1, len(depth))
    cost = {k: np.broadcast_to(v, shape) for k, v in cost.items()}
    cost["latency"] = budget.estimate_latency(cost)
    valid = np.broadcast_to(adapter.valid_sizes(space.config, widths), shape)
    return widths, depth, cost, valid, kinds


def enumerate_candidates(space: SearchSpace, budget: Budget, limit: int = MAX_LISTED) -> Enumeration:
    """Every candidate of ``space`` that the family's config accepts and that meets every target of
    ``budget`` (latency by the roofline estimate unless the budget measures it), closest to the budget first:
    sorted by the first targeted metric of :attr:`Budget.targets` descending, then the next ones."""
    import time

    began = time.perf_counter()
    widths, depth, cost, valid, kinds = _costs(space, budget)
    metrics = budget.metrics(cost)
    fits = valid & budget.fits(metrics)
    w_idx, d_idx = np.nonzero(fits)
    order_keys = [metrics[m][w_idx, d_idx] for m in reversed(budget.targets) if m in metrics]
    order = np.lexsort([-k for k in order_keys]) if order_keys else np.arange(len(w_idx))
    order = order[:limit]
    full_layers = sum(space.layer_kinds.values())
    candidates = []
    for i in order:
        w, d = w_idx[i], d_idx[i]
        export = {key: int(widths[kind][w, 0]) for key, kind in kinds.items()}
        layers = depth[d]
        if sum(layers.values()) != full_layers:
            export["num_layers"] = sum(layers.values())
        candidates.append(
            Candidate(
                export, dict(layers), int(cost["params"][w, d]), int(cost["active_params"][w, d]),
                int(cost["memory"][w, d]), int(cost["kv_cache_bytes"][w, d]), int(cost["state_bytes"][w, d]),
                float(cost["latency"][w, d]),
            )
        )  # fmt: skip
    return Enumeration(
        candidates, int(valid.size), int(fits.sum()), int((~valid).sum()), time.perf_counter() - began
    )


def nearest_reachable(space: SearchSpace, budget: Budget) -> str | None:
    """When nothing fits: the binding target and the nearest value the space reaches, as an error message."""
    _, _, cost, valid, _ = _costs(space, budget)
    metrics = budget.metrics(cost)
    bounds = f"--max-width-pruning {space.max_width_pruning} / --max-depth-pruning {space.max_depth_pruning}"
    for metric in budget.targets:
        if metric not in metrics:
            continue
        values = np.where(valid, metrics[metric], np.inf)
        smallest = float(values.min())
        if smallest > budget.limit(metric):
            what = {
                "params": "params",
                "active_params": "active params",
                "memory": "memory",
                "latency": "latency",
            }
            return (
                f"unreachable target: the smallest candidate under {bounds} has "
                f"{budget.describe(metric, smallest)} {what[metric]} (target {budget.describe(metric, budget.limit(metric))}); "
                f"raise --max-width-pruning / --max-depth-pruning or {budget.flag(metric)}"
            )
    alone = [m for m in budget.targets if m in metrics]
    return (
        f"contradictory targets: each of {', '.join(budget.flag(m) for m in alone)} is reachable alone, but no "
        f"candidate under {bounds} meets them together; relax one of them"
    )
