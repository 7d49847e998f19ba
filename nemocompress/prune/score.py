"""Zero-shot scores of search candidates, measured on one loaded parent through masks (masked == sliced).

scorer = make_scorer("kl", parent, tokenizer, heldout_ids)     # one parent forward over heldout_ids, cached
value = score_masked(scorer, parent, plan.kept_tensors(), adapter)  # one forward of the masked parent
best = max(values, key=scorer.key)                               # larger key = better, whatever the metric

Scores (``spec``):

- ``"lm-loss"``: mean next-token cross-entropy on the held-out tokens (nats; lower is better);
- ``"kl"``: mean KL(parent || candidate) per target token (nats; lower is better);
- ``"top1"``: share of target tokens where the candidate's and the parent's most likely token agree;
- ``"mc:FILE.jsonl"``: multiple-choice accuracy by log-likelihood (:func:`load_choices`,
  :func:`choice_loglikelihoods`);
- a callable ``model -> float``: higher is better unless it has an attribute ``higher_is_better = False``.

lm-loss, kl and top1 are :func:`nemocompress.evaluate.evaluate` (the one evaluation); kl and top1 compare
against the parent's predictions computed once by :func:`make_scorer`, so scoring N candidates costs N + 1
forward passes over the held-out tokens instead of 2 N.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..arch import Adapter
from ..arch.masking import apply_masks
from ..data import DataError, _read_utf8
from ..errors import NemocompressError
from ..evaluate import ReferenceFn, evaluate, token_losses

__all__ = [
    "SCORES",
    "Choices",
    "ScoreError",
    "Scorer",
    "choice_loglikelihoods",
    "choices_accuracy",
    "load_choices",
    "make_scorer",
    "reference_bytes",
    "score_masked",
]

SCORES = ("lm-loss", "kl", "top1", "mc:FILE.jsonl")
REFERENCE_LIMIT_BYTES = 4 * 2**30


class ScoreError(NemocompressError, ValueError):
    """A score cannot be set up as asked (unknown name, a reference too large to cache)."""


@dataclass(frozen=True)
class Scorer:
    """One score for a whole search: built once by :func:`make_scorer`, called once per candidate.

    ``scorer(model)`` returns the raw metric (e.g. a loss in nats); ``scorer.key(value)`` turns it into a
    sort key where larger is better (``-loss`` for a loss; NaN sorts last).
    """

    name: str
    higher_is_better: bool
    measure: Callable[[torch.nn.Module], float]

    def __call__(self, model: torch.nn.Module) -> float:
        value = self.measure(model)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ScoreError(
                f"score {self.name!r} returned {value!r}, not a number: return a float"
            ) from None

    def key(self, value: float) -> float:
        if math.isnan(value):
            return -math.inf
        return value if self.higher_is_better else -value


def reference_bytes(heldout_ids: torch.Tensor, vocab_size: int) -> int:
    """CPU memory of the cached ``kl`` reference: ``N * (S - 1)`` target tokens x ``vocab_size`` x 4 bytes."""
    return heldout_ids.shape[0] * (heldout_ids.shape[1] - 1) * vocab_size * 4


def _logit_width(model: torch.nn.Module) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.vocab_size


def _cached_reference(
    parent: torch.nn.Module, heldout_ids: torch.Tensor, with_kl: bool, batch_size: int, progress: bool
) -> ReferenceFn:
    """One :func:`evaluate` pass of the parent that records its predictions; returns a ReferenceFn over them.

    Cached on CPU: the parent's top-1 token ``[N, S - 1]`` int64 and, ``with_kl``, its probabilities
    ``p`` ``[N, S - 1, V]`` float32 and ``sum_v p log p`` per target ``[N, S - 1]`` float32. A candidate's
    KL per target is then ``sum p log p - sum p log q``: one log-softmax and one product with ``p`` per
    candidate (half the arithmetic of the textbook form), computed by the same expression for both terms,
    so that a candidate with the parent's logits has a KL of exactly 0. On a GPU the cache is pinned and
    each batch copies its ``B * (S - 1) * V * 4`` bytes to the device.
    """
    targets = heldout_ids.shape[0], heldout_ids.shape[1] - 1
    top1 = torch.empty(targets, dtype=torch.long)
    pinned = next(parent.parameters()).device.type == "cuda"  # faster host-to-device copies per batch
    probs = None
    if with_kl:
        probs = torch.empty(*targets, _logit_width(parent), dtype=torch.float32, pin_memory=pinned)
    plogp = torch.empty(targets, dtype=torch.float32)

    def record(rows: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top1[rows] = logits.argmax(dim=-1).cpu()
        if probs is not None:
            logp = F.log_softmax(logits, dim=-1)
            p = logp.exp()
            probs[rows], plogp[rows] = p.cpu(), _dot(p, logp).cpu()
        return torch.zeros(()), top1[rows]

    evaluate(parent, heldout_ids, reference=record, batch_size=batch_size, progress=progress)

    def compare(rows: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if probs is None:
            return torch.zeros(()), top1[rows]
        if logits.shape[-1] != probs.shape[-1]:
            raise ScoreError(
                f"the candidate has {logits.shape[-1]} logits per token, the parent {probs.shape[-1]}: "
                "kl needs the parent's vocabulary"
            )
        p = probs[_as_slice(rows)].to(logits.device, non_blocking=True)
        cross = _dot(p, F.log_softmax(logits, dim=-1))
        kl = (plogp[_as_slice(rows)].to(logits.device).double() - cross.double()).sum()
        return kl, top1[rows]

    return compare


def _dot(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``sum_v p log q`` per target ``[B, T]`` of ``[B, T, V]`` tensors, with no ``[B, T, V]`` temporary."""
    return torch.einsum("btv,btv->bt", p, logq)


