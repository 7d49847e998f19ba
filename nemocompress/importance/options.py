"""One validated options object for every importance setting (the CLI and the API share it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import NemocompressError
from .activation import SEQ_AGGREGATIONS
from .depth import LAYER_METRICS
from .scoring import BATCH_AGGREGATIONS, EXPERT_METRICS

__all__ = ["ImportanceOptions", "RANKINGS", "MAMBA_SOURCES", "LAYER_SELECTIONS", "CALIBRATION_DTYPES"]

RANKINGS = ("activation", "flap", "magnitude", "random")
MAMBA_SOURCES = ("x", "z", "out_proj")
CALIBRATION_DTYPES = ("float32", "bfloat16", "float16")
LAYER_SELECTIONS = ("individual", "contiguous", "iterative")


@dataclass(frozen=True)
class ImportanceOptions:
    """How units and layers are ranked.

    ranking: ``activation`` (Minitron, default), ``flap``, ``magnitude`` (weights only), ``random`` (seeded).
    seq_agg / batch_agg: aggregation of activations over the sequence (``mean`` of |X|, ``l2``) and over
        samples (``l2``, ``mean``, ``var``); Minitron's best was mean then L2.
    mamba_source: which Mamba activation ranks heads and head channels: ``x`` (Minitron-SSM), ``z`` or
        ``out_proj`` (the out_proj input), for ablations.
    expert_metric: ``reap`` (gate-weighted expert output norm), ``frequency`` or ``output_norm``.
    layer_metric: ``nmse`` (default), ``kl``, ``hidden_mse``, ``cosine`` or ``lm_loss``.
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
    mamba_source: str = "x"
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
            ("mamba_source", MAMBA_SOURCES),
            ("expert_metric", EXPERT_METRICS),
            ("layer_metric", LAYER_METRICS),
            ("layer_selection", LAYER_SELECTIONS),
            ("dtype", CALIBRATION_DTYPES),
        ):
            if getattr(self, name) not in allowed:
                raise NemocompressError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
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
    def needs_data(self) -> bool:
        return self.ranking in ("activation", "flap")

    def to_dict(self) -> dict:
        return asdict(self)
