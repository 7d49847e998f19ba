"""The nested space of an elastic model: size choices per axis, importance orders, masks and costs.

space = ElasticSpace.build(config, unit_scores, layer_scores, max_width_pruning=0.6, max_depth_pruning=0.5)
units, layers = space.weights(probs)        # soft (or 0/1) unit and layer weights for MaskHandle.set
plan = space.plan(choice)                   # the stock checkpoint of one choice per axis

Each router axis is one ModelOpt export key (``hidden_size``, ``ffn_hidden_size``, ``num_attention_heads``,
``mamba_num_heads``, ``mamba_head_dim``, ``num_moe_experts``, ``moe_ffn_hidden_size``, the shared expert's
width; ``num_layers``), its choices those of the budget search
(:class:`~nemocompress.prune.space.SearchSpace`, uniform over the layers of a type, so that every submodel
is a stock config). Units are ranked once by importance, inside their groups (query heads per KV group,
Mamba heads per group: equal counts per group); a size ``c`` keeps the top ``c / groups`` of every group,
so a smaller size keeps a subset of a larger one. Depth keeps the top ``n`` layers of one layer ranking
in which the best layer of every layer kind comes first (a hybrid never loses its last attention layer),
so depth nests too. Routed experts (ranked by REAP) nest the same way; the router's rows and correction
bias are sliced with them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..arch import Adapter, get_adapter
from ..errors import PlanError
from ..prune.budget import Budget
from ..prune.cost import CostModel
from ..prune.plan import Plan, make_plan
from ..prune.space import SearchSpace

__all__ = ["FIXED_KINDS", "MAX_COMBINATIONS", "ElasticSpace", "RouterAxis", "group_ranks", "layer_order"]

#: Axis kinds an elastic model does not vary (none: every width of the adapters, experts included, is).
FIXED_KINDS: tuple[str, ...] = ()
#: The cost table holds one value per combination of choices; past this many, narrow the space.
MAX_COMBINATIONS = 4_000_000


@dataclass(frozen=True)
class RouterAxis:
    """One router's choices: an export key, the axis kind it sizes (``depth`` for ``num_layers``), sizes
    in ascending order (the last is the parent's)."""

    key: str
    kind: str
    choices: tuple[int, ...]


def group_ranks(scores: torch.Tensor, groups: int) -> torch.Tensor:
    """[units] position of each unit in its group's importance order (0 = most important; ties: lower
    index first)."""
    size = len(scores) // groups
    ranks = torch.empty(len(scores), dtype=torch.long)
    for g in range(groups):
        block = scores[g * size : (g + 1) * size].double()
        order = torch.sort(-block, stable=True).indices
        ranks[g * size + order] = torch.arange(size)
    return ranks


def layer_order(layer_scores: torch.Tensor, kinds: Sequence[str]) -> list[int]:
    """Layers best first: the best layer of every kind (in score order), then the rest by score."""
    order = torch.sort(-layer_scores.double(), stable=True).indices.tolist()
    firsts = []
    for i in order:
        if kinds[i] not in {kinds[j] for j in firsts}:
            firsts.append(i)
    return firsts + [i for i in order if i not in firsts]


class ElasticSpace:
    """Router axes, the rank of every unit and layer, and what a choice keeps, weighs and costs."""

    def __init__(self, config, axes: Sequence[RouterAxis], ranks: Mapping[str, Sequence[int]],
                 order: Sequence[int], notes: Sequence[str] = ()):  # fmt: skip
        self.config = config
        self.adapter: Adapter = get_adapter(config)
        self.axes = list(axes)
        self.ranks = {k: torch.as_tensor(v, dtype=torch.long) for k, v in ranks.items()}
        self.order = [int(i) for i in order]
        self.notes = list(notes)
        instances = self.adapter.axes(config)
        self._instances = {
            a.key: [x for x in instances if x.kind == a.kind] for a in self.axes if a.kind != "depth"
        }
        self._layer_rank = torch.empty(len(self.order), dtype=torch.long)
        self._layer_rank[torch.tensor(self.order)] = torch.arange(len(self.order))

    # ------------------------------------------------------------------ construction and storage
    @classmethod
    def build(
        cls,
        config,
        unit_scores: Mapping[str, torch.Tensor],
        layer_scores: torch.Tensor | None,
        max_width_pruning: float = 0.6,
        max_depth_pruning: float = 0.5,
        hparams_to_skip: Sequence[str] = (),
        divisors: Mapping[str, int] | None = None,
    ) -> ElasticSpace:
        adapter = get_adapter(config)
        kinds = adapter.layer_kinds(config)
        not_elastic = [k for k, kind in adapter.export_keys.items() if kind in FIXED_KINDS]
        skip = sorted(set(hparams_to_skip) | set(not_elastic))
        if layer_scores is None and "num_layers" not in skip:
            skip.append("num_layers")
        search = SearchSpace.build(config, max_width_pruning, max_depth_pruning, skip, divisors)
        axes = [
            RouterAxis(key, adapter.export_keys[key], tuple(sorted(values)))
            for key, values in search.choices.items()
        ]
        lowest = len(dict.fromkeys(kinds))  # the best layer of every kind stays
        depth = tuple(n for n in sorted(search.num_layers) if n >= lowest)
        if len(depth) > 1:
            axes.append(RouterAxis("num_layers", "depth", depth))
        notes = [n for n in search.notes if not n.startswith("not searched")]
        if not axes:
            raise PlanError(
                "no size is elastic (every axis is skipped or has one choice); remove names from "
                "--hparams-to-skip or raise --max-width-pruning / --max-depth-pruning"
            )
        ranks = {}
        for axis in adapter.axes(config):
            if any(a.kind == axis.kind for a in axes if a.kind != "depth"):
                ranks[axis.name] = group_ranks(unit_scores[axis.name], axis.groups).tolist()
        num_layers = adapter.num_layers(config)
        order = layer_order(layer_scores, kinds) if layer_scores is not None else list(range(num_layers))
        space = cls(config, axes, ranks, order, notes)
        if space.combinations > MAX_COMBINATIONS:
            raise PlanError(
                f"the elastic space has {space.combinations:,} combinations of sizes (more than "
                f"{MAX_COMBINATIONS:,}); lower --max-width-pruning, raise --divisors or add --hparams-to-skip"
            )
        return space

    def to_dict(self) -> dict:
        return {
            "axes": [{"key": a.key, "kind": a.kind, "choices": list(a.choices)} for a in self.axes],
            "ranks": {k: v.tolist() for k, v in self.ranks.items()},
            "layer_order": self.order,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, config, data: Mapping) -> ElasticSpace:
        axes = [RouterAxis(a["key"], a["kind"], tuple(a["choices"])) for a in data["axes"]]
        return cls(config, axes, data["ranks"], data["layer_order"], data.get("notes", ()))

    # ------------------------------------------------------------------ what a choice keeps
    @property
    def sizes(self) -> list[int]:
        return [len(a.choices) for a in self.axes]

    @property
    def combinations(self) -> int:
        return math.prod(self.sizes)

    @property
    def full(self) -> tuple[int, ...]:
        """The choice of the parent itself (the largest size on every axis)."""
        return tuple(n - 1 for n in self.sizes)

    def indicator_matrices(self) -> list[dict[str, torch.Tensor]]:
        """Per router axis: axis instance name (``layers`` for depth) -> [choices, units] 0/1 keep matrix."""
        out = []
        for a in self.axes:
            counts = torch.tensor(a.choices, dtype=torch.long)
            if a.kind == "depth":
                out.append({"layers": (self._layer_rank[None, :] < counts[:, None]).float()})
                continue
            mats = {}
            for inst in self._instances[a.key]:
                per_group = counts // inst.groups
                mats[inst.name] = (self.ranks[inst.name][None, :] < per_group[:, None]).float()
            out.append(mats)
        return out

    def weights(
        self, probs: Sequence[torch.Tensor], matrices: list[dict[str, torch.Tensor]] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
        """Unit and layer weights of the mixture ``probs`` (one [choices] probability vector per router axis):
        a unit's weight is the probability that the chosen size keeps it. One-hot ``probs`` give 0/1 masks."""
        matrices = matrices if matrices is not None else self.indicator_matrices()
        units, layers = {}, {}
        for p, mats in zip(probs, matrices):
            for name, m in mats.items():
                w = p.to(m.dtype) @ m.to(p.device)
                if name == "layers":
                    layers = {i: w[i] for i in range(len(w))}
                else:
                    units[name] = w
        return units, layers

    def hard_masks(self, choice: Sequence[int]) -> tuple[dict[str, torch.Tensor], dict[int, float]]:
        """The 0/1 unit and layer weights of exactly ``choice`` (for :meth:`MaskHandle.set`: what the sliced
        checkpoint of ``choice`` computes)."""
        units, layers = self.weights(self.one_hot(choice))
        return {k: v.detach() for k, v in units.items()}, {i: float(w) for i, w in layers.items()}

    def one_hot(self, choice: Sequence[int]) -> list[torch.Tensor]:
        return [torch.nn.functional.one_hot(torch.tensor(c), n).float() for c, n in zip(choice, self.sizes)]

    def export_sizes(self, choice: Sequence[int]) -> dict[str, int]:
        """ModelOpt export key -> size of ``choice`` (keys at the parent's size included)."""
        return {a.key: a.choices[c] for a, c in zip(self.axes, choice)}

    def kept_layers(self, choice: Sequence[int]) -> list[int]:
        n = self.export_sizes(choice).get("num_layers", len(self.order))
        return sorted(self.order[:n])

    def kept(self, choice: Sequence[int]) -> dict[str, list[int]]:
        """Axis instance name -> sorted kept units (and ``layers``) of ``choice``."""
        kept = {}
        for a, c in zip(self.axes, choice):
            if a.kind == "depth":
                kept["layers"] = self.kept_layers(choice)
                continue
            for inst in self._instances[a.key]:
                kept[inst.name] = torch.nonzero(self.ranks[inst.name] < a.choices[c] // inst.groups)[
                    :, 0
                ].tolist()
        return kept

    def plan(self, choice: Sequence[int]) -> Plan:
        return make_plan(self.config, self.kept(choice), self.adapter)

    # ------------------------------------------------------------------ costs
    def cost_tables(self, settings: Budget) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every targetable metric (``params``, ``active_params``, ``memory`` in bytes, ``latency`` in ms by the
        roofline estimate of ``settings``) of every combination, arrays of shape :attr:`sizes`, and whether the
        family's config accepts the combination."""
        kinds = self.adapter.layer_kinds(self.config)
        shape = self.sizes
        widths, layers = {}, {}
        for d, a in enumerate(self.axes):
            view = [1] * len(shape)
            view[d] = shape[d]
            if a.kind == "depth":
                counts = {k: [] for k in dict.fromkeys(kinds)}
                for n in a.choices:
                    kept = self.order[:n]
                    for k in counts:
                        counts[k].append(sum(kinds[i] == k for i in kept))
                layers = {k: np.asarray(v).reshape(view) for k, v in counts.items()}
            else:
                widths[a.kind] = np.asarray(a.choices).reshape(view)
        cost = CostModel(self.config)(widths, layers, settings.context_length, settings.batch_size,
                                      settings.torch_dtype)  # fmt: skip
        cost = {k: np.broadcast_to(v, shape) for k, v in cost.items()}
        metrics = {k: np.asarray(v, dtype=np.float64) for k, v in Budget(
            context_length=settings.context_length, batch_size=settings.batch_size, dtype=settings.dtype,
            device=settings.device).metrics(cost).items()}  # fmt: skip
        valid = (
            np.broadcast_to(self.adapter.valid_sizes(self.config, widths), shape)
            if widths
            else np.ones(shape, bool)
        )
        return metrics, np.asarray(valid)
