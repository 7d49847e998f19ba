"""Evaluation: one pass over held-out samples gives loss, bits per byte, KL to a reference and top-1 agreement.

samples = build_samples(tokenizer, "text/", seq_len=512, num_heldout=32)   # nemocompress.data
report = evaluate(model, samples.heldout, tokenizer, reference=parent)     # an EvalReport
report.loss, report.bits_per_byte, report.kl, report.top1_agreement, report.forward_tokens_per_s
report = evaluate(model, samples.heldout, tokenizer, generation_tokens=32)  # + generation_tokens_per_s
print(generate_text(model, tokenizer, "The capital of France is"))

Every number here is computed by :func:`evaluate`, so the trainer, the demo, the reference model,
``nemocompress eval`` and the benchmarks report the same quantities by the same rules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import NemocompressError

__all__ = [
    "EvalError",
    "EvalReport",
    "ReferenceFn",
    "bits_per_byte",
    "bits_per_byte_from_nats",
    "evaluate",
    "generate_text",
    "generation_tokens_per_s",
    "heldout_loss",
    "target_bytes",
    "token_losses",
]

ReferenceFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(rows [B] int64, logits [B, S - 1, V] float32) -> (KL summed over the batch [], reference top-1 [B, S - 1])``.

``rows`` index the evaluated ``input_ids``; ``logits`` are the evaluated model's predictions of their
targets. Use it for a reference that is not a model, e.g. a cached teacher top-k."""


class EvalError(NemocompressError, ValueError):
    """The evaluation cannot run as asked (e.g. model and reference with different vocabularies)."""


@dataclass(frozen=True)
class EvalReport:
    """What one :func:`evaluate` pass measured over ``num_samples`` samples of ``seq_len`` tokens.

    - ``loss``: mean next-token cross-entropy, nats per token, over all ``num_targets`` targets
      (``input_ids[:, 1:]``, document-separating eos tokens included);
    - ``bits_per_byte``: the rule of :func:`target_bytes` (None without a tokenizer);
    - ``kl``: mean KL(reference || model) per target, nats (None without a reference);
    - ``top1_agreement``: share of targets where the model's and the reference's most likely next
      token agree (None without a reference);
    - ``forward_tokens_per_s``: tokens (``num_samples * seq_len``) per second of the model's forward
      passes alone (the reference's forwards and the metric arithmetic are not timed);
    - ``generation_tokens_per_s``: greedy new tokens per second with the KV / recurrent cache
      (:func:`generation_tokens_per_s`; None unless asked for).
    """

    loss: float
    bits_per_byte: float | None
    kl: float | None
    top1_agreement: float | None
    forward_tokens_per_s: float
    generation_tokens_per_s: float | None
    num_samples: int
    seq_len: int
    num_targets: int
    num_bytes: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _hf_logits(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda ids: model(input_ids=ids, use_cache=False).logits


def _timed_batches(
    forward: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    desc: str,
    progress: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    """``(rows [B], batch [B, S] on device, logits [B, S - 1, V] float32, forward seconds)`` per batch."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [N, S] with S >= 2, got shape {tuple(input_ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    starts = range(0, input_ids.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, disable=None if progress else True):
        rows = torch.arange(start, min(start + batch_size, input_ids.shape[0]))
        batch = input_ids[rows].to(device)
        _synchronize(device)
        began = time.perf_counter()
        logits = forward(batch)
        _synchronize(device)
        seconds = time.perf_counter() - began
        yield rows, batch, logits[:, :-1].float(), seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _EvalMode:
    """Put modules in eval mode for a ``with`` block and restore each one's training mode afterwards."""

    def __init__(self, *modules: Any) -> None:
        self.modules = [m for m in modules if isinstance(m, torch.nn.Module)]

    def __enter__(self) -> None:
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc) -> None:
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)