def _as_slice(rows: torch.Tensor) -> slice | torch.Tensor:
    """Consecutive rows (as :func:`evaluate` passes them) as a slice: a view of the cache, not a copy."""
    first = int(rows[0])
    return (
        slice(first, first + len(rows)) if torch.equal(rows, torch.arange(first, first + len(rows))) else rows
    )


def _reference_scorer(
    name: str,
    parent: torch.nn.Module,
    heldout_ids: torch.Tensor,
    batch_size: int,
    progress: bool,
    limit_bytes: int,
) -> Scorer:
    if name == "kl":
        needed = reference_bytes(heldout_ids, _logit_width(parent))
        if needed > limit_bytes:
            n, s = heldout_ids.shape
            raise ScoreError(
                f"--score kl caches the parent's next-token probabilities on CPU: {n} samples x "
                f"{s - 1} targets x {_logit_width(parent)} logits x 4 bytes = {needed / 2**30:.1f} GiB, "
                f"above the {limit_bytes / 2**30:.1f} GiB limit: score on fewer held-out samples "
                "(--score-samples) or shorter ones, or use --score top1 or lm-loss"
            )
    compare = _cached_reference(parent, heldout_ids, name == "kl", batch_size, progress)

    def measure(model: torch.nn.Module) -> float:
        report = evaluate(model, heldout_ids, reference=compare, batch_size=batch_size, progress=progress)
        return report.kl if name == "kl" else report.top1_agreement

    return Scorer(name, name == "top1", measure)


def _check_heldout(spec: str, heldout_ids: Any) -> None:
    if not isinstance(heldout_ids, torch.Tensor) or heldout_ids.dim() != 2 or heldout_ids.shape[1] < 2:
        got = (
            tuple(heldout_ids.shape) if isinstance(heldout_ids, torch.Tensor) else type(heldout_ids).__name__
        )
        raise ScoreError(
            f"--score {spec} needs held-out token ids [N, S] with S >= 2 (got {got}): pass "
            "build_samples(...).heldout"
        )


