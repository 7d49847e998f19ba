"""Descriptions of the building blocks that several families share (attention, MLPs, Mamba-2, experts).

Each function returns the :class:`TensorSpec` list of one block and, where needed, its :class:`MaskSite`
list. Axis names are ``layers.{i}.{kind}`` except the global ``hidden`` and ``layers`` (depth).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import ExpertsCall, MaskSite, ScoreSite, Segment, TensorSpec

__all__ = [
    "Block",
    "HIDDEN",
    "DEPTH",
    "SCORE_CHOICES",
    "axis_name",
    "hidden_dim",
    "embeddings",
    "norm",
    "attention",
    "gated_mlp",
    "plain_mlp",
    "mamba2_mixer",
    "mamba2_state_bytes",
    "fused_experts",
    "router",
]

HIDDEN = "hidden"
DEPTH = "layers"
#: every choice group of alternative score sites that a block offers: group -> variants, the default first.
#: Mamba-2: the x branch of in_proj (Minitron-SSM), its z branch, or out_proj's input.
SCORE_CHOICES: dict[str, tuple[str, ...]] = {"mamba": ("x", "z", "out_proj")}


@dataclass
class Block:
    """The description of one block: its tensors, mask sites and score sites."""

    specs: list[TensorSpec]
    masks: list[MaskSite] = field(default_factory=list)
    scores: list[ScoreSite] = field(default_factory=list)

    def __add__(self, other: Block) -> Block:
        return Block(self.specs + other.specs, self.masks + other.masks, self.scores + other.scores)


def axis_name(layer: int, kind: str) -> str:
    return f"layers.{layer}.{kind}"


def hidden_dim(d: int) -> tuple[Segment, ...]:
    return (Segment(d, outer=HIDDEN),)


def _units(n: int, axis: str, width: int = 1) -> tuple[Segment, ...]:
    return (Segment(n * width, outer=axis, inner_size=width),)


def embeddings(embed: str, vocab: int, d: int, tied: bool) -> Block:
    """Input embeddings and the LM head (``lm_head.weight``, tied to ``embed`` or not): hidden columns."""
    head = TensorSpec("lm_head.weight", (vocab, d), {1: hidden_dim(d)}, tied_to=embed if tied else None)
    return Block([TensorSpec(embed, (vocab, d), {1: hidden_dim(d)}), head])


def norm(name: str, d: int, layer: int | None) -> Block:
    """An RMSNorm over the hidden size: weight cut by the hidden axis, masked over kept channels.

    Its output scores the hidden channels (every norm feeds a mixer or the LM head)."""
    module = name.rsplit(".", 1)[0]
    return Block(
        [TensorSpec(name, (d,), {0: hidden_dim(d)}, layer)],
        [MaskSite(module, "rms_norm", hidden_dim(d))],
        [ScoreSite(module, "output", hidden_dim(d))],
    )


def _linear(prefix, out_dims, in_dims, shape, layer, bias) -> list[TensorSpec]:
    specs = [TensorSpec(f"{prefix}.weight", shape, {0: out_dims, 1: in_dims}, layer)]
    if bias:
        specs.append(TensorSpec(f"{prefix}.bias", (shape[0],), {0: out_dims}, layer))
    return specs


def attention(
    prefix: str,
    layer: int,
    d: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    qkv_bias: bool = False,
    o_bias: bool = False,
    qk_norm: bool = False,
) -> Block:
    """q/k/v/o projections; query heads are the unit (ranked within KV groups), KV heads are kept."""
    ax = axis_name(layer, "attention_heads")
    q_rows = _units(heads, ax, head_dim)
    every = (Segment(kv_heads * head_dim),)
    specs = _linear(f"{prefix}.q_proj", q_rows, hidden_dim(d), (heads * head_dim, d), layer, qkv_bias)
    for p in ("k_proj", "v_proj"):
        specs += _linear(f"{prefix}.{p}", every, hidden_dim(d), (kv_heads * head_dim, d), layer, qkv_bias)
    specs += _linear(f"{prefix}.o_proj", hidden_dim(d), q_rows, (d, heads * head_dim), layer, o_bias)
    if qk_norm:
        specs += [TensorSpec(f"{prefix}.{n}.weight", (head_dim,), {}, layer) for n in ("q_norm", "k_norm")]
    o_proj = f"{prefix}.o_proj"
    return Block(
        specs,
        [MaskSite(o_proj, "input_columns", q_rows)],
        [ScoreSite(o_proj, "input", q_rows, weight="weight")],
    )


def gated_mlp(
    prefix: str,
    layer: int,
    d: int,
    width: int,
    kind: str = "mlp",
    bias: bool = False,
    names=("gate_proj", "up_proj", "down_proj"),
) -> Block:
    """SwiGLU MLP: gate and up rows, down columns are the neurons."""
    gate, up, down = names
    cols = _units(width, axis_name(layer, kind))
    specs = _linear(f"{prefix}.{gate}", cols, hidden_dim(d), (width, d), layer, bias)
    specs += _linear(f"{prefix}.{up}", cols, hidden_dim(d), (width, d), layer, bias)
    specs += _linear(f"{prefix}.{down}", hidden_dim(d), cols, (d, width), layer, bias)
    return _down_sites(specs, f"{prefix}.{down}", cols)


def _down_sites(specs, down: str, cols) -> Block:
    return Block(
        specs, [MaskSite(down, "input_columns", cols)], [ScoreSite(down, "input", cols, weight="weight")]
    )


def plain_mlp(prefix: str, layer: int, d: int, width: int, kind: str = "mlp", bias: bool = False) -> Block:
    """Non-gated MLP (NemotronH relu^2): up rows, down columns."""
    cols = _units(width, axis_name(layer, kind))
    specs = _linear(f"{prefix}.up_proj", cols, hidden_dim(d), (width, d), layer, bias)
    specs += _linear(f"{prefix}.down_proj", hidden_dim(d), cols, (d, width), layer, bias)
    return _down_sites(specs, f"{prefix}.down_proj", cols)


def mamba2_state_bytes(
    heads: int,
    head_dim: int,
    groups: int,
    state: int,
    conv_kernel: int,
    conv_dtype: torch.dtype,
    ssm_dtype: torch.dtype,
) -> int:
    """Bytes of one sequence's Mamba-2 cache: conv window over [x | B | C] plus the [H, P, N] SSM state."""
    conv = (heads * head_dim + 2 * groups * state) * conv_kernel * conv_dtype.itemsize
    return conv + heads * head_dim * state * ssm_dtype.itemsize


