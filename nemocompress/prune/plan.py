"""Pruning plans: plain, versioned data (kept indices per axis + config changes), validated against a model."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..arch import Adapter, Axis, get_adapter
from ..errors import PlanError

__all__ = ["PLAN_VERSION", "Plan", "make_plan", "keep_all_plan"]

PLAN_VERSION = 1


@dataclass
class Plan:
    """What to keep: for each axis instance the sorted kept indices, and the config fields that change.

    An axis absent from ``kept`` keeps all its units. ``source`` records the sizes of the model the plan
    was made for, so that applying it to another model is refused.
    """

    model_type: str
    kept: dict[str, list[int]]
    config_updates: dict
    source: dict = field(default_factory=dict)
    version: int = PLAN_VERSION

    def kept_tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.long) for k, v in self.kept.items()}

    def kept_layers(self, num_layers: int) -> list[int]:
        return list(self.kept.get("layers", range(num_layers)))

    def apply_config(self, config):
        """A copy of ``config`` with the plan's changes (the config of the sliced model)."""
        self.check(config)
        new = copy.deepcopy(config)
        for key, value in self.config_updates.items():
            setattr(new, key, value)
        return type(new).from_dict(new.to_dict())

    def check(self, config) -> None:
        """Refuse a plan made for a different model."""
        if config.model_type != self.model_type:
            raise PlanError(f"plan is for model_type {self.model_type!r}, the model is {config.model_type!r}")
        sizes = _axis_sizes(get_adapter(config).axes(config))
        if self.source and self.source != sizes:
            diff = sorted(k for k in set(sizes) | set(self.source) if sizes.get(k) != self.source.get(k))
            raise PlanError(
                f"plan was made for a model with other sizes (axes {', '.join(diff[:5])}); make a new plan"
            )

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "model_type": self.model_type,
            "kept": self.kept,
            "config_updates": self.config_updates,
            "source": self.source,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, data: Mapping) -> Plan:
        if data.get("version") != PLAN_VERSION:
            raise PlanError(
                f"plan version {data.get('version')} is not supported (this nemocompress reads {PLAN_VERSION})"
            )
        return cls(
            data["model_type"], dict(data["kept"]), dict(data["config_updates"]), dict(data.get("source", {}))
        )

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise PlanError(f"cannot read plan {path}: {e}") from None


def _axis_sizes(axes: Sequence[Axis]) -> dict[str, int]:
    return {a.name: a.size for a in axes}


def _validate_kept(axis: Axis, kept: Sequence[int], strict_groups: bool = True) -> list[int]:
    kept = [int(i) for i in kept]
    if not kept:
        raise PlanError(f"axis {axis.name} keeps no unit; keep at least one per group")
    if sorted(set(kept)) != kept:
        raise PlanError(f"axis {axis.name}: kept indices must be sorted and unique")
    if kept[0] < 0 or kept[-1] >= axis.size:
        raise PlanError(f"axis {axis.name}: kept indices must lie in [0, {axis.size})")
    counts = [sum(1 for i in kept if i // axis.group_size == g) for g in range(axis.groups)]
    if strict_groups and len(set(counts)) != 1:
        raise PlanError(
            f"axis {axis.name}: units form {axis.groups} groups of {axis.group_size} and every group must keep the "
            f"same count (got {counts}); choose a count that is a multiple of {axis.groups}"
        )
    return kept


def make_plan(
    config, kept: Mapping[str, Sequence[int]], adapter: Adapter | None = None, strict_groups: bool = True
) -> Plan:
    """Validate kept indices against ``config`` and derive the new config.

    Widths must end up uniform per axis kind (stock configs carry one value per field): a plan that keeps
    40 neurons in one MLP layer and 48 in another is an error, not a silent reshuffle.
    ``strict_groups=False`` lets units change group (for the naive-ranking ablation only: the sliced model
    then computes something else, and masking no longer equals slicing).
    """
    adapter = adapter or get_adapter(config)
    axes = adapter.axis_map(config)
    unknown = sorted(set(kept) - set(axes))
    if unknown:
        raise PlanError(f"unknown axes {unknown[:5]}; this model's axes are e.g. {sorted(axes)[:6]}")
    clean = {name: _validate_kept(axes[name], idx, strict_groups) for name, idx in kept.items()}
    clean = {name: idx for name, idx in clean.items() if len(idx) < axes[name].size}
    layers = clean.get("layers", list(range(adapter.num_layers(config))))
    sizes: dict[str, set[int]] = {}
    for axis in axes.values():
        if axis.kind == "depth" or (axis.layer is not None and axis.layer not in layers):
            continue
        sizes.setdefault(axis.kind, set()).add(len(clean.get(axis.name, range(axis.size))))
    ragged = {k: sorted(v) for k, v in sizes.items() if len(v) > 1}
    if ragged:
        raise PlanError(
            f"widths differ across layers for {ragged}; a stock config holds one width per layer type"
        )
    uniform = {k: v.pop() for k, v in sizes.items()}
    changed = {k: n for k, n in uniform.items() if any(a.kind == k and a.size != n for a in axes.values())}
    adapter.check_layers(config, layers)
    adapter.check_sizes(config, changed)
    updates = adapter.sized_config(config, changed, layers)
    plan = Plan(config.model_type, clean, updates, _axis_sizes(axes.values()))
    try:
        plan.apply_config(config)
    except Exception as e:  # transformers' config validators raise several error types
        cause = e.__cause__ or e
        raise PlanError(f"transformers refuses the pruned config: {cause}; choose other sizes") from None
    return plan


def keep_all_plan(config) -> Plan:
    """The identity plan: slicing with it must change no logit."""
    return make_plan(config, {})