def make_scorer(
    spec: str | Callable[[torch.nn.Module], float],
    parent: torch.nn.Module,
    tokenizer: Any,
    heldout_ids: torch.Tensor,
    batch_size: int = 4,
    progress: bool = False,
    *,
    reference_limit_bytes: int = REFERENCE_LIMIT_BYTES,
) -> Scorer:
    """The scorer for ``spec`` (see the module docstring), ready to score candidates of ``parent``.

    Args:
        parent: the loaded, unpruned model; candidates are the parent masked (:func:`score_masked`) or
            sliced models with the same vocabulary.
        tokenizer: used by ``mc:`` only.
        heldout_ids: ``LongTensor [N, S]`` of packed held-out tokens (e.g. ``build_samples(...).heldout``),
            never seen by importance or distillation; used by lm-loss, kl and top1.
        batch_size: samples (or, for ``mc:``, question + choice sequences) per forward.
        reference_limit_bytes: for ``kl``, the parent's full next-token distributions are kept on CPU
            in float32, ``N * (S - 1) * vocab * 4`` bytes (:func:`reference_bytes`; 16 samples of 512
            tokens with a 128k vocabulary: 4.0 GiB); above this limit (default 4 GiB) ``ScoreError`` is
            raised before any forward. ``top1`` keeps the parent's top-1 token only (``N * (S - 1) * 8``
            bytes).

    For kl and top1 this runs one forward pass of the parent over ``heldout_ids``; each candidate then
    costs one forward pass of the candidate.
    """
    if callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return Scorer(name, bool(getattr(spec, "higher_is_better", True)), spec)
    if isinstance(spec, str) and spec.startswith("mc:"):
        if tokenizer is None:
            raise ScoreError(f"--score {spec} scores text: pass the model's tokenizer")
    elif spec in ("lm-loss", "kl", "top1"):
        _check_heldout(spec, heldout_ids)
    if spec == "lm-loss":
        return Scorer(
            spec,
            False,
            lambda model: evaluate(model, heldout_ids, batch_size=batch_size, progress=progress).loss,
        )
    if spec in ("kl", "top1"):
        return _reference_scorer(spec, parent, heldout_ids, batch_size, progress, reference_limit_bytes)
    if isinstance(spec, str) and spec.startswith("mc:") and len(spec) > 3:
        path = Path(spec[3:])
        items = load_choices(path)

        def measure(model: torch.nn.Module) -> float:
            return choices_accuracy(
                items, choice_loglikelihoods(model, tokenizer, items, batch_size, progress)
            )

        return Scorer(f"mc:{path.name}", True, measure)
    raise ScoreError(
        f"unknown score {spec!r}: use one of {', '.join(SCORES)} (a local multiple-choice file), "
        "or pass a Python callable model -> float"
    )


def score_masked(
    scorer: Scorer, parent: torch.nn.Module, kept: Mapping[str, torch.Tensor], adapter: Adapter
) -> float:
    """Score the candidate ``kept`` (axis -> kept units, e.g. :meth:`Plan.kept_tensors`; depth through
    ``kept["layers"]``) as ``parent`` masked to it: the value the sliced model would get, with no copy.

    The masks are removed afterwards, also when scoring raises. (Mamba mixers must run their PyTorch path
    for masks to equal slicing, see :mod:`nemocompress.arch.masking`.)
    """
    with apply_masks(parent, kept, adapter):
        return scorer(parent)


@dataclass(frozen=True)
class Choices:
    """One multiple-choice question: the ``question`` text, its ``choices`` and the index of the answer."""

    question: str
    choices: tuple[str, ...]
    answer: int


_MC_FIX = 'write one object per line: {"question": str, "choices": [str, ...], "answer": index or choice}'


def _parse_choices(line: str, where: str) -> Choices:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not valid JSON ({e.msg}): {_MC_FIX}") from None
    if not isinstance(record, dict):
        raise DataError(f"{where} is a JSON {type(record).__name__}, not an object: {_MC_FIX}")
    missing = [k for k in ("question", "choices", "answer") if k not in record]
    if missing:
        raise DataError(
            f"{where} lacks the field(s) {', '.join(missing)} (it has {sorted(record)}): {_MC_FIX}"
        )
    question, choices, answer = record["question"], record["choices"], record["answer"]
    if not isinstance(question, str) or not question:
        raise DataError(f"{where}: 'question' must be a non-empty string")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise DataError(f"{where}: 'choices' must be a list of at least two non-empty strings")
    if isinstance(answer, str):
        if answer not in choices:
            raise DataError(
                f"{where}: 'answer' {answer!r} is not one of the choices: "
                "give the choice text exactly or its index"
            )
        answer = choices.index(answer)
    elif isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataError(
            f"{where}: 'answer' {answer!r} is not an index into the {len(choices)} choices: "
            f"give 0 to {len(choices) - 1} or the choice text"
        )
    return Choices(question, tuple(choices), answer)


