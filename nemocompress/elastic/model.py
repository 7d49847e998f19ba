"""The elastic parent in training: routers that pick each budget's sizes and mask the parent to them.

elastic = ElasticModel(space, targets, metric_table, valid, schedule)
distill(config, extension=elastic)           # the distillation loop, routers trained with the parent
elastic.architectures()                      # budget -> chosen sizes (one per axis), nested

Each training step draws one budget (the same on every process, from the seed and the step) and one
architecture per router by Gumbel-softmax (``softmax((scale x logits + g) / temperature)``), straight-through
by default: the forward pass masks the parent to the sampled architecture (0/1 masks), the backward pass
takes the soft probabilities' gradient, so the KD loss of that submodel against the frozen original reaches
the routers through the masks (``hard_samples=False``: the soft masks, the probability-weighted mixture of the
choices' 0/1 masks, in the forward pass too). The cost term is ``cost_weight x E[|cost - target| / target]``,
the exact expectation over the architecture the routers sample (Gumbel-max: ``softmax(scale x logits)`` per
axis) of its metric's relative distance to the budget (params, active params, memory or latency, from the
cost model, tabulated once for every combination of choices): deterministic, and with a gradient even where
the annealed Gumbel-softmax has saturated. The full budget is the parent itself: its routers are not used.

A second term, with the same weight, is the probability that a budget's router picks a larger size on some
axis than the next larger budget's router: submodels nest across budgets, not only inside one. After
training a budget's architecture is the most probable combination that the family's config accepts, that
takes no larger size than the next larger budget on any axis and, where one does, that comes within
``tolerance`` of the budget (independent routers can settle a little outside it: on a toy Llama a
0.5-budget router settled at -5.05% when -0.0% existed); a budget where that is not the routers' own most
probable combination is reported, with the routers' own choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..arch.masking import MaskHandle, install_masks
from ..distill.trainer import TrainerExtension
from .quant import load_quantizer_state, quantize_, quantizer_state, strip_quantizers
from .router import Router, gumbel_noise, gumbel_softmax, scale_at, temperature_at
from .space import ElasticSpace

__all__ = ["ElasticModel", "Schedule", "budget_probabilities"]


@dataclass(frozen=True)
class Schedule:
    """Where a stage sits in the whole run, and how it samples budgets.

    ``weights``: probability of each budget (in the order of the targets) in this stage.
    """

    total_steps: int
    offset: int = 0
    weights: tuple[float, ...] = ()
    seed: int = 0
    temperature: tuple[float, float] = (1.0, 0.05)
    scale: tuple[float, float] = (1.0, 10.0)

    def progress(self, step: int) -> float:
        return (self.offset + step) / max(1, self.total_steps - 1)


def budget_probabilities(num_budgets: int, weights: Sequence[float] | None) -> tuple[float, ...]:
    """Normalized sampling weights; None: uniform."""
    w = np.ones(num_budgets) if weights is None else np.asarray(weights, dtype=np.float64)
    return tuple(float(x) for x in w / w.sum())


class ElasticModel(TrainerExtension):
    """Routers over ``space`` for budgets with ``targets`` (metric values, same order as the routers'
    one-hot input) and the cost ``table`` of every combination of choices (shape ``space.sizes``)."""

    loss_name = "cost_loss"

    def __init__(
        self,
        space: ElasticSpace,
        targets: Sequence[float],
        table: np.ndarray,
        valid: np.ndarray,
        schedule: Schedule,
        cost_weight: float = 1.0,
        labels: Sequence[str] | None = None,
        lr_scale: float = 1.0,
        hard_samples: bool = True,
        tolerance: float | None = None,
        quant: str | None = None,
    ) -> None:
        super().__init__()
        self.quant = quant  # fake quantization (elastic.quant) of the student while it trains
        self.quant_state: dict[str, Tensor] | None = None  # its amax per quantizer, carried across stages
        self.tolerance = tolerance
        self.lr_scale = lr_scale
        self.hard_samples = hard_samples
        self.space = space
        self.targets = [float(t) for t in targets]
        self.labels = list(labels or [f"{t:g}" for t in targets])
        with torch.random.fork_rng(devices=[]):  # the same initial routers whatever ran before
            torch.manual_seed(schedule.seed)
            self.routers = nn.ModuleList(Router(len(self.targets), n) for n in space.sizes)
        # not a buffer: DDP would broadcast it every step
        self.table = torch.as_tensor(np.ascontiguousarray(table), dtype=torch.float64)
        self.distance = [(self.table - t).abs() / t for t in self.targets]
        self.valid = np.asarray(valid, dtype=bool)
        self.schedule = schedule
        self.cost_weight = cost_weight
        self.matrices = space.indicator_matrices()
        self.handle: MaskHandle | None = None
        self._step: dict | None = None

    # ------------------------------------------------------------------ the trainer's hooks
    def attach(self, student: nn.Module, samples: Tensor | None = None) -> None:
        self.detach()
        self.__dict__["_student"] = student  # a reference, not a submodule (its parameters are the student's)
        if self.quant is not None:
            quantize_(student, self.quant, samples)
            if self.quant_state is not None:  # a later stage keeps the scales of the one before
                load_quantizer_state(student, self.quant_state)
        names = [n for mats in self.matrices for n in mats if n != "layers"]
        depth = any("layers" in mats for mats in self.matrices)
        self.handle = install_masks(student, self.space.adapter, names, layers=depth)

    def begin_step(self, step: int) -> dict:
        s = self.schedule
        generator = torch.Generator().manual_seed(s.seed * 1_000_003 + s.offset + step)
        weights = torch.tensor(s.weights or budget_probabilities(len(self.targets), None))
        budget = int(torch.multinomial(weights, 1, generator=generator))
        progress = s.progress(step)
        self._step = {
            "budget": budget,
            "temperature": temperature_at(progress, *s.temperature),
            "scale": scale_at(progress, *s.scale),
            "noise": [gumbel_noise(n, generator) for n in self.space.sizes],
        }
        return {"budget": self.labels[budget], "temperature": self._step["temperature"]}

    def forward(self) -> Tensor:
        """Set the soft masks of this step's budget; return its cost term."""
        st = self._step
        if self.is_full(
            st["budget"]
        ):  # the parent itself: nothing to choose (the routers still run, for DDP)
            probs = [
                p + 0.0 * r(st["budget"]).sum()
                for p, r in zip(self.space.one_hot(self.space.full), self.routers)
            ]
        else:
            probs = [
                gumbel_softmax(r(st["budget"]), st["temperature"], st["scale"], noise, self.hard_samples)
                for r, noise in zip(self.routers, st["noise"])
            ]
        units, layers = self.space.weights(probs, self.matrices)
        self.handle.set(units, layers)
        if self.is_full(st["budget"]):
            return sum(p.sum() for p in probs) * 0.0
        # the exact expectation, over the architecture the routers sample (Gumbel-max: softmax(scale x
        # logits) per axis), of the relative distance of its cost to the target
        choice = [torch.softmax(st["scale"] * r(st["budget"]), -1) for r in self.routers]
        loss = self.expected(self.distance[st["budget"]], choice)
        larger = self.next_larger(st["budget"])
        if larger is not None and not self.is_full(
            larger
        ):  # nesting: P(an axis larger than the next budget's)
            above = [torch.softmax(st["scale"] * r(larger), -1) for r in self.routers]
            loss = loss + sum((torch.triu(torch.outer(a, q), 1)).sum() for q, a in zip(choice, above))
        return self.cost_weight * loss

    def evaluations(self) -> list[tuple[str, contextlib.AbstractContextManager]]:
        return [
            (f"@{label}", self.hard(choice)) for label, choice in zip(self.labels, self.architectures()[0])
        ]

    # ------------------------------------------------------------------ costs and choices
    @staticmethod
    def expected(table: Tensor, probs: Sequence[Tensor]) -> Tensor:
        """E[table] under independent choices ``probs`` (one [choices] vector per axis), differentiable."""
        t = table.to(probs[0].device)
        for p in reversed(probs):
            t = t @ p.to(t.dtype)
        return t.float()

    def cost_of(self, choice: Sequence[int]) -> float:
        return float(self.table[tuple(choice)])

    def is_full(self, budget: int) -> bool:
        return self.targets[budget] >= self.cost_of(self.space.full)

    def next_larger(self, budget: int) -> int | None:
        above = [b for b in range(len(self.targets)) if self.targets[b] > self.targets[budget]]
        return min(above, key=lambda b: self.targets[b]) if above else None

    @torch.no_grad()
    def most_probable(
        self, budget: int, upper: Sequence[int] | None = None, near: bool = False
    ) -> tuple[int, ...]:
        """The combination with the highest probability under the routers that the config accepts (the
        parent's own sizes for the full budget); ``upper``: no axis above these choices; ``near``: among
        those within ``tolerance`` of the budget when there are any."""
        if self.is_full(budget):
            return self.space.full
        logp = [torch.log_softmax(r(budget).double().cpu(), -1).numpy() for r in self.routers]
        total = np.zeros(self.space.sizes)
        for d, lp in enumerate(logp):
            view = [1] * len(logp)
            view[d] = len(lp)
            total = total + lp.reshape(view)
        allowed = self.valid.copy()
        if upper is not None:
            for d, u in enumerate(upper):
                index = [slice(None)] * len(upper)
                index[d] = slice(u + 1, None)
                allowed[tuple(index)] = False
        if near and self.tolerance is not None:
            close = allowed & (self.distance[budget].numpy() <= self.tolerance)
            allowed = close if close.any() else allowed
        total = np.where(allowed, total, -np.inf)
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(total)), total.shape))

    def architectures(self) -> tuple[list[tuple[int, ...]], list[int]]:
        """Each budget's choice, nested: from the largest budget down, the most probable combination with no
        axis above the next larger budget's and, where one exists, within ``tolerance`` of the budget. Also
        the budgets where that is not the routers' own most probable combination."""
        chosen: dict[int, tuple[int, ...]] = {}
        constrained = []
        for b in sorted(range(len(self.targets)), key=lambda b: -self.targets[b]):
            larger = self.next_larger(b)
            chosen[b] = self.most_probable(b, None if larger is None else chosen[larger], near=True)
            if chosen[b] != self.most_probable(b):
                constrained.append(b)
        return [chosen[b] for b in range(len(self.targets))], constrained

    @contextlib.contextmanager
    def hard(self, choice: Sequence[int]):
        """The parent masked to exactly ``choice`` (what its sliced checkpoint computes)."""
        self.handle.set(*self.space.hard_masks(choice))
        try:
            yield
        finally:
            self.handle.set({}, {})

    def stock_state(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.quant is None:
            return state_dict
        self.quant_state = quantizer_state(self._student)
        return strip_quantizers(state_dict)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