def mamba2_mixer(
    prefix: str,
    layer: int,
    d: int,
    heads: int,
    head_dim: int,
    groups: int,
    state: int,
    conv_kernel: int,
    conv_bias: bool,
    proj_bias: bool,
    norm_groups: int | None = None,
) -> Block:
    """Mamba-2 mixer, with the slicing arithmetic of METHODS.md section 2.

    in_proj rows are [z: I | x: I | B: GN | C: GN | dt: H]; conv1d channels [x | B | C]. Heads and head
    channels are cut; B, C, n_groups and the state size are never cut. ``norm_groups`` is how many groups
    the installed transformers' gated RMSNorm takes its variance over (``groups`` unless given).
    """
    heads_ax, dim_ax = axis_name(layer, "mamba_heads"), axis_name(layer, "mamba_head_dim")
    inner = heads * head_dim
    gn = groups * state
    ch = Segment(inner, outer=heads_ax, inner=dim_ax, inner_size=head_dim)
    bc = Segment(gn)
    per_head = (Segment(heads, outer=heads_ax),)
    in_rows = (ch, ch, bc, bc, Segment(heads, outer=heads_ax))
    conv_rows = (ch, bc, bc)
    specs = _linear(
        f"{prefix}.in_proj", in_rows, hidden_dim(d), (2 * inner + 2 * gn + heads, d), layer, proj_bias
    )
    specs.append(
        TensorSpec(f"{prefix}.conv1d.weight", (inner + 2 * gn, 1, conv_kernel), {0: conv_rows}, layer)
    )
    if conv_bias:
        specs.append(TensorSpec(f"{prefix}.conv1d.bias", (inner + 2 * gn,), {0: conv_rows}, layer))
    specs += [TensorSpec(f"{prefix}.{n}", (heads,), {0: per_head}, layer) for n in ("dt_bias", "A_log", "D")]
    specs.append(TensorSpec(f"{prefix}.norm.weight", (inner,), {0: (ch,)}, layer))
    specs += _linear(f"{prefix}.out_proj", hidden_dim(d), (ch,), (d, inner), layer, proj_bias)
    in_proj, out_proj = f"{prefix}.in_proj", f"{prefix}.out_proj"
    group = "mamba"

    def site(module, where, variant, start=0, weight=None):
        return ScoreSite(module, where, (ch,), start, (group, variant), SCORE_CHOICES[group], weight)

    scores = [
        site(in_proj, "output", "x", start=inner),
        site(in_proj, "output", "z", start=0),
        site(out_proj, "input", "out_proj", weight="weight"),
    ]
    norm_site = MaskSite(f"{prefix}.norm", "gated_rms_norm", (ch,), groups=norm_groups or groups)
    return Block(specs, [norm_site], scores)


def fused_experts(
    prefix: str,
    layer: int,
    d_in: int,
    num_experts: int,
    width: int,
    call: ExpertsCall,
    hidden_cut: bool,
) -> Block:
    """Routed experts stored fused, ``[E, F(*2), D_in]`` and ``[E, D_in, F]``.

    ``call``: how the family's experts module is called and computes (its parameter names, activation and
    gating). ``hidden_cut`` is False for latent MoE (experts work in the latent width, which is not cut).
    """
    experts = (Segment(num_experts, outer=axis_name(layer, "experts")),)
    ffn = Segment(width, outer=axis_name(layer, "expert_ffn"))
    d = hidden_dim(d_in) if hidden_cut else (Segment(d_in),)
    up_rows = (ffn, ffn) if call.gated else (ffn,)
    up, down = call.up, call.down
    rows = width * (2 if call.gated else 1)
    specs = [
        TensorSpec(
            f"{prefix}.{up}", (num_experts, rows, d_in), {0: experts, 1: up_rows, 2: d}, layer, routed=True
        ),
        TensorSpec(
            f"{prefix}.{down}", (num_experts, d_in, width), {0: experts, 1: d, 2: (ffn,)}, layer, routed=True
        ),
    ]
    site = ScoreSite(prefix, "input", (experts[0], ffn), how="experts", experts=call)
    return Block(specs, [MaskSite(prefix, "input_columns", (ffn,), param=down)], [site])


def router(
    prefix: str,
    layer: int,
    d: int,
    num_experts: int,
    flavor: str,
    correction_bias: bool = False,
    groups: int = 1,
) -> Block:
    """Router weight ``[E, D]`` (and NemotronH's ``e_score_correction_bias`` buffer)."""
    experts = (Segment(num_experts, outer=axis_name(layer, "experts")),)
    specs = [TensorSpec(f"{prefix}.weight", (num_experts, d), {0: experts, 1: hidden_dim(d)}, layer)]
    if correction_bias:
        specs.append(
            TensorSpec(f"{prefix}.e_score_correction_bias", (num_experts,), {0: experts}, layer, buffer=True)
        )
    return Block(specs, [MaskSite(prefix, "router", experts, flavor=flavor, groups=groups)])
