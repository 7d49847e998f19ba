"""Token samples for distillation and the order in which training reads them.

train_ids, heldout_ids = distill_samples(tokenizer, "text/", seq_len=512, eval_samples=16)
order = DataOrder(len(train_ids), global_batch=32, seed=0)
order.step_indices(step)   # the 32 sample indices of optimizer step ``step``, same on every run and resume
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import DataError, build_samples, fingerprint

__all__ = ["DataOrder", "distill_samples", "fingerprint"]


def distill_samples(
    tokenizer: Any,
    data: str,
    seq_len: int,
    eval_samples: int,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    num_samples: int | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Train samples ``[N, seq_len]`` and held-out samples ``[min(eval_samples, M), seq_len]``.

    Built by :func:`nemocompress.data.build_samples` (whole documents held out; a single document is cut
    near its end). ``num_samples`` keeps the first of the shuffled train samples (None: all that fit).
    Nothing of the held-out part is ever trained on.
    """
    built = build_samples(tokenizer, data, seq_len, num_samples, eval_samples, heldout_fraction, seed)
    return built.train, built.heldout


class DataOrder:
    """Which samples each optimizer step reads: a pure function of ``(seed, step)``.

    Sample positions run through epochs; epoch ``e`` visits all ``num_samples`` samples in the order of
    a permutation seeded by ``(seed, e)``. Step ``s`` reads positions ``s * G .. (s + 1) * G - 1`` of that
    stream (``G`` the global batch), so a resumed run reads exactly what the uninterrupted run would, and
    the order does not depend on how the global batch is split over processes and micro-batches.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int = 0) -> None:
        if num_samples < 1:
            raise DataError("no training samples: add text or lower seq_len")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """``[num_samples]`` int64: the permutation of epoch ``epoch``."""
        if epoch not in self._perms:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            self._perms = {
                epoch: torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed))
            }
        return self._perms[epoch]

    def step_indices(self, step: int) -> torch.Tensor:
        """``[global_batch]`` int64 sample indices of optimizer step ``step`` (0-based)."""
        positions = torch.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, offsets = positions // self.num_samples, positions % self.num_samples
        out = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            here = epochs == epoch
            out[here] = self.epoch_order(epoch)[offsets[here]]
        return out

    def micro_batches(self, step: int, num_micro: int, num_processes: int, rank: int) -> torch.Tensor:
        """``[num_micro, B]``: this process's sample indices for each micro-batch of step ``step``.

        The global batch is laid out ``[micro-batch, process, B]``: micro-batch ``k`` of all processes
        together holds the same samples whatever the number of processes.
        """
        return self.step_indices(step).view(num_micro, num_processes, -1)[:, rank]
