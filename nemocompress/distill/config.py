"""One validated config for a distillation run; the CLI, YAML files and notebooks share it.

config = DistillConfig(teacher="parent", student="pruned", data="text/", output_dir="out", steps=200)
config = DistillConfig.from_yaml("distill.yaml", steps=50)   # keyword overrides win over the file
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import NemocompressError
from ..settings import read_settings
from .losses import intermediate_loss_names, kd_loss_names, kd_loss_spec

__all__ = [
    "CONFIG_VERSION",
    "DistillConfig",
    "DistillError",
    "INTERMEDIATE_LOSSES",
    "KD_LOSSES",
    "CE_MIXES",
    "MIXED_PRECISIONS",
    "RESUME_MAY_CHANGE",
    "TEACHER_SELECTS",
]

CONFIG_VERSION = 1
# The registered names when this module was imported; the validator reads the registries themselves.
KD_LOSSES = kd_loss_names()
INTERMEDIATE_LOSSES = intermediate_loss_names()
MIXED_PRECISIONS = ("auto", "no", "bf16")
CE_MIXES = ("dynamic", "fixed")
TEACHER_SELECTS = ("weighted", "min-ce")
# Fields that may differ between a run and its resumption: none changes what a step computes (the global
# batch, batch_size x grad_accum x processes, is checked on its own).
RESUME_MAY_CHANGE = frozenset(
    {
        "steps", "eval_every", "save_every", "keep_checkpoints", "resume", "overwrite", "progress",
        "trackers", "version", "batch_size", "grad_accum", "chunk_size", "fused_head",
    }
)  # fmt: skip


class DistillError(NemocompressError, ValueError):
    """A distillation setting or input is wrong; the message names the fix."""


@dataclass
class DistillConfig:
    """Everything a distillation run needs. Validated on construction; unknown values raise DistillError.

    Inputs:
        teacher: checkpoint directory of the frozen teacher, or a list of them for several teachers
            (``--teacher`` repeated). Optional with ``teacher_cache`` (training then never runs the teacher)
            or when nothing needs it (``kd_weight=0`` and no intermediate loss).
        student: checkpoint directory of the student to train (e.g. a pruned teacher).
        data: text file, folder or .jsonl (:func:`nemocompress.data.load_texts`); tokenized with the
            student's tokenizer, split by document into train and held-out parts
            (``heldout_fraction``, ``seed``). Not needed with ``teacher_cache``, which holds the tokens.
        teacher_cache: directory written by :func:`nemocompress.distill.cache_teacher`: the tokens and the
            teacher's top-k logits. Requires ``kd_loss="topk-kl"``; a cross-tokenizer cache (written with
            ``student``, see there) requires ``pkl``, ``hkl``, ``uld`` or ``gold`` and is read whole (all its
            k logits per teacher position).
        output_dir: holds ``checkpoints/``, ``metrics.jsonl``, ``loss_curve.png``, ``distill_config.yaml``
            and, at the end, ``final/`` (a stock Hugging Face checkpoint of the student).

    Optimization: ``steps`` optimizer steps, each over ``batch_size`` sequences per process and
    micro-batch x ``grad_accum`` micro-batches x the number of processes (the global batch) of ``seq_len``
    tokens. AdamW (``lr``, ``weight_decay``, betas (0.9, 0.95)), linear warmup over ``warmup_steps``
    (None: 5% of ``steps``) then cosine decay to ``min_lr`` (METHODS 3: 1e-4 -> 1e-5). Gradients are
    clipped to ``max_grad_norm`` (None: no clipping).

    Loss: ``kd_weight * KD + ce_weight * CE + alpha * intermediate``, every term averaged over the
    tokens of the global batch. ``kd_loss``: ``kl`` forward KL(teacher || student) (default, as the
    papers), ``rkl`` reverse KL, ``jsd`` generalized JSD with ``jsd_beta``, ``tvd`` total variation,
    ``topk-kl`` forward KL against the teacher's ``top_k`` logits (from ``teacher_cache``, or computed
    live); with ``import nemocompress.xtoken`` (the CLI and :mod:`nemocompress.api` load it) also the
    cross-tokenizer losses ``pkl``, ``hkl``, ``uld`` and ``gold`` for a teacher with another tokenizer
    (``projection``: a W file from ``nemocompress xtoken map``, else W is built and cached beside
    ``output_dir``; ``ce_mix``: ``dynamic`` mixes CE as sg(CE/KD) * KD + CE, ``fixed`` uses
    ``kd_weight`` / ``ce_weight``; evaluation then reports loss and bits per byte, not KL to the
    teacher). ``temperature`` softens both distributions (loss times T^2). ``intermediate``: ``cosine`` or
    ``mse`` between hidden states of ``layer_map`` pairs ``(student_layer, teacher_layer)`` indexing
    ``output_hidden_states`` (0 = embeddings; None maps student layer i to teacher layer
    round(i * L_t / L_s), i = 1..L_s), through a learned projection when widths differ;
    ``intermediate_weight`` None uses the dynamic alpha = KD / intermediate (Minitron).

    Several teachers (``teacher`` a list): the KD term is ``sum_i w_i * KD_i`` with ``teacher_weight``
    (one non-negative weight per teacher, in order, relative: divided by their sum; None: equal), or,
    with ``teacher_select="min-ce"``, per micro-batch the KD term of the teacher with the lowest
    cross-entropy on that batch's text (per token with the student's tokenizer; per byte for the
    cross-tokenizer losses, where each teacher reads its own tokens), counted per teacher in the metrics
    (``teacher_picks``). CE is mixed on top as for one teacher. Every teacher is compared by the one
    ``kd_loss``: under ``kl`` (and the other same-tokenizer losses) each must share the student's
    vocabulary; under ``pkl``/``hkl``/``uld``/``gold`` each gets its own W (``projection`` a list in the
    teachers' order, or W built and cached per teacher beside ``output_dir``), and a teacher with the
    student's tokenizer gets the identity W (P-KL then is forward KL). Several teachers are computed on
    the logits path (no fused LM head), need no intermediate loss and no teacher cache; evaluation's
    KL and top-1 are to the first teacher.

    Evaluation every ``eval_every`` steps (0: only before and after) on ``eval_samples`` held-out
    sequences: loss, KL to the teacher and bits per byte. Checkpoints every ``save_every`` steps
    (0: none), the last ``keep_checkpoints`` kept. ``resume`` continues from the latest checkpoint in
    ``output_dir``; ``overwrite`` deletes an existing ``output_dir`` and starts over.

    ``mixed_precision``: ``auto`` is bf16 autocast on GPU (the teacher is loaded in bf16) and float32 on
    CPU. ``shard_teacher``: under FSDP, shard the teacher like the student instead of keeping a full copy
    on every device (accelerate then also saves its shards in each checkpoint). ``trackers``: accelerate
    tracker names (e.g. ``["tensorboard"]``), logged under ``output_dir``. ``chunk_size``: tokens per chunk
    of the KD loss (None: the loss picks). ``fused_head``: compute KD and CE from both models' final
    hidden states with the LM heads fused into the chunked loss, so no step holds either model's full
    ``[tokens, vocab]`` logits (the default; same values as the logits path up to float rounding). It
    applies when both models' trunk and LM head are known (:meth:`~nemocompress.arch.Adapter.trunk`) and
    the KD loss compares full distributions; otherwise, and with ``fused_head=False``
    (``--no-fused-head``), the trainer computes the logits and says once why.

    A field with ``help`` metadata is a command-line flag of ``nemocompress distill`` (built by
    :mod:`nemocompress.cli` from the metadata: ``help``, and where needed ``flags``, ``choices`` (a tuple or
    a function returning one), ``default_help`` (words for a None default)); its default lives here only.
    A bool field that defaults to True is the flag ``--no-NAME``.
    """

    teacher: str | list[str] | None = field(
        default=None,
        metadata={"help": "teacher checkpoint directory; repeat for several teachers", "repeat": True},
    )
    teacher_weight: list[float] | None = field(
        default=None,
        metadata={
            "help": "weight of each --teacher in order, repeated (relative: divided by their sum)",
            "repeat": True,
            "default_help": "equal",
        },
    )
    teacher_select: str = field(
        default="weighted",
        metadata={
            "help": "several teachers: weighted sum of their KD terms, or per batch the one with the lowest CE",
            "choices": TEACHER_SELECTS,
        },
    )
    student: str | None = field(
        default=None, metadata={"help": "student checkpoint directory (e.g. a pruned teacher)"}
    )
    data: str | None = field(
        default=None, metadata={"help": "text file, folder or .jsonl (its train split is trained on)"}
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "output directory (checkpoints, metrics, final/)", "flags": ("-o", "--output")},
    )
    teacher_cache: str | None = field(
        default=None, metadata={"help": "top-k logits from `nemocompress cache-teacher`"}
    )
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    seq_len: int = field(default=512, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=4, metadata={"help": "sequences per micro-batch and process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-5, metadata={"help": "end of the cosine decay"})
    warmup_steps: int | None = field(
        default=None, metadata={"help": "linear warmup steps", "default_help": "5% of --steps"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = 1.0
    kd_loss: str = field(default="kl", metadata={"help": "logit divergence", "choices": kd_loss_names})
    kd_weight: float = field(default=1.0, metadata={"help": "weight of the KD term"})
    jsd_beta: float = field(default=0.5, metadata={"help": "beta of --kd-loss jsd"})
    top_k: int = field(default=64, metadata={"help": "teacher logits kept by topk-kl"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature"})
    projection: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "cross-tokenizer projection W from `nemocompress xtoken map` (pkl, hkl); one per --teacher",
            "default_help": "built and cached beside -o",
            "repeat": True,
        },
    )
    ce_mix: str = field(
        default="dynamic",
        metadata={
            "help": "how a cross-tokenizer loss mixes CE: dynamic sg(CE/KD)*KD + CE, or fixed --kd-weight/--ce-weight",
            "choices": CE_MIXES,
        },
    )
    ce_weight: float = field(default=0.0, metadata={"help": "weight of the next-token CE term"})
    intermediate: str | None = field(
        default=None,
        metadata={"help": "hidden-state loss", "choices": intermediate_loss_names, "default_help": "none"},
    )
    intermediate_weight: float | None = field(
        default=None,
        metadata={"help": "weight of the hidden-state loss", "default_help": "dynamic, KD / intermediate"},
    )
    layer_map: list[tuple[int, int]] | None = None
    eval_every: int = field(
        default=100, metadata={"help": "held-out evaluation period in steps, 0: only before and after"}
    )
    eval_samples: int = field(default=16, metadata={"help": "held-out sequences evaluated"})
    save_every: int = field(default=100, metadata={"help": "checkpoint period in steps, 0: none"})
    keep_checkpoints: int = field(default=1, metadata={"help": "checkpoints kept"})
    heldout_fraction: float = field(default=0.1, metadata={"help": "share of documents held out"})
    seed: int = field(default=0, metadata={"help": "data split and order"})
    mixed_precision: str = field(
        default="auto",
        metadata={"help": "auto: bf16 autocast on GPU, float32 on CPU", "choices": MIXED_PRECISIONS},
    )
    shard_teacher: bool = field(
        default=False, metadata={"help": "under FSDP, shard the teacher like the student"}
    )
    chunk_size: int | None = field(
        default=None,
        metadata={"help": "tokens per chunk of the KD loss", "default_help": "chosen by the loss"},
    )
    fused_head: bool = field(
        default=True,
        metadata={"help": "compute full logits instead of fusing the LM heads into the chunked loss"},
    )
    trackers: list[str] = field(default_factory=list)
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in -o"})
    overwrite: bool = field(default=False, metadata={"help": "delete the output directory and start over"})
    progress: bool = field(default=True, metadata={"help": "no progress bar"})
    version: int = CONFIG_VERSION

    def __post_init__(self):
        for name in ("student", "data", "output_dir", "teacher_cache"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        for name in ("teacher", "projection"):  # one path, or a list of several (a list of one is the path)
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                value = [str(v) for v in value]
                value = value[0] if len(value) == 1 else (value or None)
            setattr(self, name, None if value is None else value if isinstance(value, list) else str(value))
        if isinstance(self.teacher_weight, int | float):
            self.teacher_weight = [self.teacher_weight]
        if self.teacher_weight is not None:
            try:
                self.teacher_weight = [float(w) for w in self.teacher_weight]
            except (TypeError, ValueError):
                raise DistillError(
                    f"teacher_weight must be numbers, one per teacher; got {self.teacher_weight!r}"
                ) from None
        if self.layer_map is not None:
            self.layer_map = [tuple(int(i) for i in pair) for pair in self.layer_map]
        self.trackers = list(self.trackers or [])
        self._check()

    def _check(self) -> None:
        if self.version != CONFIG_VERSION:
            raise DistillError(f"config version {self.version} is not supported (this is {CONFIG_VERSION})")
        if self.student is None:
            raise DistillError("no student: pass --student DIR (a checkpoint directory)")
        if self.output_dir is None:
            raise DistillError("no output directory: pass -o OUT")
        if self.data is None and self.teacher_cache is None:
            raise DistillError(
                "no data: pass --data PATH (text file, folder or .jsonl) or --teacher-cache DIR"
            )
        try:
            self.kd_loss = kd_loss_spec(self.kd_loss).name  # an older spelling (alias) becomes the name
        except (TypeError, ValueError):
            raise DistillError(
                f"kd_loss must be one of {', '.join(kd_loss_names())}; got {self.kd_loss!r} (the cross-tokenizer "
                "losses pkl, hkl, uld and gold are registered by `import nemocompress.xtoken`)"
            ) from None
        for name, allowed in (
            ("mixed_precision", MIXED_PRECISIONS),
            ("ce_mix", CE_MIXES),
            ("intermediate", (None, *intermediate_loss_names())),
        ):
            if getattr(self, name) not in allowed:
                choices = ", ".join(str(a) for a in allowed)
                raise DistillError(f"{name} must be one of {choices}; got {getattr(self, name)!r}")
        for name in (
            "steps",
            "seq_len",
            "batch_size",
            "grad_accum",
            "eval_samples",
            "top_k",
            "keep_checkpoints",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("eval_every", "save_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.seq_len < 2:
            raise DistillError(f"seq_len must be at least 2 (one input and one target), got {self.seq_len}")
        if self.warmup_steps is not None:
            _check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.chunk_size is not None:
            _check_int("chunk_size", self.chunk_size, minimum=1)
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise DistillError(f"need lr > 0 and 0 <= min_lr <= lr; got lr={self.lr}, min_lr={self.min_lr}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise DistillError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}")
        if not self.temperature > 0:
            raise DistillError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise DistillError(f"jsd_beta must lie in [0, 1], got {self.jsd_beta}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise DistillError(
                f"heldout_fraction must lie strictly between 0 and 1, got {self.heldout_fraction}"
            )
        for name in ("kd_weight", "ce_weight", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise DistillError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.intermediate_weight is not None and not self.intermediate_weight >= 0:
            raise DistillError(f"intermediate_weight must be >= 0 or None, got {self.intermediate_weight}")
        if self.kd_weight == 0 and self.ce_weight == 0 and self.intermediate is None:
            raise DistillError("every loss term has weight 0: set kd_weight, ce_weight or intermediate")
        self._check_teachers()
        if self.teacher_cache is not None:
            if kd_loss_spec(self.kd_loss).teacher not in ("topk", "aligned"):
                topk = [n for n in kd_loss_names() if kd_loss_spec(n).teacher in ("topk", "aligned")]
                raise DistillError(
                    f"a teacher cache holds top-k logits only, so it needs --kd-loss {' or '.join(topk)} "
                    f"(got {self.kd_loss})"
                )
            if self.intermediate is not None:
                raise DistillError(
                    "intermediate losses need the teacher's hidden states: drop --teacher-cache"
                )
        elif self.teacher is None and (self.kd_weight > 0 or self.intermediate is not None):
            raise DistillError("no teacher: pass --teacher DIR, or --teacher-cache DIR from `cache-teacher`")
        aligned = kd_loss_spec(self.kd_loss).teacher == "aligned"
        if aligned and self.intermediate is not None:
            raise DistillError(
                f"--kd-loss {self.kd_loss} compares two tokenizations, whose hidden states do not line up: "
                "drop --intermediate"
            )
        if self.projection is not None and not aligned:
            raise DistillError("--projection is for the cross-tokenizer losses: pass --kd-loss pkl or hkl")
        if self.resume and self.overwrite:
            raise DistillError(
                "--resume continues the run in the output directory, --overwrite deletes it: pick one"
            )

    def _check_teachers(self) -> None:
        count = len(self.teachers)
        if self.teacher_select not in TEACHER_SELECTS:
            raise DistillError(
                f"teacher_select must be one of {', '.join(TEACHER_SELECTS)}; got {self.teacher_select!r}"
            )
        if count < 2 and (self.teacher_weight is not None or self.teacher_select != "weighted"):
            flag = "--teacher-weight" if self.teacher_weight is not None else "--teacher-select"
            raise DistillError(
                f"{flag} chooses among several teachers, and {count} was given: repeat --teacher, or drop {flag}"
            )
        if self.teacher_weight is not None:
            if self.teacher_select != "weighted":
                raise DistillError(
                    "--teacher-weight weighs teachers under --teacher-select weighted: drop one"
                )
            if len(self.teacher_weight) != count:
                raise DistillError(
                    f"{len(self.teacher_weight)} --teacher-weight for {count} teachers: give one weight per teacher"
                )
            if (
                not all(math.isfinite(w) and w >= 0 for w in self.teacher_weight)
                or sum(self.teacher_weight) <= 0
            ):
                raise DistillError(
                    f"teacher weights must be finite, >= 0 and not all 0; got {self.teacher_weight}"
                )
        given = [] if self.projection is None else self.projections
        if given and len(given) != max(1, count):
            raise DistillError(
                f"{len(given)} --projection for {count} teachers: give one per teacher, in order, or none"
            )
        if count > 1:
            if self.teacher_cache is not None:
                raise DistillError(
                    "a teacher cache holds one teacher: drop --teacher-cache or keep one --teacher"
                )
            if self.intermediate is not None:
                raise DistillError(
                    "intermediate losses take one teacher's hidden states: drop --intermediate"
                )

    @property
    def teachers(self) -> list[str]:
        """The teacher directories, in order (empty without a teacher)."""
        return (
            [] if self.teacher is None else self.teacher if isinstance(self.teacher, list) else [self.teacher]
        )

    @property
    def teacher_weights(self) -> list[float]:
        """One weight per teacher, summing to 1 (``teacher_weight`` divided by its sum; None: equal)."""
        weights = self.teacher_weight or [1.0] * len(self.teachers)
        total = sum(weights)
        return [w / total for w in weights]

    @property
    def projections(self) -> list[str | None]:
        """The W file of each teacher, in order (None: built and cached)."""
        if isinstance(self.projection, list):
            return list(self.projection)
        return (
            [self.projection] * max(1, len(self.teachers)) if self.projection is None else [self.projection]
        )

    @property
    def uses_teacher_model(self) -> bool:
        """Whether training runs the teacher (not when its logits come from a cache or nothing needs it)."""
        return self.teacher_cache is None and (self.kd_weight > 0 or self.intermediate is not None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["layer_map"] is not None:
            out["layer_map"] = [list(pair) for pair in out["layer_map"]]
        return out

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides) -> DistillConfig:
        """Build from a mapping (keys may use dashes, as the CLI flags do); non-None overrides win."""
        merged = {_field_name(k): v for k, v in values.items()}
        merged.update({_field_name(k): v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise DistillError(
                f"unknown distill setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> DistillConfig:
        """Read a YAML mapping with the same keys as the fields (or CLI flags); non-None overrides win."""
        return cls.from_dict(read_settings(path, DistillError), **overrides)


def _field_name(key: str) -> str:
    key = str(key).replace("-", "_")
    return "output_dir" if key == "output" else key


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DistillError(f"{name} must be an integer >= {minimum}, got {value!r}")
