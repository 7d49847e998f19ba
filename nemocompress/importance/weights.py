"""Weight-only importance: magnitude (L2 norm of each unit's weights) and seeded random ranking.

These are baselines that need no data. They read tensors one by one (from a model or streamed from disk),
so scoring a checkpoint never loads the whole model.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

import torch
from tqdm.auto import tqdm

from ..arch import Adapter, Segment, disk_dims, get_adapter
from ..checkpoint import list_tensors, load_config, read_rows

__all__ = ["MagnitudeAccumulator", "magnitude_scores", "checkpoint_magnitude_scores", "random_scores"]

Scores = dict[str, torch.Tensor]


class MagnitudeAccumulator:
    """Sums squared weights per unit over any number of tensors (or dim-0 chunks of tensors).

    Unit score = sqrt(sum of its squared weights) over every weight matrix the axis cuts. One-dimensional
    parameters (norm scales, biases, Mamba's A_log, D, dt_bias) are left out: their scale says nothing
    about a unit's weight and would swamp it. A layer's depth score is the RMS of its weight matrices
    (scale-free across layer types). Higher means keep.
    """

    def __init__(self, adapter: Adapter, config):
        self.axes = adapter.axis_map(config)
        self.sumsq = {name: torch.zeros(a.size, dtype=torch.float64) for name, a in self.axes.items()}
        self.layer_numel = torch.zeros(adapter.num_layers(config), dtype=torch.float64)

    def add(
        self,
        chunk: torch.Tensor,
        dims: Mapping[int, tuple[Segment, ...]],
        row_offset: int = 0,
        layer: int | None = None,
        expert: tuple[str, int] | None = None,
    ) -> None:
        """Add a tensor, or its rows ``row_offset : row_offset + len(chunk)`` of dim 0.

        ``expert``: (experts axis, index) when the tensor holds one expert of a fused parameter.
        ``chunk.ndim`` is that of the whole tensor (1-D tensors are ignored, see the class docstring).
        """
        if chunk.ndim < 2:
            return
        sq = chunk.detach().to(torch.float64).pow(2)
        if layer is not None:
            self.sumsq["layers"][layer] += sq.sum()
            self.layer_numel[layer] += sq.numel()
        if expert is not None:
            self.sumsq[expert[0]][expert[1]] += sq.sum()
        for dim, segments in dims.items():
            per_pos = sq.sum(dim=[d for d in range(sq.ndim) if d != dim]) if sq.ndim > 1 else sq
            start = row_offset if dim == 0 else 0
            offset = 0
            for seg in segments:
                lo, hi = max(offset, start), min(offset + seg.length, start + len(per_pos))
                if lo < hi and seg.axes():
                    full = torch.zeros(seg.length, dtype=torch.float64)
                    full[lo - offset : hi - offset] = per_pos[lo - start : hi - start]
                    blocks = full.view(seg.length // seg.inner_size, seg.inner_size)
                    if seg.outer:
                        self.sumsq[seg.outer] += blocks.sum(1)
                    if seg.inner:
                        self.sumsq[seg.inner] += blocks.sum(0)
                offset += seg.length

    def scores(self) -> Scores:
        out = {name: s.sqrt().float() for name, s in self.sumsq.items()}
        out["layers"] = (self.sumsq["layers"] / self.layer_numel.clamp(min=1)).sqrt().float()
        return out


def magnitude_scores(model: torch.nn.Module, adapter: Adapter) -> Scores:
    """Magnitude scores of a loaded model, axis name -> [units] (higher = keep)."""
    acc = MagnitudeAccumulator(adapter, model.config)
    state = model.state_dict()
    for spec in adapter.tensors(model.config):
        if spec.tied_to is None:
            acc.add(state[spec.name], spec.dims, layer=spec.layer)
    return acc.scores()


def random_scores(axis_sizes: Iterable[tuple[str, int]], seed: int = 0) -> Scores:
    """Seeded random scores: each axis draws from its own generator, so adding axes changes no other."""
    out = {}
    for name, size in axis_sizes:
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        out[name] = torch.rand(size, generator=g)
    return out


def checkpoint_magnitude_scores(model_dir, progress: bool = True) -> Scores:
    """Magnitude scores of a safetensors checkpoint on disk, read in dim-0 chunks (never the whole model)."""
    config = load_config(model_dir)
    adapter = get_adapter(config)
    specs = {s.name: s for s in adapter.tensors(config)}
    acc = MagnitudeAccumulator(adapter, config)
    infos = list(list_tensors(model_dir).values())
    for info in tqdm(infos, desc="magnitude", disable=not progress):
        key, _ = adapter.decode_disk_key(info.key)
        spec = specs.get(key.memory_name)
        if spec is None or spec.tied_to is not None:
            continue
        expert = (spec.dims[0][0].outer, key.expert) if key.expert is not None else None
        dims = disk_dims(spec, key)
        rows = info.shape[0] if info.shape else 1
        step = max(1, (64 * 2**20) // max(1, info.nbytes // max(rows, 1)))
        for start in range(0, rows, step):
            chunk = read_rows(info, start=start, stop=min(rows, start + step))
            acc.add(chunk, dims, row_offset=start, layer=spec.layer, expert=expert)
    return acc.scores()
