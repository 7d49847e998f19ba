"""One calibration run: activation statistics and layer statistics over batches, on one or many processes.

With several processes (``torchrun`` / ``accelerate launch``), each scores its shard of the batches and the
sums are reduced across processes before any square root, so the result equals a single-process run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from tqdm.auto import tqdm

from ..arch import Adapter
from .activation import CONSTANT_STATS, ActivationCollector, Stats
from .artifact import ImportanceArtifact
from .depth import CHEAP_METRICS, LayerStats, layer_stats

__all__ = ["calibrate"]


def _reduce(stats: dict, state: PartialState) -> dict:
    """Sum every statistic across processes (constants such as weight norms are kept as they are)."""
    if state.num_processes == 1:
        return stats
    out = {}
    for k, v in stats.items():
        if isinstance(v, dict):
            out[k] = _reduce(v, state)
        else:
            out[k] = v if k in CONSTANT_STATS else reduce(v.to(state.device), "sum").cpu()
    return out


@torch.no_grad()
def calibrate(
    model: torch.nn.Module,
    adapter: Adapter,
    samples: torch.Tensor,
    batch_size: int = 4,
    block_sizes: Sequence[int] = (1,),
    layer_metrics: Sequence[str] = CHEAP_METRICS,
    seq_agg: str = "mean",
    token_moments: bool = False,
    progress: bool = True,
    meta: dict | None = None,
) -> ImportanceArtifact:
    """Collect everything importance needs from ``samples`` ``[N, S]`` (token ids).

    Returns summed statistics: per score site (for width scores; ``token_moments`` adds what FLAP
    needs) and per layer window size in ``block_sizes`` (for depth scores, the ``layer_metrics``; the
    default leaves out ``kl`` and ``lm_loss``, which run the LM head once per layer).
    """
    state = PartialState()
    batches = list(samples.split(batch_size))[state.process_index :: state.num_processes]
    model.eval()
    bar = tqdm(
        total=len(batches) * (1 + len(block_sizes)),
        desc="importance",
        disable=not (progress and state.is_main_process),
    )
    stats: Stats = ActivationCollector(model, adapter, seq_agg, token_moments).collect(batches, progress=bar)
    layers: dict[int, LayerStats] = {
        k: layer_stats(model, adapter, batches, window=k, progress=bar, metrics=layer_metrics)
        for k in block_sizes
    }
    bar.close()
    return ImportanceArtifact(
        _reduce(stats, state), {k: _reduce(v, state) for k, v in layers.items()}, meta or {}
    )
