"""The data that describes a model family: prunable axes, the tensors they cut, and where masks act.

An adapter turns a transformers config into three lists of plain data:

- ``axes``: every prunable axis instance (the hidden channels, the query heads of layer 3, ...),
- ``tensors``: every parameter, its shape, and for each dimension the segments that axes select,
- ``mask_sites``: where a mask acts so that a masked forward equals the sliced model's forward.

importance/, prune/ and elastic/ consume these lists and never ask which family a model is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import PlanError

__all__ = [
    "AXIS_KINDS",
    "DEFAULT_DIVISORS",
    "Axis",
    "Segment",
    "TensorSpec",
    "MaskSite",
    "ScoreSite",
    "ExpertsCall",
    "DiskKey",
    "Adapter",
    "dim_indices",
    "disk_dims",
    "select",
]

AXIS_KINDS = (
    "hidden",
    "attention_heads",
    "mlp",
    "mamba_heads",
    "mamba_head_dim",
    "experts",
    "expert_ffn",
    "shared_ffn",
    "depth",
)

#: Search divisors per ModelOpt export key: a width is searched in multiples of its divisor. ModelOpt's
#: defaults for hybrid models (hidden 256, FFN 512, Mamba head dim 8, experts 8, layers 2); the expert and
#: shared-expert widths (which ModelOpt's defaults leave alone) use 256, head counts their groups.
DEFAULT_DIVISORS = {
    "hidden_size": 256,
    "ffn_hidden_size": 512,
    "num_attention_heads": 1,
    "mamba_num_heads": 1,
    "mamba_head_dim": 8,
    "num_moe_experts": 8,
    "moe_ffn_hidden_size": 256,
    "moe_shared_expert_intermediate_size": 256,
    "num_layers": 2,
}

Kept = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Axis:
    """One prunable axis instance.

    ``units`` form ``groups`` contiguous blocks of equal size; a plan keeps the same count in every block
    (query heads per KV group, Mamba heads per B/C group, experts per routing group). ``group_field``
    names the config field that counts the groups, for messages (e.g. ``num_key_value_heads``).
    """

    name: str
    kind: str
    size: int
    layer: int | None = None
    groups: int = 1
    group_field: str | None = None

    @property
    def group_size(self) -> int:
        return self.size // self.groups


@dataclass(frozen=True)
class Segment:
    """A contiguous run of ``length`` positions along one tensor dimension.

    The run is ``length // inner_size`` blocks of ``inner_size``; axis ``outer`` picks blocks and
    axis ``inner`` picks positions inside every block (the same ones in each). A missing axis keeps all.
    Example: Mamba x-channels are ``Segment(H * P, outer=heads, inner=head_dim, inner_size=P)``.
    """

    length: int
    outer: str | None = None
    inner: str | None = None
    inner_size: int = 1

    def indices(self, kept: Kept) -> torch.Tensor | None:
        """Kept positions inside the segment, or None when the segment keeps everything."""
        outer = kept.get(self.outer) if self.outer else None
        inner = kept.get(self.inner) if self.inner else None
        if outer is None and inner is None:
            return None
        if outer is None:
            outer = torch.arange(self.length // self.inner_size)
        if inner is None:
            inner = torch.arange(self.inner_size)
        return (outer[:, None] * self.inner_size + inner[None, :]).reshape(-1)

    def axes(self) -> tuple[str, ...]:
        return tuple(a for a in (self.outer, self.inner) if a)


def dim_indices(segments: Sequence[Segment], kept: Kept) -> torch.Tensor | None:
    """Kept positions along a dimension made of ``segments`` laid end to end; None keeps all."""
    parts, offset, any_cut = [], 0, False
    for seg in segments:
        idx = seg.indices(kept)
        if idx is None:
            idx = torch.arange(seg.length)
        else:
            any_cut = True
        parts.append(idx + offset)
        offset += seg.length
    return torch.cat(parts) if any_cut else None


@dataclass(frozen=True)
class TensorSpec:
    """A parameter (in the in-memory naming of transformers) and how axes cut it."""

    name: str
    shape: tuple[int, ...]
    dims: Mapping[int, tuple[Segment, ...]] = field(default_factory=dict)
    layer: int | None = None
    tied_to: str | None = None  # a tied weight: same storage as ``tied_to``, counted once
    buffer: bool = False  # a persistent buffer: saved and sliced, not counted as a parameter
    routed: bool = False  # routed-expert weights: only top-k of E are active per token

    def axes(self) -> set[str]:
        return {a for segs in self.dims.values() for s in segs for a in s.axes()}


def select(tensor: torch.Tensor, dims: Mapping[int, Sequence[Segment]], kept: Kept) -> torch.Tensor:
    """Cut ``tensor`` to the kept positions of every described dimension (a copy when anything is cut)."""
    for dim, segs in dims.items():
        idx = dim_indices(segs, kept)
        if idx is not None:
            tensor = tensor.index_select(dim, idx.to(tensor.device))
    return tensor


@dataclass(frozen=True)
class MaskSite:
    """Where a mask acts on a loaded model.

    ``how``:
      - ``rms_norm``: the RMSNorm at ``module`` normalizes over kept channels only and zeroes the rest;
      - ``gated_rms_norm``: the same for a grouped, gated RMSNorm (Mamba), variance per group over kept channels;
      - ``input_columns``: columns (last dim) of ``module``'s parameter ``param`` are multiplied by the mask;
      - ``router``: experts left out are never routed to (``flavor`` ``softmax`` or ``sigmoid_bias``).

    Depth needs no site: a dropped layer returns its input (see ``masking.bypass_layers``).
    """

    module: str
    how: str
    segments: tuple[Segment, ...] = ()
    param: str = "weight"
    groups: int = 1
    flavor: str = ""


@dataclass(frozen=True)
class ExpertsCall:
    """How a fused-experts module is called and what it computes, so that importance/ can run it itself.

    The module's forward takes, in the order of ``args`` (by position or by these names), the token states
    ``[T, D]``, the routed expert indices ``[T, k]`` and their routing weights ``[T, k]``, and returns
    ``[T, D]``: the weighted sum over the k experts of ``down[e] @ f(up[e] @ x)``. ``up`` and ``down`` name
    the parameters ``[E, F (x2 when gated), D]`` and ``[E, D, F]``; ``activation`` names the module's
    elementwise activation attribute. ``gated``: up's rows are ``[gate | up]`` halves and
    ``f(u) = act(gate) * up`` (SwiGLU); otherwise ``f(u) = act(u)``.
    """

    args: tuple[str, str, str] = ("hidden_states", "top_k_index", "top_k_weights")
    up: str = "gate_up_proj"
    down: str = "down_proj"
    activation: str = "act_fn"
    gated: bool = True


@dataclass(frozen=True)
class ScoreSite:
    """An activation that scores axes: the last dim of ``module``'s output (or first input), from ``start``.

    ``segments`` map those channels to axes as in :class:`TensorSpec`. ``choice`` = (group, variant) marks
    alternatives of which one is used at a time (Mamba: x-branch, z-branch or out_proj input);
    ``variants`` lists every variant of the group, its default first.
    ``weight``: the module's weight whose columns these channels multiply (an output projection; FLAP uses
    it). ``how`` is ``activation``, or ``experts`` for a fused-experts module (REAP and expert neurons;
    then ``segments`` are (experts, expert_ffn) and ``experts`` says how the module is called).
    """

    module: str
    where: str
    segments: tuple[Segment, ...]
    start: int = 0
    choice: tuple[str, str] | None = None
    variants: tuple[str, ...] = ()
    weight: str | None = None
    how: str = "activation"
    experts: ExpertsCall | None = None

    def __post_init__(self):
        if self.choice is not None and self.choice[1] not in self.variants:
            raise ValueError(f"{self.key}: variant {self.choice[1]!r} is not one of {self.variants}")
        if (self.how == "experts") != (self.experts is not None):
            raise ValueError(f"{self.key}: an experts site (and only one) says how its module is called")

    @property
    def key(self) -> str:
        return f"{self.module}:{self.where}:{self.start}"

    @property
    def width(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def default(self) -> bool:
        """Whether this site is used when its choice group is left unset (sites without a choice: always)."""
        return self.choice is None or self.choice[1] == self.variants[0]


@dataclass(frozen=True)
class DiskKey:
    """A checkpoint key decoded into the in-memory parameter it belongs to.

    ``expert``: the key holds one expert of a fused ``[E, ...]`` parameter. ``part``: it holds only segment
    ``part`` of the parameter's dimension ``part_dim`` (a gate half of a fused gate_up projection).
    """

    memory_name: str
    expert: int | None = None
    part: int | None = None
    part_dim: int = 0


def disk_dims(spec: TensorSpec, key: DiskKey) -> Mapping[int, tuple[Segment, ...]]:
    """How axes cut a checkpoint tensor that holds one expert (and maybe one part) of ``spec``."""
    if key.expert is None:
        return spec.dims
    dims = {}
    for dim, segs in spec.dims.items():
        if dim == 0:
            continue
        if key.part is not None and dim == key.part_dim:
            segs = (segs[key.part],)
        dims[dim - 1] = segs
    return dims


@dataclass(frozen=True)
class _DiskPattern:
    disk: re.Pattern
    memory: str
    part: int | None = None
    part_dim: int = 1


class Adapter:
    """Base class: subclasses describe one family. Everything here is generic over the description."""

    model_types: tuple[str, ...] = ()
    #: ModelOpt export key -> axis kind
    export_keys: Mapping[str, str] = {}
    #: in-memory prefix of the decoder layers, e.g. ``model.layers``
    layers_prefix: str = "model.layers"
    #: (disk prefix, memory prefix) renames, applied before expert patterns
    disk_renames: tuple[tuple[str, str], ...] = ()
    #: per-expert disk keys: (regex on the memory-renamed key with groups (layer, expert), memory name template,
    #: part index or None); the template uses {layer}
    disk_experts: tuple[tuple[str, str, int | None], ...] = ()

    # ---- to be provided by each family -------------------------------------------------------------
    def axes(self, config) -> list[Axis]:
        raise NotImplementedError

    def describe(self, config):
        """The whole model as one ``blocks.Block``: every tensor, mask site and score site."""
        raise NotImplementedError

    def sized_config(self, config, sizes: Mapping[str, int], kept_layers: Sequence[int]) -> dict:
        """Config fields to change for uniform new ``sizes`` (axis kind -> count) and the kept layers."""
        raise NotImplementedError

    def num_layers(self, config) -> int:
        return config.num_hidden_layers

    def layer_kinds(self, config) -> list[str]:
        """One word per decoder layer naming what it holds (for tables and cost models)."""
        raise NotImplementedError

    def kv_cache_layers(self, config) -> list[int]:
        """Layers that keep a KV cache (attention)."""
        raise NotImplementedError

    def kv_width(self, config) -> int:
        """Key (= value) channels per token of one attention layer: KV heads x head dim."""
        return 0

    def state_bytes_per_layer(self, config, dtype: torch.dtype) -> list[int]:
        """Per decoder layer, bytes of one sequence's recurrent and conv state (0 where a layer keeps none,
        e.g. attention, whose KV cache grows with the context instead). ``dtype``: the activations' dtype."""
        return [0] * self.num_layers(config)

    def experts_per_token(self, config) -> int:
        """Routed experts each token uses (0 for dense families)."""
        return 0

    def moe_active_fraction(self, config) -> float:
        """Fraction of routed-expert parameters used per token."""
        return 1.0

    def check_layers(self, config, kept_layers: Sequence[int]) -> None:
        """Refuse a set of kept layers that the family cannot run with."""
        if not kept_layers:
            raise PlanError("a plan must keep at least one layer")

    def check_sizes(self, config, sizes: Mapping[str, int]) -> None:
        """Refuse new sizes (axis kind -> count) that the family cannot run with."""
        top_k = self.experts_per_token(config)
        if "experts" in sizes and sizes["experts"] < top_k:
            raise PlanError(
                f"cannot keep {sizes['experts']} experts: every token is routed to {top_k}; keep at least {top_k}"
            )

    def valid_sizes(self, config, sizes: Mapping[str, np.ndarray]):
        """Which combinations of uniform sizes the family's config accepts, for many at once.

        ``sizes``: axis kind -> integer array of counts (all arrays broadcast together; a kind left out keeps
        its current size). Returns a boolean array (or ``True``): the rules of :meth:`check_sizes` and of
        the family's transformers config, as arithmetic, so that a search can filter thousands of
        candidates without building a config for each.
        """
        top_k = self.experts_per_token(config)
        return np.asarray(sizes["experts"]) >= top_k if "experts" in sizes and top_k else True

    def attention_head_dim(self, config) -> int:
        """Channels per attention head (query, key and value alike); 0 for a family without attention."""
        return 0

    # ---- generic -----------------------------------------------------------------------------------
    def tensors(self, config) -> list[TensorSpec]:
        return self.describe(config).specs

    def mask_sites(self, config) -> list[MaskSite]:
        return self.describe(config).masks

    def score_sites(self, config) -> list[ScoreSite]:
        return self.describe(config).scores

    def score_choices(self, config) -> dict[str, tuple[str, ...]]:
        """Alternative score sites of this model: group -> its variants, the default first
        (e.g. ``{"mamba": ("x", "z", "out_proj")}``; empty when the model has none)."""
        return {s.choice[0]: s.variants for s in self.score_sites(config) if s.choice is not None}

    def trunk(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that maps ``input_ids`` to the last hidden state (final norm included), e.g.
        ``model.model``; its output's ``last_hidden_state`` is what the LM head reads."""
        return model.get_submodule(self.layers_prefix.rsplit(".", 1)[0])

    def lm_head(self, model: torch.nn.Module) -> torch.nn.Module:
        """The LM head: a module mapping the trunk's last hidden state ``[..., D]`` to logits ``[..., V]``."""
        return model.get_output_embeddings()

    def axis_map(self, config) -> dict[str, Axis]:
        return {a.name: a for a in self.axes(config)}

    def renumber(self, name: str, new_layer: int) -> str:
        prefix = self.layers_prefix + "."
        rest = name[len(prefix) :].split(".", 1)[1]
        return f"{prefix}{new_layer}.{rest}"

    @functools.cached_property
    def _patterns(self) -> list[_DiskPattern]:
        return [_DiskPattern(re.compile(rx), mem, part) for rx, mem, part in self.disk_experts]

    def decode_disk_key(self, key: str) -> tuple[DiskKey, re.Match | None]:
        """Map a checkpoint key to its in-memory parameter (and expert / part), see :class:`DiskKey`."""
        name = key
        for disk, memory in self.disk_renames:
            name = name.replace(disk, memory)
        for pat in self._patterns:
            m = pat.disk.fullmatch(name)
            if m:
                memory = pat.memory.format(layer=m.group(1))
                return DiskKey(memory, expert=int(m.group(2)), part=pat.part, part_dim=pat.part_dim), m
        return DiskKey(name), None

    def encode_disk_key(self, key: str, new_layer: int | None, new_expert: int | None) -> str:
        """The checkpoint key ``key`` renumbered to a new layer and expert index, in the same layout."""
        layer_rx = r"(^|\.)(layers\.)(\d+)(\.)"
        if new_layer is not None:
            key = re.sub(layer_rx, lambda m: f"{m.group(1)}{m.group(2)}{new_layer}{m.group(4)}", key, count=1)
        if new_expert is not None:
            key = re.sub(
                r"(experts\.)(\d+)(\.)", lambda m: f"{m.group(1)}{new_expert}{m.group(3)}", key, count=1
            )
        return key
