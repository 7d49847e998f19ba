"""Turn summed statistics into unit scores (pure functions; higher = keep).

Channel scores along a site map to axes through the site's segments: for a segment whose blocks are
picked by axis ``outer`` and whose positions inside a block by axis ``inner``, the outer unit's score is
the L2 norm over its block (attention head = L2 over head_dim; Mamba head = L2 over its channels) and the
inner unit's score is the L2 norm over blocks (Mamba head channel = L2 over heads). An axis scored at
several sites (hidden channels at every norm) sums the per-site scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..arch import ScoreSite
from ..errors import NemocompressError
from .activation import Stats

__all__ = [
    "BATCH_AGGREGATIONS",
    "EXPERT_METRICS",
    "channel_scores",
    "activation_scores",
    "flap_scores",
]

BATCH_AGGREGATIONS = ("l2", "mean", "var")
EXPERT_METRICS = ("reap", "frequency", "output_norm")
Scores = dict[str, torch.Tensor]


def channel_scores(stats: Mapping[str, torch.Tensor], batch_agg: str = "l2") -> torch.Tensor:
    """Per-channel score from per-sample statistics: ``l2`` sqrt(sum a_b^2), ``mean``, or ``var`` of a_b."""
    n = stats["n"].clamp(min=1)
    if batch_agg == "l2":
        return stats["sum_a2"].sqrt()
    if batch_agg == "mean":
        return stats["sum_a"] / n
    if batch_agg == "var":
        return (stats["sum_a2"] / n - (stats["sum_a"] / n).pow(2)).clamp(min=0)
    raise ValueError(f"batch_agg must be one of {BATCH_AGGREGATIONS}, got {batch_agg!r}")


def _distribute(
    out: Scores, site: ScoreSite, channels: torch.Tensor, restrict: Mapping[str, torch.Tensor], reduce: str
):
    offset = 0
    for seg in site.segments:
        values = channels[offset : offset + seg.length]
        offset += seg.length
        if not seg.axes():
            continue
        blocks = values.reshape(seg.length // seg.inner_size, seg.inner_size)
        if seg.outer:
            kept_inner = restrict.get(seg.inner) if seg.inner else None
            inner_blocks = blocks if kept_inner is None else blocks[:, kept_inner]
            unit = inner_blocks.sum(1) if reduce == "sum" else inner_blocks.pow(2).sum(1).sqrt()
            out[seg.outer] = out.get(seg.outer, 0) + unit
        if seg.inner:
            unit = blocks.sum(0) if reduce == "sum" else blocks.pow(2).sum(0).sqrt()
            out[seg.inner] = out.get(seg.inner, 0) + unit


def _chosen(site: ScoreSite, choices: Mapping[str, str]) -> bool:
    """Whether ``site`` is used: it belongs to no choice group, or is its group's chosen (else default) variant."""
    if site.choice is None or site.choice[0] not in choices:
        return site.default
    return choices[site.choice[0]] == site.choice[1]


def _experts(
    out: Scores, site: ScoreSite, stats: Mapping[str, torch.Tensor], metric: str, batch_agg: str
) -> None:
    experts_axis, ffn_axis = site.segments[0].outer, site.segments[1].outer
    routed = stats["routed"]
    if metric == "reap":
        out[experts_axis] = stats["reap"] / routed.clamp(min=1)
    elif metric == "frequency":
        out[experts_axis] = routed.clone()
    elif metric == "output_norm":
        out[experts_axis] = stats["out_norm"] / routed.clamp(min=1)
    else:
        raise ValueError(f"expert metric must be one of {EXPERT_METRICS}, got {metric!r}")
    out[ffn_axis] = channel_scores(stats, batch_agg)


def activation_scores(
    sites: Sequence[ScoreSite],
    stats: Stats,
    batch_agg: str = "l2",
    choices: Mapping[str, str] | None = None,
    expert_metric: str = "reap",
    restrict: Mapping[str, torch.Tensor] | None = None,
) -> Scores:
    """Minitron activation scores, axis name -> [units] (float32).

    Args:
        choices: score-site choice group -> variant to use (see :class:`ScoreSite`), e.g. ``{"mamba": "z"}``;
            a group left out uses its default variant (the first of the site's ``variants``).
        restrict: inner axis -> kept indices; outer scores then use only those positions (Mamba heads are
            scored on the kept head channels once ``mamba_head_dim`` is chosen).
    """
    choices, restrict = choices or {}, restrict or {}
    out: Scores = {}
    for site in sites:
        if site.key not in stats or not _chosen(site, choices):
            continue
        if site.how == "experts":
            _experts(out, site, stats[site.key], expert_metric, batch_agg)
        else:
            _distribute(out, site, channel_scores(stats[site.key], batch_agg), restrict, "l2")
    return {k: v.float() for k, v in out.items()}


def flap_scores(sites: Sequence[ScoreSite], stats: Stats, expert_metric: str = "reap") -> Scores:
    """FLAP: ||W_j||^2 * Var(X_j) on the input of each output projection (summed over a unit's channels).

    Axes without an output projection use the token variance alone (hidden channels: summed over the
    norm sites); experts use ``expert_metric`` as FLAP has no expert rule.
    """
    out: Scores = {}
    for site in sites:
        s = stats.get(site.key)
        if s is None:
            continue
        if site.how == "experts":
            _experts(out, site, s, expert_metric, "l2")
            continue
        if site.choice is not None and site.weight is None:
            continue  # FLAP scores Mamba from out_proj's input, not from in_proj's branches
        if "n_tok" not in s:
            raise NemocompressError(
                "these scores hold no token moments, which FLAP needs (scores saved before `nemocompress "
                "importance` collected them by default); recompute them with "
                "`nemocompress importance MODEL --data PATH -o SCORES`, or pass --data instead of --scores"
            )
        n = s["n_tok"].clamp(min=1)
        variance = (s["tok_sumsq"] / n - (s["tok_sum"] / n).pow(2)).clamp(min=0)
        channels = variance * s["wcol2"] if "wcol2" in s else variance
        _distribute(out, site, channels, {}, "sum")
    return {k: v.float() for k, v in out.items()}
