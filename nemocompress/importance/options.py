"""One validated options object for every importance setting (the CLI and the API share it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch

from ..arch import SCORE_CHOICES, Adapter
from ..errors import NemocompressError
from .activation import SEQ_AGGREGATIONS
from .depth import LAYER_METRICS
from .rankings import RANKINGS, Ranking
from .scoring import BATCH_AGGREGATIONS, EXPERT_METRICS

__all__ = ["ImportanceOptions", "CALIBRATION_DTYPES", "LAYER_SELECTIONS"]

CALIBRATION_DTYPES = ("float32", "bfloat16", "float16")
LAYER_SELECTIONS = ("individual", "contiguous", "iterative")  # see nemocompress.importance.selection


@dataclass(frozen=True)
class ImportanceOptions:
    """How units and layers are ranked.

    ranking: a name in ``nemocompress.importance.rankings.RANKINGS``: ``activation`` (Minitron, default),
        ``flap``, ``magnitude`` (weights only), ``random`` (seeded), or one registered there.
    seq_agg / batch_agg: aggregation of activations over the sequence (``mean`` of |X|, ``l2``) and over
        samples (``l2``, ``mean``, ``var``); Minitron's best was mean then L2.
    sources: for models whose adapter offers alternative score sites, choice group -> variant (see
        ``nemocompress.arch.SCORE_CHOICES``); a group left out uses its default. E.g. ``{"mamba": "z"}``:
        which Mamba activation ranks heads and head channels, ``x`` (Minitron-SSM, the default), ``z`` or
        ``out_proj`` (the out_proj input), for ablations.
    expert_metric: ``reap`` (gate-weighted expert output norm), ``frequency`` or ``output_norm``.
    layer_metric: a name in ``nemocompress.importance.depth.LAYER_METRICS``: ``nmse`` (default), ``kl``,
        ``hidden_mse``, ``cosine`` or ``lm_loss``.
    layer_selection: drop the ``individual`` least important layers, the least important ``contiguous``
        block, or ``iterative`` (drop the lowest, re-score, repeat; needs the model and data).
    samples / seq_len / batch_size / seed: calibration data.
    dtype / device: what the model runs in while calibrating: ``float32`` (default), ``bfloat16`` or
        ``float16``; a torch device (default: accelerate's, i.e. this process's GPU under a multi-GPU launch,
        else the CPU). Statistics are accumulated in float32/float64 either way.
    """

    ranking: str = "activation"
    seq_agg: str = "mean"
    batch_agg: str = "l2"
    sources: Mapping[str, str] = field(default_factory=dict)
    expert_metric: str = "reap"
    layer_metric: str = "nmse"
    layer_selection: str = "individual"
    samples: int = 32
    seq_len: int = 256
    batch_size: int = 4
    seed: int = 0
    dtype: str = "float32"
    device: str | None = None

    def __post_init__(self):
        for name, allowed in (
            ("ranking", RANKINGS),
            ("seq_agg", SEQ_AGGREGATIONS),
            ("batch_agg", BATCH_AGGREGATIONS),
            ("expert_metric", EXPERT_METRICS),
            ("layer_metric", LAYER_METRICS),
            ("layer_selection", LAYER_SELECTIONS),
            ("dtype", CALIBRATION_DTYPES),
        ):
            if getattr(self, name) not in allowed:
                raise NemocompressError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        object.__setattr__(self, "sources", dict(self.sources))
        for group, variant in self.sources.items():
            if group not in SCORE_CHOICES:
                raise NemocompressError(
                    f"sources: no adapter offers a score-site choice {group!r}; "
                    f"choose from {', '.join(SCORE_CHOICES)}"
                )
            if variant not in SCORE_CHOICES[group]:
                raise NemocompressError(
                    f"sources[{group!r}] must be one of {', '.join(SCORE_CHOICES[group])}, got {variant!r}"
                )
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError:
                raise NemocompressError(
                    f"device must be a torch device such as cpu, cuda or cuda:1, got {self.device!r}"
                ) from None
        for name in ("samples", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise NemocompressError(f"{name} must be a positive integer, got {getattr(self, name)}")

    @property
    def ranking_entry(self) -> Ranking:
        """The registered :class:`Ranking` named by ``ranking``."""
        return RANKINGS[self.ranking]

    @property
    def needs_data(self) -> bool:
        return self.ranking_entry.needs_data

    def chosen_sources(self, adapter: Adapter, config) -> dict[str, str]:
        """Every score-site choice group of this model -> the variant used (``sources``, else the default).

        Refuses a group the model does not offer (a setting that would otherwise be silently ignored).
        """
        offered = adapter.score_choices(config)
        extra = sorted(set(self.sources) - set(offered))
        if extra:
            has = ", ".join(offered) or "none"
            raise NemocompressError(
                f"sources: this {config.model_type} model has no {extra[0]!r} score sites to choose from "
                f"(its choice groups: {has}); leave {extra[0]!r} unset"
            )
        return {group: self.sources.get(group, variants[0]) for group, variants in offered.items()}

    def to_dict(self) -> dict:
        return asdict(self)