@torch.no_grad()
def token_losses(
    model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 4, progress: bool = True
) -> torch.Tensor:
    """Next-token cross-entropy of every position: a float32 CPU tensor ``[N, S - 1]`` in nats.

    ``input_ids`` is a ``LongTensor [N, S]`` of packed samples (no padding); entry ``[i, t]`` is the loss
    of predicting ``input_ids[i, t + 1]`` from ``input_ids[i, : t + 1]``. Runs in eval mode on the
    model's device in batches of ``batch_size`` samples, with logits upcast to float32; the model's
    training mode is restored afterwards. ``progress`` shows a tqdm bar (only on a terminal).
    """
    losses = []
    with _EvalMode(model):
        batches = _timed_batches(
            _hf_logits(model), input_ids, batch_size, _model_device(model), "heldout loss", progress
        )
        for _, batch, logits, _ in batches:
            loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
            losses.append(loss.view(batch.shape[0], -1).cpu())
    return torch.cat(losses)


def target_bytes(tokenizer: Any, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The bits-per-byte rule: which targets count, and how many UTF-8 bytes they carry.

    The targets are ``input_ids[:, 1:]``. Special tokens (``tokenizer.all_special_ids``: eos document
    separators, bos, pad, unk) carry no text, so they are left out of both sides: bits per byte is
    ``sum of the loss over the other targets / ln 2 / bytes``, where bytes is the UTF-8 length of each
    sample's targets decoded with ``skip_special_tokens=True``, summed over samples. Decoding each sample
    on its own may split a multi-byte character at a sample edge; the error is a few bytes per sample.

    Returns ``(counted [N, S - 1] bool, num_bytes)``.
    """
    targets = input_ids[:, 1:].cpu()
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=targets.dtype)
    counted = ~torch.isin(targets, special)
    num_bytes = sum(len(tokenizer.decode(row, skip_special_tokens=True).encode("utf-8")) for row in targets)
    return counted, num_bytes


def bits_per_byte_from_nats(total_nats: float, num_bytes: int) -> float:
    """Convert a summed loss in nats over a text of ``num_bytes`` UTF-8 bytes to bits per byte."""
    if num_bytes <= 0:
        raise ValueError(f"num_bytes must be positive, got {num_bytes}")
    return total_nats / (math.log(2) * num_bytes)


def _reference_fn(reference: torch.nn.Module, input_ids: torch.Tensor, device) -> ReferenceFn:
    """KL(reference || model) summed, and the reference's top-1, from a reference model's logits."""
    forward = _hf_logits(reference)

    def compare(rows: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ref_logits = forward(input_ids[rows].to(device))[:, :-1].float()
        if ref_logits.shape[-1] != logits.shape[-1]:
            raise EvalError(
                f"the reference model has {ref_logits.shape[-1]} logits per token, the model "
                f"{logits.shape[-1]}: KL and top-1 agreement need one shared vocabulary (same tokenizer)"
            )
        ref_logp = F.log_softmax(ref_logits, dim=-1)
        kl = (ref_logp.exp() * (ref_logp - F.log_softmax(logits, dim=-1))).sum()
        return kl, ref_logits.argmax(dim=-1)

    return compare


@torch.no_grad()
def evaluate(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    tokenizer: Any = None,
    reference: torch.nn.Module | ReferenceFn | None = None,
    *,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    generation_tokens: int = 0,
    progress: bool = True,
) -> EvalReport:
    """One pass over ``input_ids`` (``LongTensor [N, S]``, packed, no padding): see :class:`EvalReport`.

    Args:
        model: a causal LM (called as ``model(input_ids=..., use_cache=False).logits``), or a function
            ``[B, S] ids -> [B, S, V] logits`` (then pass ``device``; its eval mode is the caller's).
        tokenizer: needed for bits per byte (:func:`target_bytes`).
        reference: a causal LM with the same vocabulary (e.g. the unpruned parent), or a
            :data:`ReferenceFn`; gives ``kl`` and ``top1_agreement``. A different logit width raises
            ``EvalError``.
        batch_size: samples per forward. ``device``: where batches go (default: the model's).
        generation_tokens: when positive, also time greedy generation of that many tokens from the
            first 16 tokens of the first sample (:func:`generation_tokens_per_s`).
    Modules run in eval mode (their training mode is restored) with float32 logits.
    """
    is_module = isinstance(model, torch.nn.Module)
    device = torch.device(device) if device is not None else _model_device(model)
    forward = _hf_logits(model) if is_module else model
    compare = (
        _reference_fn(reference, input_ids, device) if isinstance(reference, torch.nn.Module) else reference
    )
    counted = num_bytes = None
    if tokenizer is not None:
        counted, num_bytes = target_bytes(tokenizer, input_ids)
    nats = counted_nats = kl = seconds = 0.0
    agree = 0
    with _EvalMode(model, reference):
        for rows, batch, logits, took in _timed_batches(
            forward, input_ids, batch_size, device, "evaluate", progress
        ):
            seconds += took
            per_token = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
            nats += per_token.double().sum().item()
            if counted is not None:
                counted_nats += per_token[counted[rows].flatten().to(device)].double().sum().item()
            if compare is not None:
                batch_kl, ref_top1 = compare(rows, logits)
                kl += float(batch_kl)
                agree += int((logits.argmax(dim=-1) == ref_top1.to(device)).sum())
        generation = None
        if generation_tokens > 0 and is_module:
            generation = generation_tokens_per_s(model, input_ids[:1, :16], generation_tokens)
    num_targets = input_ids[:, 1:].numel()
    return EvalReport(
        loss=nats / num_targets,
        bits_per_byte=bits_per_byte_from_nats(counted_nats, num_bytes) if num_bytes else None,
        kl=kl / num_targets if compare is not None else None,
        top1_agreement=agree / num_targets if compare is not None else None,
        forward_tokens_per_s=input_ids.numel() / max(seconds, 1e-9),
        generation_tokens_per_s=generation,
        num_samples=input_ids.shape[0],
        seq_len=input_ids.shape[1],
        num_targets=num_targets,
        num_bytes=num_bytes,
    )


def heldout_loss(
    model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int = 4, progress: bool = True
) -> float:
    """Mean next-token cross-entropy (nats per token) over all ``N * (S - 1)`` predictions.

    ``input_ids``: ``LongTensor [N, S]``, e.g. from ``nemocompress.data.pack_tokens``. Every target
    counts, including the eos tokens that separate documents. The ``loss`` of :func:`evaluate`.
    """
    return evaluate(model, input_ids, batch_size=batch_size, progress=progress).loss


def bits_per_byte(
    model: torch.nn.Module,
    tokenizer: Any,
    input_ids: torch.Tensor,
    batch_size: int = 4,
    progress: bool = True,
) -> float:
    """Bits per UTF-8 byte of the predicted text (comparable across tokenizers); the rule of :func:`target_bytes`.

    ``input_ids``: ``LongTensor [N, S]``. The ``bits_per_byte`` of :func:`evaluate`.
    """
    return evaluate(model, input_ids, tokenizer, batch_size=batch_size, progress=progress).bits_per_byte


def _pad_id(model: Any, tokenizer: Any = None) -> int:
    for source in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, int):
                return value
    return 0


@torch.no_grad()
def generation_tokens_per_s(model: torch.nn.Module, prompt_ids: torch.Tensor, new_tokens: int = 32) -> float:
    """Greedy new tokens per second with the cache (``use_cache=True``), prompt ``LongTensor [B, P]``.

    Exactly ``new_tokens`` tokens are generated per sequence (eos does not stop it), after an untimed
    two-token warm-up; the result is ``B * new_tokens`` over the timed seconds.
    """
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be positive, got {new_tokens}")
    device = _model_device(model)
    prompt_ids = prompt_ids.to(device)
    kwargs = dict(
        attention_mask=torch.ones_like(prompt_ids),
        do_sample=False,
        use_cache=True,
        pad_token_id=_pad_id(model),
    )
    with _EvalMode(model):
        model.generate(prompt_ids, max_new_tokens=2, min_new_tokens=2, **kwargs)
        _synchronize(device)
        began = time.perf_counter()
        model.generate(prompt_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        _synchronize(device)
        seconds = time.perf_counter() - began
    return prompt_ids.shape[0] * new_tokens / max(seconds, 1e-9)


@torch.no_grad()
def generate_text(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy continuation of ``prompt``: the decoded new tokens only (special tokens skipped).

    Generation stops after ``max_new_tokens`` tokens or at the model's eos token. The model's training
    mode is restored afterwards.
    """
    device = _model_device(model)
    encoded = tokenizer(prompt, return_tensors="pt")
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded.get("attention_mask", torch.ones_like(encoded["input_ids"])).to(device)
    with _EvalMode(model):
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=_pad_id(model, tokenizer),
        )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
