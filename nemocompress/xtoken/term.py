"""The cross-tokenizer KD term the distillation trainer calls each micro-batch, and the losses' registration.

For each student sample the term spells the text the student tokens stand for, tokenizes it with the
teacher's tokenizer, runs the teacher on that, aligns the two tokenizations into chunks
(:func:`~nemocompress.xtoken.align.align_pieces`) and computes the chosen loss
(:mod:`nemocompress.xtoken.losses`). CE on the student's own tokens is mixed in by dynamic scaling
``sg(CE / KD) * KD + CE`` (X-Token's default) or by the fixed ``kd_weight`` / ``ce_weight``.

Importing :mod:`nemocompress.xtoken` registers ``pkl``, ``hkl``, ``uld`` and ``gold`` as KD losses, so
``DistillConfig(kd_loss="pkl")`` and ``nemocompress distill --kd-loss pkl`` accept them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..distill.config import CE_MIXES
from ..distill.losses import KDLossSpec, cross_entropy_loss, register_kd_loss
from .align import align_pieces
from .losses import (
    Chunks,
    chunks_from_alignments,
    common_pairs,
    gold_loss,
    hkl_loss,
    pkl_loss,
    string_pairs,
    uld_loss,
)
from .projection import Projection, build_projection
from .vocab import TokenBytes, XTokenError

__all__ = ["MISSING_LOGIT", "CrossTokenizerKD", "TeacherView", "dense_logits", "projection_for"]

logger = logging.getLogger(__name__)

# A logit outside a cached top-k: finite (so 0 * log 0 stays 0 in the losses) yet exp() of it is 0.
MISSING_LOGIT = -1e9


@dataclass
class TeacherView:
    """What one teacher gives a micro-batch: ``logits [B, S_t - 1, V_t]`` at its prediction positions, the
    aligned ``chunks``, its next-token ``targets [B, S_t - 1]`` (-100 at padding) and the bytes of text
    those targets spell."""

    logits: Tensor
    chunks: Chunks
    targets: Tensor
    num_bytes: int


def projection_for(
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    path: str | Path | None = None,
    cache: str | Path | None = None,
    top_k: int = 4,
) -> Projection:
    """W for two tokenizers: read from ``path`` (refused if built for others), else from ``cache`` when it
    was built for these tokenizers, else built now and written to ``cache``."""
    if path is not None:
        return Projection.load(path, student_tokenizer, teacher_tokenizer)
    if cache is not None and Path(cache).is_file():
        try:
            return Projection.load(cache, student_tokenizer, teacher_tokenizer)
        except XTokenError:
            logger.info("the cached projection %s is for other tokenizers: rebuilding it", cache)
    projection = build_projection(student_tokenizer, teacher_tokenizer, top_k=top_k)
    if cache is not None:
        projection.save(cache, overwrite=True)
        logger.info("built the projection W and cached it in %s", cache)
    return projection


class CrossTokenizerKD:
    """The KD term between a student and a teacher of another tokenizer, in three steps: :meth:`teacher_view`
    (the teacher's logits on its own tokens of the micro-batch's text, live or from a cross-tokenizer
    teacher cache, and the aligned chunks), :meth:`kd_term` (the chunk-averaged loss) and :meth:`mix` with
    CE. The trainer sums several teachers' KD terms (or takes the one with the lowest :meth:`teacher_ce`)
    before mixing.

    Args:
        loss: ``"pkl"``, ``"hkl"``, ``"uld"`` or ``"gold"``.
        student_tokenizer, teacher_tokenizer: transformers tokenizers of the two models.
        student_width, teacher_width: the models' logit widths (``config.vocab_size``).
        projection: a W file from ``nemocompress xtoken map`` (P-KL, H-KL), else built (and kept in
            ``cache`` when given).
        temperature: softmax temperature of the KD term.
        mix: ``"dynamic"`` (``sg(CE / KD) * KD + CE``) or ``"fixed"`` (``kd_weight * KD + ce_weight * CE``).
    """

    def __init__(
        self,
        loss: str,
        student_tokenizer: Any,
        teacher_tokenizer: Any,
        *,
        student_width: int,
        teacher_width: int,
        projection: str | Path | None = None,
        cache: str | Path | None = None,
        temperature: float = 1.0,
        mix: str = "dynamic",
        kd_weight: float = 1.0,
        ce_weight: float = 0.0,
    ) -> None:
        if mix not in CE_MIXES:
            raise XTokenError(f"ce_mix must be one of {', '.join(CE_MIXES)}; got {mix!r}")
        self.name, self.teacher_tokenizer = loss, teacher_tokenizer
        self.student_vocab, self.teacher_vocab = (
            TokenBytes.of(student_tokenizer),
            TokenBytes.of(teacher_tokenizer),
        )
        for side, vocab, width in (("student", self.student_vocab, student_width), ("teacher", self.teacher_vocab, teacher_width)):  # fmt: skip
            if len(vocab) > width:
                raise XTokenError(
                    f"the {side} tokenizer has {len(vocab)} ids but its model only {width} logits: "
                    "pair each model with its own tokenizer"
                )
        self.mix_mode, self.kd_weight, self.ce_weight = mix, kd_weight, ce_weight
        self.temperature, self.teacher_width = temperature, teacher_width
        self.pad_id = teacher_tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = teacher_tokenizer.eos_token_id if teacher_tokenizer.eos_token_id is not None else 0
        self.projection = self.common = self.matched = None
        if loss in ("pkl", "hkl"):
            self.projection = projection_for(student_tokenizer, teacher_tokenizer, projection, cache).resized(
                student_width, teacher_width
            )
            if loss == "hkl":
                self.common = common_pairs(self.projection)
        elif loss == "gold":
            self.matched = string_pairs(student_tokenizer, teacher_tokenizer)
        self._device = None

    def _to(self, device: torch.device) -> None:
        if self._device != device:
            if self.projection is not None:
                self.projection = Projection(
                    self.projection.matrix.to(device), self.projection.student_fingerprint,
                    self.projection.teacher_fingerprint, self.projection.top_k, self.projection.stats,
                )  # fmt: skip
            self.common = None if self.common is None else self.common.to(device)
            self.matched = None if self.matched is None else self.matched.to(device)
            self._device = device

    def teacher_inputs(
        self, input_ids: Tensor, limit: int | None = None
    ) -> tuple[Tensor, Tensor, list[list[bytes | None]], list[list[bytes | None]]]:
        """The teacher's ids ``[B, S_t]`` and validity mask for the text of each student row, and both sides'
        token bytes; ``limit`` (the teacher's context) cuts longer teacher rows."""
        student = self.student_pieces(input_ids)
        texts = [b"".join(p or b"" for p in row).decode("utf-8", errors="replace") for row in student]
        backend = getattr(self.teacher_tokenizer, "backend_tokenizer", None)
        if backend is not None:
            rows = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            rows = [self.teacher_tokenizer.encode(t, add_special_tokens=False) for t in texts]
        if limit:  # the teacher's tokens outrun its context: cut them
            rows = [row[:limit] for row in rows]
        width = max(2, max(map(len, rows)))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            valid[b, : len(row)] = True
        return ids, valid, student, self.teacher_pieces(ids, valid)

    def student_pieces(self, input_ids: Tensor) -> list[list[bytes | None]]:
        vocab = self.student_vocab
        return [[vocab.pieces[i] if i < len(vocab) else None for i in row] for row in input_ids.tolist()]

    def teacher_pieces(self, teacher_ids: Tensor, valid: Tensor) -> list[list[bytes | None]]:
        pieces, lengths = self.teacher_vocab.pieces, valid.sum(1).tolist()
        return [[pieces[i] for i in row[:n]] for row, n in zip(teacher_ids.tolist(), lengths)]

    def teacher_view(self, input_ids: Tensor, teacher: nn.Module | None = None, cached=None) -> TeacherView:
        """The teacher's reading of a micro-batch ``[B, S]``: ``teacher`` runs on its own tokens of the text,
        or ``cached`` (from a cross-tokenizer teacher cache: the teacher's ids ``[B, L]``, validity ``[B, L]``
        and top-k logit values and ids ``[B, L - 1, k]``) stands for it: logits outside the cached top-k
        are :data:`MISSING_LOGIT` (probability 0, the rest renormalized)."""
        device = input_ids.device
        self._to(device)
        if cached is not None:
            teacher_ids, valid, values, indices = (t.cpu() for t in cached)
            student_pieces = self.student_pieces(input_ids)
            teacher_pieces = self.teacher_pieces(teacher_ids, valid)
            logits = dense_logits(values.to(device), indices.to(device), self.teacher_width)
        else:
            limit = getattr(getattr(teacher, "config", None), "max_position_embeddings", None)
            teacher_ids, valid, student_pieces, teacher_pieces = self.teacher_inputs(input_ids, limit)
            with torch.no_grad():
                out = teacher(
                    input_ids=teacher_ids.to(device), attention_mask=valid.long().to(device), use_cache=False
                )
            logits = out.logits[:, :-1]
        alignments = [align_pieces(s, t) for s, t in zip(student_pieces, teacher_pieces)]
        chunks = chunks_from_alignments(alignments, input_ids.cpu(), teacher_ids, valid).to(device)
        targets = teacher_ids[:, 1:].masked_fill(~valid[:, 1:], -100).to(device)
        num_bytes = sum(len(p or b"") for row in teacher_pieces for p in row[1:])
        return TeacherView(logits, chunks, targets, num_bytes)

    def kd(self, student_logits: Tensor, teacher_logits: Tensor, chunks) -> Tensor:
        """The KD loss of aligned chunks (teacher logits at prediction positions ``[B, S_t - 1, V_t]``)."""
        t = self.temperature
        if self.name == "pkl":
            return pkl_loss(student_logits, teacher_logits, chunks, self.projection.matrix, temperature=t)
        if self.name == "hkl":
            return hkl_loss(student_logits, teacher_logits, chunks, self.common, temperature=t)
        if self.name == "uld":
            return uld_loss(student_logits, teacher_logits, chunks, temperature=t)
        return gold_loss(student_logits, teacher_logits, chunks, self.matched, temperature=t)

    def kd_term(self, student_logits: Tensor, view: TeacherView, num_items: float) -> Tensor:
        """The KD term of one micro-batch: the chunk mean, weighted as the micro-batch's share of the global
        batch's ``num_items`` targets."""
        self._to(student_logits.device)
        share = student_logits.shape[:-1].numel() / num_items
        return self.kd(student_logits, view.logits, view.chunks) * share

    @staticmethod
    def teacher_ce(view: TeacherView) -> Tensor:
        """The teacher's cross-entropy on its own tokens of the batch, in nats per byte of text (so teachers
        with different tokenizers compare)."""
        nats = cross_entropy_loss(view.logits.detach(), view.targets, num_items=1)
        return nats / max(1, view.num_bytes)

    def mix(self, kd: Tensor, ce: Tensor) -> Tensor:
        """The logit loss from the KD and CE terms: ``sg(CE / KD) * KD + CE``, or the fixed weights."""
        if self.mix_mode == "dynamic":
            scale = torch.where(kd.detach() > 0, ce.detach() / kd.detach().clamp_min(1e-12), 0.0)
            return scale * kd + ce
        return self.kd_weight * kd + self.ce_weight * ce


def dense_logits(values: Tensor, indices: Tensor, width: int) -> Tensor:
    """``[..., width]`` logits holding ``values [..., k]`` at ``indices [..., k]`` and :data:`MISSING_LOGIT`
    elsewhere (float32)."""
    out = torch.full((*values.shape[:-1], width), MISSING_LOGIT, dtype=torch.float32, device=values.device)
    return out.scatter_(-1, indices.long(), values.float())


_SUMMARIES = {
    "pkl": "cross-tokenizer: KL to the teacher through the projection W (X-Token P-KL)",
    "hkl": "cross-tokenizer: KL on common tokens, sorted L1 on the rest (X-Token H-KL)",
    "uld": "cross-tokenizer: L1 between sorted probabilities (ULD, as TRL)",
    "gold": "cross-tokenizer: JSD on identical token strings, sorted L1 on the rest (GOLD, as TRL)",
}
for _name, _summary in _SUMMARIES.items():
    register_kd_loss(
        KDLossSpec(_name, None, teacher="aligned", summary=_summary, cross_tokenizer=CrossTokenizerKD)
    )
