"""Routers: one small network per elastic axis, from a one-hot budget to a choice of size (Nemotron Elastic).

router = Router(num_budgets=3, num_choices=8)
probs = gumbel_softmax(router(budget=1), temperature_at(0.3), scale_at(0.3), noise)   # [8], sums to 1

Input one-hot(budget) -> Linear(256) -> LeakyReLU -> logits over the axis's size choices. In training the
logits are multiplied by a scale ramped 1 -> 10 and sampled with Gumbel-softmax at a temperature annealed
1.0 -> 0.05 (geometrically), so the mixture sharpens into one choice; after training the choice is the most
probable one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ROUTER_WIDTH", "Router", "gumbel_noise", "gumbel_softmax", "scale_at", "temperature_at"]

ROUTER_WIDTH = 256


class Router(nn.Module):
    def __init__(self, num_budgets: int, num_choices: int, width: int = ROUTER_WIDTH) -> None:
        super().__init__()
        self.num_budgets = num_budgets
        self.net = nn.Sequential(nn.Linear(num_budgets, width), nn.LeakyReLU(), nn.Linear(width, num_choices))

    def forward(self, budget: int) -> Tensor:
        """Logits ``[num_choices]`` for budget index ``budget``."""
        first = self.net[0].weight
        one_hot = torch.zeros(self.num_budgets, dtype=first.dtype, device=first.device)
        one_hot[budget] = 1.0
        return self.net(one_hot)


def temperature_at(progress: float, start: float = 1.0, end: float = 0.05) -> float:
    """Gumbel-softmax temperature at ``progress`` in [0, 1] of training: geometric from ``start`` to ``end``."""
    return start * (end / start) ** min(max(progress, 0.0), 1.0)


def scale_at(progress: float, start: float = 1.0, end: float = 10.0) -> float:
    """Logit scale at ``progress`` in [0, 1]: linear from ``start`` to ``end``."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def gumbel_noise(shape: int, generator: torch.Generator) -> Tensor:
    """``[shape]`` standard Gumbel samples from ``generator`` (float32, CPU)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32).clamp(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def gumbel_softmax(
    logits: Tensor, temperature: float, scale: float, noise: Tensor | None, hard: bool = False
) -> Tensor:
    """``softmax((scale * logits + noise) / temperature)``; ``noise`` None: no sampling. ``hard``: the
    one-hot of its argmax in the forward pass, the soft probabilities' gradient in the backward pass
    (straight-through), so that what is trained and costed is one architecture."""
    z = scale * logits
    if noise is not None:
        z = z + noise.to(z.device, z.dtype)
    soft = torch.softmax(z / temperature, dim=-1)
    if not hard:
        return soft
    one_hot = torch.nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft
