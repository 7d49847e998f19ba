"""Which layers a depth target keeps: a layer ranking whose top ``keep`` layers are the survivors.

``individual`` keeps the layers the chosen metric scores highest; ``contiguous`` drops the one window of
``L - keep`` consecutive layers that matters least (its scores are those of windows of that size);
``iterative`` drops the least important layer, re-scores the rest, and repeats (it runs the model, so it
needs data, not saved scores). The planner (prune/) takes the ranking like any other scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..arch import Adapter, get_adapter
from ..errors import PlanError
from .calibrate import load_model_and_samples
from .depth import finalize_layer_scores, layer_stats
from .result import ImportanceResult

__all__ = [
    "windows_to_score",
    "select_layers",
    "layer_ranking",
    "iterative_layer_ranking",
    "iterative_ranking",
]


def windows_to_score(num_layers: int, keep: int | None, selection: str) -> tuple[int, ...]:
    """The layer window sizes a calibration must score to keep ``keep`` of ``num_layers`` layers.

    None when no depth is pruned (or ``iterative``, which scores as it goes): ``()``.
    """
    if keep is None or selection == "iterative":
        return ()
    window = num_layers - keep
    return (1, window) if selection == "contiguous" and window > 1 else (1,)


def select_layers(found: ImportanceResult, keep: int, data: str | Path | None = None) -> torch.Tensor:
    """[num_layers] scores whose top ``keep`` are the layers ``found.options.layer_selection`` keeps.

    ``data``: calibration text, when the scores were computed from it now; ``iterative`` selection reloads
    the model (``found.model_dir``) and re-scores as it drops layers.
    """
    o, adapter = found.options, get_adapter(found.config)
    if o.layer_selection == "iterative" and data is not None:
        model, samples = load_model_and_samples(found.model_dir, data, o)
        return iterative_ranking(model, adapter, list(samples.split(o.batch_size)), keep, o.layer_metric)
    num_layers = adapter.num_layers(found.config)
    return layer_ranking(found.layer_scores, num_layers, keep, o.layer_metric, o.layer_selection)


def layer_ranking(
    layer_scores: Callable[[int], Mapping[str, torch.Tensor]],
    num_layers: int,
    keep: int,
    metric: str,
    selection: str,
) -> torch.Tensor:
    """[num_layers] scores whose top ``keep`` are the layers ``selection`` keeps.

    ``layer_scores(window)``: metric -> [windows] scores of every window of ``window`` layers.
    """
    if selection == "iterative":
        raise PlanError(
            "--layer-selection iterative re-scores the model as it drops layers: pass --data, not --scores"
        )
    if selection == "contiguous" and keep < num_layers:
        window = num_layers - keep
        start = int(layer_scores(window)[metric].argmin())
        ranking = torch.ones(num_layers)
        ranking[start : start + window] = 0
        return ranking
    return layer_scores(1)[metric]


def iterative_layer_ranking(
    model: nn.Module, adapter: Adapter, batches: Sequence[torch.Tensor], keep: int, metric: str = "nmse"
) -> list[int]:
    """Drop the least important layer, re-score the rest, repeat until ``keep`` layers remain.

    Returns the kept layer indices, sorted.
    """
    dropped: list[int] = []
    total = len(model.get_submodule(adapter.layers_prefix))
    while total - len(dropped) > keep:
        stats = layer_stats(model, adapter, batches, dropped=dropped, metrics=(metric,))
        scores = finalize_layer_scores(stats)[metric]
        remaining = [i for i in range(total) if i not in dropped]
        dropped.append(remaining[int(scores.argmin())])
    return sorted(set(range(total)) - set(dropped))


def iterative_ranking(
    model: nn.Module, adapter: Adapter, batches: Sequence[torch.Tensor], keep: int, metric: str = "nmse"
) -> torch.Tensor:
    """:func:`iterative_layer_ranking` as [num_layers] scores: 1 for the survivors, 0 for the rest."""
    ranking = torch.zeros(len(model.get_submodule(adapter.layers_prefix)))
    ranking[iterative_layer_ranking(model, adapter, batches, keep, metric)] = 1
    return ranking
