"""The distillation loop: one function on accelerate, read top to bottom.

result = distill(DistillConfig(teacher="parent", student="pruned", data="text/", output_dir="out"))
print(result.table())       # held-out loss, KL to the teacher, bits per byte: before and after

One process on CPU; under ``torchrun`` / ``accelerate launch`` on GPUs, DDP or FSDP as accelerate is
configured (the teacher is frozen, in eval mode, replicated on every device or, with
``shard_teacher`` under FSDP, sharded like the student). Each optimizer step reads a global batch
chosen by :class:`~nemocompress.distill.batches.DataOrder` (a pure function of seed and step), so a
resumed run computes bitwise what the uninterrupted run computes (on CPU; GPU kernels may not be
deterministic).

``output_dir`` holds, while training runs and after:

- ``distill_config.yaml``: the settings (``nemocompress distill --config`` reads it back);
- ``checkpoints/step-XXXXXXXX/``: accelerate state (model, optimizer, torch / python / numpy RNG of
  every process) plus ``trainer_state.json`` (step, samples read, global batch, data fingerprint,
  settings), written beside and renamed, so a checkpoint is whole or absent; the last
  ``keep_checkpoints`` are kept. The learning rate (:func:`lr_at`) and the data position are pure
  functions of the step, so the step restores them;
- ``metrics.jsonl``: one record per step (loss terms, lr, grad norm, tokens, tokens/s; under
  ``teacher_select="min-ce"`` ``teacher_picks``, the micro-batches each teacher taught) and per
  evaluation (``eval/loss``, ``eval/bpb``, ``eval/kl`` or ``eval/kl_topk``, ``eval/top1``);
- ``loss_curve.png``; and at the end ``final/``: the student as a stock Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..arch import Adapter, get_adapter
from ..checkpoint import atomic_output_dir, check_free_space, check_output_dir, load_config, replace_dir
from ..errors import OutputError, UnsupportedModelError
from ..evaluate import evaluate
from ..report import format_table
from .batches import DataOrder, distill_samples, fingerprint
from .config import RESUME_MAY_CHANGE, DistillConfig, DistillError
from .losses import (
    HiddenStateProjection,
    chunked_distill_loss_from_hidden,
    chunked_kd_loss,
    cross_entropy_loss,
    dynamic_alpha,
    kd_loss_spec,
    mapped_hidden_loss,
    topk_forward_kl,
)
from .metrics import MetricsLog, plot_loss_curve
from .models import check_same_vocabulary, has_tokenizer, load_causal_lm, load_tokenizer, vocabulary
from .teacher_cache import TeacherCache

__all__ = ["DistillResult", "TrainerExtension", "distill", "latest_checkpoint", "lr_at"]

CHECKPOINTS = "checkpoints"
FINAL = "final"
METRICS = "metrics.jsonl"
CURVE = "loss_curve.png"
CONFIG_FILE = "distill_config.yaml"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d{8})")


@dataclass
class DistillResult:
    """Where the run wrote its outputs, and every metrics record (earlier ones too, after a resume)."""

    output_dir: Path
    final_dir: Path
    steps: int
    resumed_from: int | None
    records: list[dict] = field(default_factory=list)

    @property
    def evals(self) -> list[dict]:
        return [r for r in self.records if any(k.startswith("eval/") for k in r)]

    def table(self) -> str:
        evals = self.evals
        shown = ("eval/loss", "eval/kl", "eval/kl_topk", "eval/top1", "eval/bpb")
        keys = [k for k in shown if evals and k in evals[0]]
        rows = [[k[5:], *(f"{e[k]:.4f}" for e in (evals[0], evals[-1]))] for k in keys]
        train = [r for r in self.records if "tokens_per_s" in r]
        if train:
            rows.append(
                ["tokens/s (train)", "", f"{sum(r['tokens_per_s'] for r in train) / len(train):,.0f}"]
            )
        picks = [r["teacher_picks"] for r in train if "teacher_picks" in r]
        if picks:  # teacher_select min-ce: micro-batches each teacher taught
            rows.append(["teacher picks (min-ce)", "", " / ".join(str(sum(c)) for c in zip(*picks))])
        first, last = (evals[0]["step"], evals[-1]["step"]) if evals else ("-", "-")
        return format_table(rows, ["held-out", f"step {first}", f"step {last}"])


def lr_at(step: int, config: DistillConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr``."""
    warmup = config.warmup_steps if config.warmup_steps is not None else round(0.05 * config.steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class TrainerExtension(nn.Module):
    """What a method adds to the distillation loop (elastic training: routers that mask the student).

    Its parameters are trained with the student's (same optimizer, at ``lr_scale`` times the learning rate;
    DDP; checkpoints). ``forward()`` runs
    inside the trained module's forward before every training micro-batch (so DDP sees its parameters
    used): it may change how the student computes (masks) and returns a scalar added to the loss, logged
    as ``loss_name``. :meth:`begin_step` is called before each optimizer step with the step (0-based) and
    returns values for that step's metrics record; it must give every process the same state.
    :meth:`evaluations` names the settings to evaluate the student in: ``(suffix, context manager)``
    pairs, each evaluation's keys logged as ``eval/loss{suffix}`` and so on.
    """

    loss_name = "extra"
    lr_scale = 1.0  # its parameters' learning rate, relative to the student's

    def attach(self, student: nn.Module, samples: Tensor) -> None:
        """Install on the student (its masks, say), once, before training; ``samples`` ``[N, S]`` are the
        training token ids (for calibration)."""

    def stock_state(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """The trained student's state dict as a stock checkpoint holds it (without what :meth:`attach`
        added)."""
        return state_dict

    def begin_step(self, step: int) -> dict:
        return {}

    def evaluations(self) -> list[tuple[str, contextlib.AbstractContextManager]]:
        return [("", contextlib.nullcontext())]

    def detach(self) -> None:
        """Leave the student as it was before :meth:`attach` (called before the final student is saved)."""


class _Trainable(nn.Module):
    """What the optimizer updates: the student, for intermediate losses the hidden-state projection, and
    an extension's parameters."""

    def __init__(
        self,
        student: nn.Module,
        projection: HiddenStateProjection | None,
        adapter: Adapter | None = None,
        extension: TrainerExtension | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.projection = projection
        self.adapter = adapter  # names the student's trunk and LM head, for the fused loss
        self.extension = extension

    def forward(
        self, input_ids: Tensor, hidden_layers: tuple[int, ...] = (), head_loss=None
    ) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """``[B, S]`` ids -> ``[B, S, V]`` logits, the projected hidden states of ``hidden_layers`` and (in
        training, with an extension) the extension's loss term.

        With ``head_loss`` the LM head is not run: the result is ``head_loss(last_hidden [B, S, D], lm_head)``
        instead of the logits (inside forward, so DDP sees the head's weight used).
        """
        extra = self.extension() if self.extension is not None and self.training else None
        module = self.student if head_loss is None else self.adapter.trunk(self.student)
        out = module(input_ids=input_ids, use_cache=False, output_hidden_states=bool(hidden_layers))
        hidden = [self.projection(out.hidden_states[i]) for i in hidden_layers]
        if head_loss is None:
            return out.logits, hidden, extra
        return head_loss(out.last_hidden_state, self.adapter.lm_head(self.student)), hidden, extra


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir/checkpoints``, or None."""
    root = Path(output_dir) / CHECKPOINTS
    found = [p for p in root.glob("step-*") if _STEP_DIR.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name[5:]), default=None)


def distill(
    config: DistillConfig, extension: TrainerExtension | None = None, end_processes: bool = True
) -> DistillResult:
    """Train ``config.student`` to imitate ``config.teacher`` (see :class:`DistillConfig`); return the result.

    ``extension`` (see :class:`TrainerExtension`) is attached to the student before training; it must
    have been built for the student's architecture. ``end_processes=False`` keeps the process group of a
    multi-process run alive at the end (for more collective work in the same processes; accelerate's
    ``end_training`` destroys it otherwise).

    Bad input (a missing or corrupt checkpoint, teacher and student with different vocabularies, empty
    or too little data, an existing output directory without ``resume``/``overwrite``) raises a
    NemocompressError before anything is written. A NaN or infinite loss or gradient norm stops the run
    with DistillError before the optimizer step, leaving the last checkpoint as it was.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    on_gpu = torch.cuda.is_available()
    mixed_precision = (
        ("bf16" if on_gpu else "no") if config.mixed_precision == "auto" else config.mixed_precision
    )
    out = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=not on_gpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with=config.trackers or None,
        project_dir=out,
    )
    main = accelerator.is_main_process
    set_seed(config.seed, device_specific=True)

    # ------------------------------------------------------------------ inputs, all checked before writing
    teacher_dirs = config.teachers
    inputs = [p for p in (*teacher_dirs, config.student, config.data, config.teacher_cache) if p is not None]
    check_output_dir(out, overwrite=True, inputs=tuple(inputs))
    if out.exists() and not (config.resume or config.overwrite):
        raise OutputError(f"{out} already exists: pass --resume to continue it, --overwrite to start over")
    cache = TeacherCache(config.teacher_cache) if config.teacher_cache else None
    student_config = load_config(config.student)
    teacher_configs = [load_config(t) for t in teacher_dirs]
    tokenizer = load_tokenizer(config.student, *teacher_dirs[:1], config.teacher_cache)
    student_vocab = vocabulary(student_config, tokenizer)
    spec, crosses = kd_loss_spec(config.kd_loss), None  # crosses: each teacher's cross-tokenizer KD term
    cross_cache = cache is not None and cache.student_digest is not None  # the teacher's own tokens cached
    if cache is not None:
        _check_cache(cache, spec.teacher == "aligned", student_vocab, config)
    if spec.teacher == "aligned" and (teacher_configs or cross_cache):
        if not has_tokenizer(config.student):
            raise DistillError(f"--kd-loss {spec.name} needs the student's own tokenizer in {config.student}")
        sides = (  # (where the teacher's tokenizer is, its logit width)
            [(cache.path, cache.vocabulary.size)]
            if cross_cache
            else [(path, int(c.vocab_size)) for path, c in zip(teacher_dirs, teacher_configs)]
        )
        crosses = [
            spec.cross_tokenizer(
                spec.name, tokenizer, load_tokenizer(path), student_width=student_vocab.size,
                teacher_width=width, projection=projection, cache=_projection_cache(out, i),
                temperature=config.temperature, mix=config.ce_mix, kd_weight=config.kd_weight,
                ce_weight=config.ce_weight,
            )
            for i, ((path, width), projection) in enumerate(zip(sides, config.projections))
        ]  # fmt: skip
    else:
        for path, teacher_config in zip(teacher_dirs, teacher_configs):
            teacher_tokenizer = load_tokenizer(path) if has_tokenizer(path) else None
            teacher_vocab = vocabulary(teacher_config, teacher_tokenizer)
            check_same_vocabulary(teacher_vocab, student_vocab, path, config.student)
    if cache is not None:
        if cache.seq_len != config.seq_len:
            raise DistillError(
                f"the teacher cache holds {cache.seq_len}-token samples: pass --seq-len {cache.seq_len}"
            )
        train_ids = cache.input_ids("train")
        heldout_ids = cache.input_ids("heldout")[: config.eval_samples]
    else:
        train_ids, heldout_ids = distill_samples(
            tokenizer, config.data, config.seq_len, config.eval_samples, config.heldout_fraction, config.seed
        )
    student = load_causal_lm(config.student)
    loaded = {}  # also when only evaluation needs them (KL to the first teacher); a directory given twice once
    teacher_dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float32
    for path in teacher_dirs if cache is None else []:
        if path not in loaded:
            loaded[path] = load_causal_lm(path, teacher_dtype)
    teachers = [loaded[path] for path in teacher_dirs if path in loaded]
    teacher = teachers[0] if teachers else None
    pairs, projection = [], None  # (student, teacher) hidden-state indices for the intermediate loss
    if config.intermediate is not None:
        pairs = config.layer_map or _default_layer_map(student.config, teacher.config)
        projection = HiddenStateProjection(student.config.hidden_size, teacher.config.hidden_size)

    # ------------------------------------------------------------------ output directory and resume point
    resume_from = latest_checkpoint(out) if config.resume else None
    if not (config.overwrite and out.exists()):  # room for the final student now, not after hours of training
        check_free_space(out / FINAL, _weight_bytes(student.state_dict()))
    if main:
        if config.overwrite and out.exists():
            shutil.rmtree(out)
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        for stale in (out / CHECKPOINTS).glob(".step-*"):  # torn by a kill during a save
            shutil.rmtree(stale, ignore_errors=True)
        replace(config, resume=False, overwrite=False).save_yaml(out / CONFIG_FILE)  # settings, not actions
    accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ models, optimizer, accelerate
    fused, why_not = _fused_head(
        config, student, teachers, accelerator.distributed_type == DistributedType.FSDP
    )
    if why_not and main:
        warnings.warn(why_not, stacklevel=2)
    if extension is not None:
        extension.attach(student, train_ids)
    model = _Trainable(student.train(), projection, fused[0] if fused else None, extension)
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("extension.")]}]
    if extension is not None:  # its own learning rate: lr_scale x the schedule's
        groups.append(
            {"params": list(extension.parameters()), "lr_scale": extension.lr_scale, "weight_decay": 0.0}
        )
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    for path, module in loaded.items():
        module.eval().requires_grad_(False)
        if config.shard_teacher:
            if accelerator.distributed_type != DistributedType.FSDP:
                raise DistillError("shard_teacher needs FSDP (accelerate launch with an FSDP config)")
            loaded[path] = accelerator.prepare_model(module)  # sharded; accelerate saves it in checkpoints
        else:
            loaded[path] = module.to(accelerator.device)
    teachers = [loaded[path] for path in teacher_dirs if path in loaded]
    teacher = teachers[0] if teachers else None

    num_micro, num_proc, rank = config.grad_accum, accelerator.num_processes, accelerator.process_index
    global_batch = config.batch_size * num_micro * num_proc
    tokens_per_step = global_batch * config.seq_len
    targets_per_micro = global_batch * (config.seq_len - 1) / (num_micro * num_proc)  # see _loss_terms
    order = DataOrder(len(train_ids), global_batch, config.seed)
    data_id = fingerprint(train_ids)
    step = 0
    if resume_from is not None:
        step = _load_checkpoint(accelerator, resume_from, config, global_batch, data_id)
    metrics = MetricsLog(out / METRICS, keep_until=step if resume_from else None, enabled=main)
    if config.trackers:
        accelerator.init_trackers("nemocompress-distill", config=_tracker_config(config))

    def evaluate_and_log() -> None:
        reference = None if crosses is not None else teacher  # KL and top-1 need one vocabulary
        record = {"step": step}
        for suffix, setting in extension.evaluations() if extension else [("", contextlib.nullcontext())]:
            with setting:
                topk = None if crosses else cache  # a cross-tokenizer cache has no same-vocabulary top-k
                evaluated = _evaluate(
                    model, reference, heldout_ids, tokenizer, topk, config, accelerator.device
                )
            record.update({f"{k}{suffix}": v for k, v in evaluated.items()})
        metrics.write(record)
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)

    if step == 0:
        evaluate_and_log()

    # ------------------------------------------------------------------ the loop
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc="distill",
        disable=(None if config.progress else True) if main else True,
    )
    while step < config.steps:
        started = time.perf_counter()
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        micro_batches = order.micro_batches(step, num_micro, num_proc, rank)  # [K, B] sample indices
        step_info = extension.begin_step(step) if extension else {}
        sums = torch.zeros(5, dtype=torch.float64, device=accelerator.device)  # loss, kd, ce, inter, extra
        picked = []  # under teacher_select min-ce: the teacher chosen for each micro-batch
        for samples in micro_batches:
            with accelerator.accumulate(model):  # no gradient all-reduce until the last micro-batch
                input_ids = train_ids[samples].to(accelerator.device)
                cached = _cached(cache, "train", samples, config.top_k)
                terms = _loss_terms(
                    model, teachers, input_ids, cached, config, targets_per_micro, pairs, fused, crosses, picked
                )  # fmt: skip
                accelerator.backward(terms[0])
            sums += torch.stack(terms).detach().double()
        means = accelerator.reduce(sums, "sum") / (num_micro * num_proc)  # token means over the global batch
        if config.teacher_select == "min-ce":  # micro-batches of the global batch that each teacher taught
            counts = torch.bincount(torch.tensor(picked, dtype=torch.long), minlength=len(teacher_dirs))
            counts = accelerator.reduce(counts.to(accelerator.device), "sum")
            step_info = {**step_info, "teacher_picks": counts.tolist()}
        grad_norm = None
        if config.max_grad_norm is not None and torch.isfinite(means).all():
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        if not torch.isfinite(means).all() or (grad_norm is not None and not torch.isfinite(grad_norm)):
            bar.close()
            message = _non_finite_message(step, means, grad_norm, order.step_indices(step), out)
            metrics.write({"step": step + 1, "error": message})
            accelerator.end_training()
            raise DistillError(message)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        seconds = time.perf_counter() - started
        loss, kd, ce, inter, extra = means.tolist()
        if extension:
            step_info = {extension.loss_name: extra, **step_info}
        record = {"step": step, "loss": loss, "kd": kd, "ce": ce, "intermediate": inter, **step_info, "lr": lr,
                  "grad_norm": None if grad_norm is None else float(grad_norm),
                  "tokens": step * tokens_per_step, "step_s": seconds, "tokens_per_s": tokens_per_step / seconds}  # fmt: skip
        metrics.write(record)
        accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if step == config.steps or (config.eval_every and step % config.eval_every == 0):
            evaluate_and_log()
        if config.save_every and step % config.save_every == 0:
            state = {"step": step, "samples": step * global_batch, "global_batch": global_batch, "data": data_id,
                     "config": config.to_dict()}  # fmt: skip
            _save_checkpoint(accelerator, out, step, state, config.keep_checkpoints)
    bar.close()

    # ------------------------------------------------------------------ the student as a stock checkpoint
    accelerator.wait_for_everyone()
    if extension is not None:
        extension.detach()  # its parametrizations must not reach the stock checkpoint
    state_dict = accelerator.get_state_dict(model)  # full weights on the main process (FSDP gathers them)
    if main:
        student_state = {
            k.removeprefix("student."): v for k, v in state_dict.items() if k.startswith("student.")
        }
        if extension is not None:
            student_state = extension.stock_state(student_state)
        with atomic_output_dir(out / FINAL, overwrite=True, needed_bytes=_weight_bytes(student_state)) as tmp:
            accelerator.unwrap_model(model).student.save_pretrained(tmp, state_dict=student_state)
            tokenizer.save_pretrained(tmp)
        plot_loss_curve(metrics.records, out / CURVE)
    accelerator.wait_for_everyone()
    if end_processes:
        accelerator.end_training()
    else:
        for tracker in accelerator.trackers:
            tracker.finish()
    return DistillResult(
        out, out / FINAL, step, None if resume_from is None else int(resume_from.name[5:]), metrics.records
    )


