"""Scores of one model, computed or loaded, ranked by the chosen options (what ``api.importance`` returns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..arch import get_adapter
from .artifact import ImportanceArtifact, ScoresError
from .depth import finalize_layer_scores
from .options import ImportanceOptions
from .rankings import Ranking, RankingInputs
from .report import layer_table, plot_scores, score_table
from .weights import checkpoint_magnitude_scores

__all__ = ["ImportanceResult", "NO_LAYERS"]

NO_LAYERS = (
    "these scores hold no layer scores (computed with --no-layers); recompute them without it: "
    "`nemocompress importance MODEL --data PATH -o SCORES`, or pass --data instead of --scores"
)


@dataclass
class ImportanceResult:
    """Statistics of a model (``artifact``) and how to rank them (``options``).

    ``model_dir`` is read by rankings that need the weights (``magnitude``); ``plots`` are the PNG files
    written beside saved scores.
    """

    artifact: ImportanceArtifact
    config: object
    options: ImportanceOptions
    plots: list[Path] = field(default_factory=list)
    model_dir: str | Path | None = None
    progress: bool = True

    @property
    def ranking(self) -> Ranking:
        return self.options.ranking_entry

    def ranking_inputs(self) -> RankingInputs:
        """What the ranking reads: calibration statistics, and the weight norms when it needs them."""
        adapter = get_adapter(self.config)
        weights = None
        if "weights" in self.ranking.needs:
            if self.model_dir is None:
                raise ScoresError(
                    f"--importance {self.ranking.name} reads the weights: give the model directory"
                )
            weights = checkpoint_magnitude_scores(self.model_dir, self.progress)
        return RankingInputs(
            axes={a.name: a.size for a in adapter.axes(self.config)},
            sites=adapter.score_sites(self.config),
            choices=self.options.chosen_sources(adapter, self.config),
            stats=self.artifact.stats,
            weights=weights,
        )

    def unit_scores(self, restrict: dict | None = None) -> dict[str, torch.Tensor]:
        """Axis name -> [units] scores of the chosen ranking (``restrict``: inner axis -> kept indices)."""
        return self.ranking.score(self.ranking_inputs(), self.options, restrict)

    def layer_scores(self, window: int = 1) -> dict[str, torch.Tensor]:
        """Layer metric -> [windows] scores of every window of ``window`` consecutive layers."""
        if not self.artifact.layers:
            raise ScoresError(NO_LAYERS)
        if window not in self.artifact.layers:
            raise ScoresError(
                f"no layer scores for blocks of {window} layers; recompute with `--block-size {window}` "
                "(or pass --data so they are computed now)"
            )
        scores = finalize_layer_scores(self.artifact.layers[window])
        if self.options.layer_metric not in scores:
            raise ScoresError(
                f"these scores have no {self.options.layer_metric!r} layer metric (they have "
                f"{', '.join(scores)}); recompute them with `--layer-metric {self.options.layer_metric}`"
            )
        return scores

    def table(self) -> str:
        """Unit scores per axis kind, then (when layers were scored) one row per layer."""
        adapter = get_adapter(self.config)
        units = score_table(self.unit_scores(), adapter.axis_map(self.config))
        if not self.artifact.layers:
            return units
        layers = layer_table(self.layer_scores(min(self.artifact.layers)), adapter.layer_kinds(self.config))
        return f"{units}\n\n{layers}"

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the statistics and PNG plots to ``path`` (atomically); :attr:`plots` lists the plots."""
        adapter = get_adapter(self.config)
        scores = self.unit_scores()
        layers = self.layer_scores(min(self.artifact.layers)) if self.artifact.layers else {}

        def add_plots(tmp: Path) -> None:
            kinds = adapter.layer_kinds(self.config)
            written = plot_scores(scores, adapter.axis_map(self.config), layers, tmp / "plots", kinds)
            self.plots = [Path(path) / "plots" / p.name for p in written]

        return self.artifact.save(path, overwrite, also=add_plots)
