"""The registries of distillation losses: one name per loss, used by the config, the trainer and the CLI.

A KD loss is registered where its per-token function lives (``divergences.py`` for the full-vocabulary
divergences, ``logits.py`` for the cached top-k loss); an intermediate loss where it lives
(``hidden.py``). Adding a loss means writing its function, one ``register_*`` call beside it and its
test: :class:`~nemocompress.distill.DistillConfig` accepts the new name, ``nemocompress distill
--kd-loss`` / ``--intermediate`` offer it, and the trainer computes it (on the LM-head-fused path too
when it is a full-vocabulary divergence).

from nemocompress.distill.losses import kd_loss_names, kd_loss_spec
kd_loss_names()              # ('kl', 'rkl', 'jsd', 'tvd', 'topk-kl')
kd_loss_spec("jsd").hyperparameters   # {'beta': 'jsd_beta'}: keyword of the loss -> DistillConfig field
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

__all__ = [
    "KDLossSpec",
    "intermediate_loss",
    "intermediate_loss_names",
    "kd_loss_names",
    "kd_loss_spec",
    "register_intermediate_loss",
    "register_kd_loss",
]


@dataclass(frozen=True)
class KDLossSpec:
    """One logit-distillation loss.

    Attributes:
        name: the one spelling (config value, ``--kd-loss`` choice, ``divergence=`` argument).
        per_token: ``(log_p_student [..., V], log_p_teacher [..., V], **hyper) -> [...]`` over the full
            vocabulary, for a loss computed from both models' whole distributions (so it can be
            chunked and fused with the LM heads); None for a loss that reads something else of the
            teacher (``teacher="topk"``).
        teacher: what the loss reads of the teacher: ``"logits"`` (full logits, or its hidden state
            and LM head), ``"topk"`` (its top-k logits and their indices, e.g. from a teacher cache) or
            ``"aligned"`` (its full logits over its own tokenization of the same text: a cross-tokenizer
            loss, computed through ``cross_tokenizer``).
        hyperparameters: keyword of ``per_token`` (and of :func:`kd_loss`) -> the
            :class:`~nemocompress.distill.DistillConfig` field that sets it. The temperature applies
            to every loss and is not listed.
        aliases: older spellings still accepted as ``divergence=`` arguments (e.g. ``"forward_kl"``).
        summary: one line for help texts.
        cross_tokenizer: for ``teacher="aligned"``, a factory the trainer calls once with
            ``(name, student_tokenizer, teacher_tokenizer, **settings)``; it returns the micro-batch term
            ``(student_logits [B, S-1, V_s], input_ids [B, S], teacher, num_items) -> (loss, kd, ce)``
            (registered by :mod:`nemocompress.xtoken`, which ``import nemocompress.xtoken`` loads).
    """

    name: str
    per_token: Callable[..., Tensor] | None
    teacher: Literal["logits", "topk", "aligned"] = "logits"
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    summary: str = ""
    cross_tokenizer: Callable[..., Any] | None = None

    def settings(self, config: Any) -> dict[str, Any]:
        """The loss's hyper-parameters read from ``config`` (a DistillConfig), as keyword arguments."""
        return {keyword: getattr(config, name) for keyword, name in self.hyperparameters.items()}


_KD_LOSSES: dict[str, KDLossSpec] = {}
_KD_ALIASES: dict[str, str] = {}
_INTERMEDIATE: dict[str, Callable[..., Tensor]] = {}


def register_kd_loss(spec: KDLossSpec) -> KDLossSpec:
    """Add ``spec`` to the registry; a name or alias already taken raises ValueError."""
    for key in (spec.name, *spec.aliases):
        if key in _KD_LOSSES or key in _KD_ALIASES:
            raise ValueError(f"KD loss name {key!r} is already registered")
    if spec.per_token is None and spec.teacher == "logits":
        raise ValueError(f"KD loss {spec.name!r} reads full teacher logits, so it needs a per_token function")
    if (spec.teacher == "aligned") != (spec.cross_tokenizer is not None):
        raise ValueError(
            f"KD loss {spec.name!r}: a cross_tokenizer factory goes with teacher='aligned', only"
        )
    _KD_LOSSES[spec.name] = spec
    _KD_ALIASES.update({alias: spec.name for alias in spec.aliases})
    return spec


def kd_loss_names() -> tuple[str, ...]:
    """Registered KD loss names, in registration order (aliases not included)."""
    return tuple(_KD_LOSSES)


def kd_loss_spec(name: str) -> KDLossSpec:
    """The spec registered as ``name`` (or an alias of it); an unknown name raises ValueError naming the choices."""
    spec = _KD_LOSSES.get(_KD_ALIASES.get(name, name))
    if spec is None:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(kd_loss_names())}")
    return spec


def register_intermediate_loss(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator registering a hidden-state loss ``fn(student [..., D], teacher [..., D], *, labels, mask,
    ignore_index, num_items) -> scalar`` under ``name``."""

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _INTERMEDIATE:
            raise ValueError(f"intermediate loss name {name!r} is already registered")
        _INTERMEDIATE[name] = fn
        return fn

    return register


def intermediate_loss_names() -> tuple[str, ...]:
    """Registered intermediate (hidden-state) loss names, in registration order."""
    return tuple(_INTERMEDIATE)


def intermediate_loss(name: str) -> Callable[..., Tensor]:
    """The hidden-state loss registered as ``name``; an unknown name raises ValueError naming the choices."""
    try:
        return _INTERMEDIATE[name]
    except KeyError:
        raise ValueError(
            f"unknown intermediate loss {name!r}; choose one of {', '.join(intermediate_loss_names())}"
        ) from None