# ---------------------------------------------------------------------- one micro-batch's loss


def _loss_terms(
    model: nn.Module,
    teacher: nn.Module | list[nn.Module] | None,
    input_ids: Tensor,
    cached: tuple[Tensor, Tensor] | None,
    config: DistillConfig,
    num_items: float,
    pairs: list[tuple[int, int]],
    fused: tuple[Adapter, Adapter | None] | None = None,
    cross=None,
    picked: list[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(loss, kd, ce, intermediate, extra)`` of one micro-batch ``[B, S]``, each a sum over its targets /
    ``num_items`` (``extra``: the extension's term, added to the loss as it is).

    ``num_items`` is the global number of targets divided by (micro-batches x processes): accelerate
    divides each loss by the micro-batch count and DDP averages gradients over processes, so the
    gradient of a step is exactly that of the token mean over the global batch. With ``fused``
    (the student's and, when KD needs it, the teacher's adapter, see :func:`_fused_head`) KD and CE
    come from the final hidden states through :func:`chunked_distill_loss_from_hidden`, so neither
    model's ``[B, S, V]`` logits are made. With ``cross`` (a cross-tokenizer KD term from
    :mod:`nemocompress.xtoken`) the teacher reads its own tokenization of the text inside that term.

    Several teachers (``teacher`` and ``cross`` lists, in ``config.teachers``' order): KD is the weighted
    sum of their terms (``config.teacher_weights``; a teacher of weight 0 is not run) or, under
    ``teacher_select="min-ce"``, the term of the teacher with the lowest CE on this micro-batch, whose
    index is appended to ``picked``.
    """
    teachers, crosses = _listed(teacher), _listed(cross)
    labels = input_ids[:, 1:]  # position t predicts token t + 1
    kd = ce = inter = torch.zeros((), device=input_ids.device)
    weights = config.teacher_weights if len(teachers) > 1 else [1.0]
    choose = config.teacher_select == "min-ce" and len(weights) > 1
    teacher_outs = {}
    if teachers and config.uses_teacher_model and not crosses:
        for i in (i for i, w in enumerate(weights) if choose or w > 0):
            forward = (
                fused[1].trunk(teachers[i]) if fused is not None and fused[1] is not None else teachers[i]
            )
            with torch.no_grad():
                teacher_outs[i] = forward(
                    input_ids=input_ids, use_cache=False, output_hidden_states=bool(pairs)
                )
    teacher_out = teacher_outs.get(0)  # the one teacher of the fused path and of intermediate losses
    hidden_layers = tuple(s for s, _ in pairs)
    if fused is not None:
        teacher_head = (
            (teacher_out.last_hidden_state, fused[1].lm_head(teachers[0])) if fused[1] is not None else None
        )
        head_loss = partial(
            _fused_logit_loss, teacher=teacher_head, labels=labels, config=config, num_items=num_items
        )
        (logit_loss, kd, ce), student_hidden, extra = model(input_ids, hidden_layers, head_loss)
    else:
        student_logits, student_hidden, extra = model(input_ids, hidden_layers)
        student_logits = student_logits[:, :-1]
        if crosses:  # KD (each teacher runs on its own tokens) and CE, mixed
            views = {}

            def view(i: int):
                if i not in views:
                    views[i] = crosses[i].teacher_view(input_ids, teachers[i] if teachers else None, cached)
                return views[i]

            chosen = _teacher_mixture(weights, choose, lambda i: crosses[i].teacher_ce(view(i)), picked)
            kd = _weighted([(w, crosses[i].kd_term(student_logits, view(i), num_items)) for i, w in chosen])
            ce = cross_entropy_loss(student_logits, labels, num_items=num_items)
            logit_loss = crosses[0].mix(kd, ce)
        else:
            if config.kd_weight > 0:

                def teacher_ce(i: int) -> Tensor:
                    return cross_entropy_loss(teacher_outs[i].logits[:, :-1], labels)

                chosen = _teacher_mixture(weights, choose, teacher_ce, picked)
                kd = _weighted(
                    [
                        (w, _logit_kd(student_logits, teacher_outs.get(i), cached, config, num_items))
                        for i, w in chosen
                    ]
                )
            if config.ce_weight > 0:
                ce = cross_entropy_loss(student_logits, labels, num_items=num_items)
            logit_loss = config.kd_weight * kd + config.ce_weight * ce
    loss = logit_loss
    if config.intermediate is not None:  # student_hidden[i] is already projected, teacher layer pairs[i][1]
        student_hidden = [h[:, :-1] for h in student_hidden]
        teacher_hidden = [teacher_out.hidden_states[t][:, :-1] for _, t in pairs]
        in_order = [(i, i) for i in range(len(pairs))]
        inter = mapped_hidden_loss(
            student_hidden, teacher_hidden, in_order, kind=config.intermediate, num_items=num_items
        )
        alpha = config.intermediate_weight
        loss = loss + (dynamic_alpha(logit_loss, inter) if alpha is None else alpha) * inter
    if extra is not None:
        loss = loss + extra
    else:
        extra = torch.zeros((), device=input_ids.device)
    return loss, kd, ce, inter, extra


def _listed(value) -> list:
    """None -> [], a list or tuple as a list, anything else -> [it]."""
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]


def _teacher_mixture(weights: list[float], choose: bool, teacher_ce, picked: list[int] | None):
    """``[(teacher index, weight)]`` of the KD sum: every teacher of weight > 0, or with ``choose`` the one
    whose ``teacher_ce(i)`` is lowest (its index appended to ``picked``)."""
    if not choose:
        return [(i, w) for i, w in enumerate(weights) if w > 0]
    scores = [float(teacher_ce(i)) for i in range(len(weights))]
    best = min(range(len(scores)), key=scores.__getitem__)
    if picked is not None:
        picked.append(best)
    return [(best, 1.0)]


def _weighted(terms: list[tuple[float, Tensor]]) -> Tensor:
    """``sum_i w_i * term_i``; a lone term of weight 1 as it is."""
    (w0, first), rest = terms[0], terms[1:]
    total = first if w0 == 1.0 else w0 * first
    for w, term in rest:
        total = total + w * term
    return total


def _logit_kd(student_logits: Tensor, teacher_out, cached, config: DistillConfig, num_items: float) -> Tensor:
    """The KD term from the student's shifted logits ``[B, S-1, V]`` (the logits path)."""
    spec = kd_loss_spec(config.kd_loss)
    if spec.teacher == "topk":
        if cached is None:
            top = teacher_out.logits[:, :-1].float().topk(config.top_k, dim=-1)
            cached = (top.values, top.indices)
        values, indices = (t.to(student_logits.device) for t in cached)
        return topk_forward_kl(
            student_logits, values, indices, temperature=config.temperature, num_items=num_items
        )
    return chunked_kd_loss(
        student_logits, teacher_out.logits[:, :-1], spec.name, temperature=config.temperature,
        num_items=num_items, chunk_size=config.chunk_size, **spec.settings(config),
    )  # fmt: skip


def _fused_logit_loss(
    student_hidden: Tensor,
    student_head: nn.Linear,
    *,
    teacher: tuple[Tensor, nn.Linear] | None,
    labels: Tensor,
    config: DistillConfig,
    num_items: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(kd_weight * kd + ce_weight * ce, kd, ce)`` from the last hidden states ``[B, S, D]`` (the fused path)."""
    kd_weight, teacher_hidden, teacher_weight, teacher_bias = 0.0, None, None, None
    if teacher is not None:  # else CE only
        kd_weight, teacher_hidden = config.kd_weight, teacher[0][:, :-1]
        teacher_weight, teacher_bias = teacher[1].weight, teacher[1].bias
    result = chunked_distill_loss_from_hidden(
        student_hidden[:, :-1], student_head.weight, teacher_hidden, teacher_weight, config.kd_loss,
        student_lm_head_bias=student_head.bias, teacher_lm_head_bias=teacher_bias, kd_weight=kd_weight,
        ce_weight=config.ce_weight, temperature=config.temperature, labels=labels, num_items=num_items,
        chunk_size=config.chunk_size, **kd_loss_spec(config.kd_loss).settings(config),
    )  # fmt: skip
    return tuple(result)


def _fused_head(
    config: DistillConfig, student: nn.Module, teacher: nn.Module | list[nn.Module] | None, fsdp: bool
) -> tuple[tuple[Adapter, Adapter | None] | None, str | None]:
    """``((student adapter, teacher adapter or None), None)`` when KD and CE can fuse the LM heads, else
    ``(None, why not)`` (``(None, None)`` when not asked for or no logit term is trained)."""
    if not config.fused_head or (config.kd_weight == 0 and config.ce_weight == 0):
        return None, None
    teachers = _listed(teacher)
    kd = config.kd_weight > 0
    models = [student, *teachers[:1]] if kd else [student]
    reason = None
    if kd and len(teachers) > 1:
        reason = "several teachers are mixed on their logits"
    elif kd and kd_loss_spec(config.kd_loss).teacher == "aligned":
        reason = f"--kd-loss {config.kd_loss} compares two tokenizations chunk by chunk"
    elif kd and kd_loss_spec(config.kd_loss).per_token is None:
        reason = f"--kd-loss {config.kd_loss} reads the teacher's top-k logits, not its full distribution"
    elif fsdp:
        reason = "under FSDP the LM heads are sharded"
    else:
        try:
            adapters = [get_adapter(m.config) for m in models]
        except UnsupportedModelError as e:
            reason = f"{e}".split(";")[0]
        else:
            if not all(isinstance(a.lm_head(m), nn.Linear) for a, m in zip(adapters, models)):
                reason = "an LM head is not a linear layer"
    if reason is not None:
        return None, f"the fused LM-head loss is not used ({reason}): computing full logits instead"
    return (adapters[0], adapters[1] if kd else None), None


def _check_cache(cache: TeacherCache, aligned: bool, student_vocab, config: DistillConfig) -> None:
    """Refuse a teacher cache that does not fit the run: its kind (same- or cross-tokenizer) against the KD
    loss, the student's tokenizer, and for a cross-tokenizer cache given ``data`` the training tokens."""
    if cache.student_digest is None:
        if aligned:
            raise DistillError(
                f"{cache.path} holds same-tokenizer top-k logits: pass --kd-loss topk-kl, or rebuild it with "
                f"`nemocompress cache-teacher --student {config.student}` for --kd-loss {config.kd_loss}"
            )
        check_same_vocabulary(cache.vocabulary, student_vocab, f"cache {cache.path}", config.student)
        return
    if not aligned:
        raise DistillError(
            f"{cache.path} holds a teacher of another tokenizer (its own tokens and top-k): pass --kd-loss pkl, "
            "hkl, uld or gold"
        )
    if cache.student_digest != student_vocab.digest:
        raise DistillError(
            f"{cache.path} was built for another student tokenizer than {config.student}'s: rebuild it with "
            f"`nemocompress cache-teacher --student {config.student}`"
        )
    if config.data is not None:
        meta = cache.meta
        train, _ = distill_samples(
            load_tokenizer(config.student), config.data, cache.seq_len, cache.num_samples("heldout"),
            meta["heldout_fraction"], meta["seed"], cache.num_samples("train"),
        )  # fmt: skip
        if fingerprint(train) != meta["splits"]["train"]["fingerprint"]:
            raise DistillError(
                f"{cache.path} was built from other data than {config.data}: rebuild it, or drop --data (the "
                "cache holds the tokens)"
            )


def _cached(cache: TeacherCache | None, split: str, samples: Tensor, top_k: int):
    """What the cache holds of these samples for the loss: same-tokenizer top-k ``(values, indices)``, or the
    cross-tokenizer teacher side (:meth:`TeacherCache.teacher_topk`); None without a cache."""
    if cache is None:
        return None
    return (
        cache.topk(split, samples, top_k)
        if cache.student_digest is None
        else cache.teacher_topk(split, samples)
    )


def _projection_cache(out: Path, teacher: int) -> Path:
    """Where the W of teacher ``teacher`` (0-based) is cached beside ``out``."""
    return out.parent / f"{out.name}.projection{'' if teacher == 0 else f'-{teacher}'}.safetensors"


def _default_layer_map(student_config, teacher_config) -> list[tuple[int, int]]:
    """Student layer i -> teacher layer round(i * L_t / L_s), i = 1..L_s (hidden-state indices)."""
    num_s, num_t = student_config.num_hidden_layers, teacher_config.num_hidden_layers
    return [(i, round(i * num_t / num_s)) for i in range(1, num_s + 1)]


# ---------------------------------------------------------------------- held-out evaluation


def _evaluate(
    model: nn.Module, teacher: nn.Module | None, heldout_ids: Tensor, tokenizer, cache, config, device
) -> dict:
    """Held-out loss (nats/token), bits per byte, KL(teacher || student) per token and top-1 agreement
    with the teacher (:func:`nemocompress.evaluate.evaluate`), on every process."""
    reference = teacher
    if cache is not None:

        def reference(rows: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:  # the cached teacher top-k
            values, indices = (t.to(device) for t in cache.topk("heldout", rows, config.top_k))
            return topk_forward_kl(logits, values, indices) * logits.shape[:-1].numel(), indices[..., 0]

    model.eval()
    report = evaluate(
        lambda ids: model(ids)[0], heldout_ids, tokenizer, reference, batch_size=config.batch_size,
        device=device, progress=False,
    )  # fmt: skip
    model.train()
    record = {"eval/loss": report.loss, "eval/bpb": report.bits_per_byte}
    if reference is not None:
        record["eval/kl_topk" if cache is not None else "eval/kl"] = report.kl
        record["eval/top1"] = report.top1_agreement
    return record


# ---------------------------------------------------------------------- checkpoints and the NaN guard


def _weight_bytes(state_dict: dict[str, Tensor]) -> int:
    """Bytes of the tensors of a state dict as safetensors stores them (tied tensors once)."""
    return sum({t.data_ptr(): t.numel() * t.element_size() for t in state_dict.values()}.values())


def _save_checkpoint(accelerator, out: Path, step: int, state: dict, keep: int) -> None:
    """accelerate state + ``trainer_state.json`` into a temporary directory, renamed when complete."""
    root = out / CHECKPOINTS
    final, tmp = root / f"step-{step:08d}", root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    tied = logging.getLogger(
        "accelerate.utils.other"
    )  # warns that it drops tied weights; loading re-ties them
    level = tied.level
    tied.setLevel(logging.ERROR)
    try:
        accelerator.save_state(tmp)  # every process writes its RNG state; the main one model and optimizer
    finally:
        tied.setLevel(level)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        replace_dir(tmp, final)  # a step saved again after a resume replaces the old one by rename
        done = sorted((p for p in root.glob("step-*") if _STEP_DIR.fullmatch(p.name)), key=lambda p: p.name)
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(
    accelerator, checkpoint: Path, config: DistillConfig, global_batch: int, data_id: str
) -> int:
    """Restore model, optimizer and RNG states; refuse a checkpoint of a different run. Returns its step."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    if state["global_batch"] != global_batch:
        raise DistillError(
            f"{checkpoint} was trained with a global batch of {state['global_batch']} sequences, this run has "
            f"{global_batch} (batch_size x grad_accum x processes): match it to resume"
        )
    if state["data"] != data_id:
        raise DistillError(
            f"the training tokens differ from those of {checkpoint}: resume with the same data"
        )
    now = config.to_dict()
    changed = [
        f"{k} {v!r} -> {now.get(k)!r}"
        for k, v in state["config"].items()
        if k not in RESUME_MAY_CHANGE and now.get(k) != v
    ]
    if changed:
        raise DistillError(
            f"settings differ from {checkpoint}: {'; '.join(changed)}; resume with the same ones"
        )
    accelerator.load_state(checkpoint)
    return int(state["step"])


def _non_finite_message(step: int, means: Tensor, grad_norm, samples: Tensor, out: Path) -> str:
    loss, kd, ce, inter, _ = means.tolist()
    last = latest_checkpoint(out)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    norm = "" if grad_norm is None else f", grad norm {float(grad_norm):.4g}"
    shown = samples.tolist()[:8]
    return (
        f"step {step + 1}: non-finite loss {loss} (kd {kd}, ce {ce}, intermediate {inter}{norm}); stopped before "
        f"the optimizer step, so {where}. The batch held train samples {shown}"
        f"{' ...' if len(samples) > 8 else ''}: check the data (or lower --lr), then rerun with --resume"
    )


def _tracker_config(config: DistillConfig) -> dict:
    return {
        k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in config.to_dict().items()
    }
