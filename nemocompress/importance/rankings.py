"""Unit rankings by name: the statistics each one needs and a pure function from them to scores.

A registry in the torchao manner: :data:`RANKINGS` maps a name to a :class:`Ranking`, and
:func:`register_ranking` adds one. The options validator, :mod:`nemocompress.api` and the command line all
read it, so a new ranking is one decorated function here (plus its test)::

    @register_ranking("mean_activation", needs=("activations",))
    def mean_activation(inputs: RankingInputs, options, restrict=None) -> Scores:
        return activation_scores(inputs.sites, inputs.stats, "mean", inputs.choices, options.expert_metric)

Statistics a ranking may need (:data:`STATISTICS`): ``activations`` and ``token_moments`` come from one
calibration (``nemocompress importance`` collects both by default, so one run serves every ranking);
``weights`` are per-unit weight norms streamed from the checkpoint. Rankings that need calibration get
their layer scores from the chosen layer metric; the others score the ``layers`` axis themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..arch import ScoreSite
from .activation import Stats
from .scoring import activation_scores, flap_scores
from .weights import random_scores

if TYPE_CHECKING:
    from .options import ImportanceOptions

__all__ = ["STATISTICS", "CALIBRATION_STATISTICS", "Ranking", "RankingInputs", "RANKINGS", "register_ranking"]

Scores = dict[str, torch.Tensor]
STATISTICS = {
    "activations": "per-sample activation sums over calibration text",
    "token_moments": "token-level activation moments over calibration text",
    "weights": "per-unit weight norms, read from the checkpoint",
}
CALIBRATION_STATISTICS = ("activations", "token_moments")


@dataclass(frozen=True)
class RankingInputs:
    """What a ranking's score function reads; only the statistics its ``needs`` name are filled in.

    axes: every axis name -> its number of units (the depth axis ``layers`` included).
    sites / choices: the model's score sites, and choice group -> variant used (defaults filled in).
    stats: calibration statistics per score site (``activations``, ``token_moments``).
    weights: axis name -> [units] weight norms (``weights``).
    """

    axes: Mapping[str, int]
    sites: Sequence[ScoreSite] = ()
    choices: Mapping[str, str] = ()
    stats: Stats | None = None
    weights: Mapping[str, torch.Tensor] | None = None


ScoreFn = Callable[[RankingInputs, "ImportanceOptions", "Mapping[str, torch.Tensor] | None"], Scores]


@dataclass(frozen=True)
class Ranking:
    """A named ranking: ``score(inputs, options, restrict)`` -> axis name -> [units] (higher = keep).

    restricts: the scores of outer units depend on which inner units are kept (``restrict``: inner axis ->
        kept indices), so the planner re-scores them once the inner units are chosen.
    """

    name: str
    needs: tuple[str, ...]
    score: ScoreFn
    restricts: bool = False

    @property
    def needs_data(self) -> bool:
        """Whether it needs a calibration (``--data`` or ``--scores``)."""
        return any(need in CALIBRATION_STATISTICS for need in self.needs)


RANKINGS: dict[str, Ranking] = {}


def register_ranking(name: str, needs: Sequence[str] = (), restricts: bool = False):
    """Decorator: register ``fn(inputs, options, restrict=None) -> Scores`` as ranking ``name``."""
    unknown = sorted(set(needs) - set(STATISTICS))
    if unknown:
        raise ValueError(
            f"ranking {name!r} needs unknown statistics {unknown}; known: {', '.join(STATISTICS)}"
        )

    def decorate(fn: ScoreFn) -> ScoreFn:
        if name in RANKINGS:
            raise ValueError(f"a ranking named {name!r} is already registered")
        RANKINGS[name] = Ranking(name, tuple(needs), fn, restricts)
        return fn

    return decorate


@register_ranking("activation", needs=("activations",), restricts=True)
def activation(inputs: RankingInputs, options: ImportanceOptions, restrict=None) -> Scores:
    """Minitron: aggregated activation magnitude per unit (METHODS.md section 1)."""
    o = options
    return activation_scores(
        inputs.sites, inputs.stats, o.batch_agg, inputs.choices, o.expert_metric, restrict
    )


@register_ranking("flap", needs=("activations", "token_moments"))
def flap(inputs: RankingInputs, options: ImportanceOptions, restrict=None) -> Scores:
    """FLAP: weight column norm times token variance of each output projection's input."""
    return flap_scores(inputs.sites, inputs.stats, options.expert_metric)


@register_ranking("magnitude", needs=("weights",))
def magnitude(inputs: RankingInputs, options: ImportanceOptions, restrict=None) -> Scores:
    """The L2 norm of each unit's weights (depth: the RMS of a layer's weight matrices)."""
    return dict(inputs.weights)


@register_ranking("random")
def random(inputs: RankingInputs, options: ImportanceOptions, restrict=None) -> Scores:
    """Seeded random scores (a baseline)."""
    return random_scores(inputs.axes.items(), options.seed)