def load_choices(path: str | Path) -> list[Choices]:
    """Read a multiple-choice JSONL file: one ``{"question", "choices", "answer"}`` object per line.

    ``answer`` is the index of the right choice (0-based) or its exact text. Blank lines are skipped. A
    missing file, bad JSON, a missing field or an answer out of range raises ``DataError`` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"multiple-choice file {path} does not exist: pass mc:PATH to a local .jsonl file")
    items = [
        _parse_choices(line, f"{path}:{number}")
        for number, line in enumerate(_read_utf8(path).splitlines(), 1)
        if line.strip()
    ]
    if not items:
        raise DataError(f"multiple-choice file {path} holds no question: {_MC_FIX}")
    return items


def _choice_tokens(tokenizer: Any, item: Choices) -> list[tuple[list[int], int]]:
    """``(ids of question + choice, number of question tokens)`` per choice.

    The choice follows the question after one space (none when the question ends in whitespace); the
    choice's tokens are those of the joined text after the question's own tokens (lm-evaluation-harness's
    rule, which keeps the tokenizer's merges across the boundary).
    """
    context = tokenizer(item.question)["input_ids"]
    sep = "" if item.question[-1].isspace() else " "
    out = []
    for choice in item.choices:
        ids = tokenizer(item.question + sep + choice)["input_ids"]
        if not context or len(ids) <= len(context):
            raise DataError(
                f"question {item.question[:40]!r} / choice {choice[:40]!r} gives no token to score: "
                "check the tokenizer and the file"
            )
        out.append((ids, len(context)))
    return out


@torch.no_grad()
def choice_loglikelihoods(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[Choices],
    batch_size: int = 4,
    progress: bool = False,
) -> list[list[float]]:
    """Log-likelihood of each choice given its question: the sum of the choice tokens' log-probs (nats).

    All question + choice sequences are sorted by length and run ``batch_size`` at a time, right-padded:
    a causal model's prediction at a position does not depend on later tokens, so padding changes no
    scored log-prob. The per-token losses are :func:`nemocompress.evaluate.token_losses`.
    Returns one list per question, one float per choice.
    """
    sequences = []  # (question index, choice index, ids, question tokens)
    for q, item in enumerate(items):
        for c, (ids, context) in enumerate(_choice_tokens(tokenizer, item)):
            sequences.append((q, c, ids, context))
    sequences.sort(key=lambda s: len(s[2]), reverse=True)
    result = [[0.0] * len(item.choices) for item in items]
    starts = range(0, len(sequences), batch_size)
    for start in tqdm(starts, desc="multiple choice", disable=None if progress else True):
        chunk = sequences[start : start + batch_size]
        width = len(chunk[0][2])
        batch = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, (_, _, ids, _) in enumerate(chunk):
            batch[row, : len(ids)] = torch.tensor(ids)
        losses = token_losses(model, batch, batch_size=len(chunk), progress=False)  # [B, width - 1]
        for row, (q, c, ids, context) in enumerate(chunk):
            # loss[t] scores token t + 1: the choice tokens context .. len(ids) - 1
            result[q][c] = -losses[row, context - 1 : len(ids) - 1].double().sum().item()
    return result


def choices_accuracy(items: Sequence[Choices], loglikelihoods: Sequence[Sequence[float]]) -> float:
    """Share of questions whose most likely choice (the first one on a tie) is the answer."""
    right = sum(
        max(range(len(ll)), key=lambda c: (ll[c], -c)) == item.answer
        for item, ll in zip(items, loglikelihoods)
    )
    return right / len(items)
