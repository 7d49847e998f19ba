"""Readable summaries of importance scores: a table per axis kind and PNG plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..arch import Axis
from ..report import format_table

__all__ = ["score_table", "layer_table", "plot_scores"]


def _concentration(scores: torch.Tensor) -> float:
    """Share of the total score held by the top 10% of units (1.0 = all in a few units)."""
    s = scores.float().clamp(min=0).sort(descending=True).values
    top = max(1, round(0.1 * len(s)))
    return float(s[:top].sum() / s.sum().clamp(min=1e-12))


def score_table(scores: Mapping[str, torch.Tensor], axes: Mapping[str, Axis]) -> str:
    """Per axis kind: instances, units, score concentration, and the least important units of the first one."""
    rows, kinds = [], {}
    for name, axis in axes.items():
        if name in scores and axis.kind != "depth":
            kinds.setdefault(axis.kind, []).append(name)
    for kind, names in kinds.items():
        conc = sum(_concentration(scores[n]) for n in names) / len(names)
        first = scores[names[0]]
        weakest = first.argsort()[:3].tolist()
        rows.append([kind, len(names), len(first), f"{conc:.2f}", f"{names[0]}: {weakest}"])
    return format_table(rows, ["axis", "instances", "units", "top-10% share", "least important units"])


def layer_table(layer_scores: Mapping[str, torch.Tensor], kinds: list[str]) -> str:
    """One row per layer with every metric, and its rank by the first metric (0 = least important)."""
    metrics = list(layer_scores)
    first = layer_scores[metrics[0]]
    rank = torch.empty_like(first, dtype=torch.long)
    rank[first.argsort()] = torch.arange(len(first))
    rows = [
        [i, kinds[i], *(f"{layer_scores[m][i]:.4g}" for m in metrics), int(rank[i])]
        for i in range(len(first))
    ]
    return format_table(rows, ["layer", "kind", *metrics, f"rank ({metrics[0]})"])


def plot_scores(
    scores: Mapping[str, torch.Tensor],
    axes: Mapping[str, Axis],
    layer_scores: Mapping[str, torch.Tensor],
    out: Path,
    layer_kinds: list[str] | None = None,
) -> list[Path]:
    """A layers x units heatmap per width axis kind and a bar chart of layer importance (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    kinds: dict[str, list[str]] = {}
    for name, axis in axes.items():
        if name in scores and axis.layer is not None:
            kinds.setdefault(axis.kind, []).append(name)
    for kind, names in kinds.items():
        rows = torch.stack([scores[n].float() / scores[n].float().max().clamp(min=1e-12) for n in names])
        fig, ax = plt.subplots(figsize=(8, 1 + 0.35 * len(names)))
        im = ax.imshow(rows.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(names)), [f"layer {axes[n].layer}" for n in names])
        ax.set_xlabel("unit")
        ax.set_title(f"{kind} importance (each row scaled to its max)")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    for metric, values in layer_scores.items():
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar(range(len(values)), values.numpy())
        if layer_kinds is not None and len(layer_kinds) == len(values):
            ax.set_xticks(range(len(values)), [f"{i}\n{k}" for i, k in enumerate(layer_kinds)], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_ylabel(metric)
        ax.set_title(f"layer importance ({metric}; higher = keep)")
        fig.tight_layout()
        path = out / f"layers_{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
