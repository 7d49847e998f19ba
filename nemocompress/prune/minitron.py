"""Minitron one-shot pruning: explicit target sizes (ModelOpt's export_config names) + scores -> plan."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..arch import get_adapter
from ..errors import PlanError
from .plan import Plan, make_plan

__all__ = ["plan_from_targets", "top_units"]


def top_units(scores: torch.Tensor, count: int, groups: int = 1) -> list[int]:
    """Indices of the ``count`` best units, the same number from each of ``groups`` contiguous groups, sorted."""
    per_group = count // groups
    size = len(scores) // groups
    kept = []
    for g in range(groups):
        best = torch.topk(scores[g * size : (g + 1) * size].float(), per_group, sorted=False).indices
        kept += (best + g * size).tolist()
    return sorted(kept)


def plan_from_targets(
    config,
    targets: Mapping[str, int],
    scores: Mapping[str, torch.Tensor],
    group_aware: bool = True,
    rescore: Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]] | None = None,
) -> Plan:
    """Keep the best units of each axis to reach ``targets``.

    Args:
        targets: ModelOpt export keys (``hidden_size``, ``ffn_hidden_size``, ``num_attention_heads``,
            ``mamba_num_heads``, ``mamba_head_dim``, ``num_moe_experts``, ``moe_ffn_hidden_size``,
            ``moe_shared_expert_intermediate_size``, ``num_layers``) -> new size (per layer for widths).
        scores: axis name -> [units] importance (higher = keep), e.g. from importance/.
        group_aware: rank units inside their groups (default). ``False`` ranks globally and lets units move
            between groups: the naive baseline of the Minitron-SSM ablation, never what users should get.
        rescore: for scores of outer units that depend on the kept inner units (Mamba heads scored on the
            kept head channels): kept indices per axis of a first plan -> scores that replace those given;
            the plan is then made again from them.
    """
    adapter = get_adapter(config)
    unknown = sorted(set(targets) - set(adapter.export_keys))
    if unknown:
        raise PlanError(
            f"unknown export_config keys for {config.model_type}: {', '.join(unknown)}; "
            f"valid keys: {', '.join(adapter.export_keys)}"
        )
    axes = adapter.axes(config)
    kept: dict[str, list[int]] = {}
    for key, count in targets.items():
        kind = adapter.export_keys[key]
        instances = [a for a in axes if a.kind == kind]
        if not instances:
            raise PlanError(
                f"{key}: this {config.model_type} model has no {kind} axis to prune; remove the key"
            )
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise PlanError(f"{key} must be a positive integer, got {count!r}")
        for axis in instances:
            if count > axis.size:
                raise PlanError(
                    f"{key}={count} is larger than the current size {axis.size}; pruning only shrinks"
                )
            if count % axis.groups:
                counted = (
                    f"{axis.group_field} = {axis.groups}" if axis.group_field else f"{axis.groups} groups"
                )
                why = f"{kind.replace('_', ' ')} are kept in equal numbers per group ({counted})"
                raise PlanError(
                    f"{key}={count} is not a multiple of {axis.groups}: {why}; pick a multiple of {axis.groups}"
                )
            kept[axis.name] = top_units(scores[axis.name], count, axis.groups if group_aware else 1)
    plan = make_plan(config, kept, adapter, strict_groups=group_aware)
    if rescore is None:
        return plan
    return plan_from_targets(config, targets, {**scores, **rescore(plan.kept_tensors())}, group_aware)
