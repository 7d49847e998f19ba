"""Cross-tokenizer distillation losses over aligned chunks: P-KL, H-KL (X-Token), ULD and GOLD (TRL).

Every loss reads the student's logits ``[B, S_s, V_s]`` and the teacher's ``[B, S_t, V_t]`` at prediction
positions (position i predicts target token i), and :class:`Chunks`: which prediction positions of each
side belong to each aligned chunk (:func:`chunks_from_alignments`). Probabilities are
``softmax(logits / T)`` in float32 (float64 kept) and every loss is multiplied by ``T**2``, as the
same-tokenizer losses are.

- :func:`pkl_loss` (X-Token P-KL): the teacher's top-k columns chosen once per batch by the largest teacher
  logit over all positions of the batch (padding included, as the reference code); student probabilities projected through W restricted to those columns
  (:func:`~nemocompress.xtoken.sparse.sparse_project`), averaged per chunk and renormalized; teacher
  log-probabilities over the same columns averaged per chunk and renormalized; forward KL divided by the
  number of chunks.
- :func:`hkl_loss` (X-Token H-KL): "common" token pairs (W's top weight >= 0.6, one teacher token each;
  on a collision the highest weight wins) compared by KL (the rest of each distribution as one more
  outcome), the other tokens by sorted-probability L1 (ULD) over at most ``top_k`` of them.
- :func:`uld_loss` (ULD as in TRL's GOLD trainer): each chunk's distribution is the one at its first
  position times the probabilities of the observed continuation; both sorted, zero-padded, L1; mean over
  a sample's chunks, then over samples.
- :func:`gold_loss` (TRL's hybrid ULD): tokens with identical strings in both vocabularies compared by
  generalized JSD (beta 0.5) on those probabilities, the rest by sorted L1; weighted by the matched share
  of the teacher vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distill.losses import kd_loss_spec
from ..distill.losses.reduction import compute_dtype
from .align import Alignment
from .projection import Projection
from .sparse import SparseMatrix, sparse_project

__all__ = [
    "Chunks",
    "TokenPairs",
    "chunks_from_alignments",
    "common_pairs",
    "gold_loss",
    "hkl_loss",
    "pkl_loss",
    "string_pairs",
    "uld_loss",
]

PKL_TOP_K = 8192
COMMON_WEIGHT = 0.6
_EPS = 1e-10
_TRL_EPS = 1e-8  # TRL clamps probabilities at 1e-8 before a log


@dataclass(frozen=True)
class Chunks:
    """Aligned chunks of a batch as flat indices into ``[B * S]`` prediction positions of each side.

    ``student_pos [N_s]`` / ``student_chunk [N_s]``: positions of the student's predictions and their chunk;
    ``student_target [N_s]``: the token each of those positions predicts; the same for the teacher;
    ``row [C]``: the sample of each chunk. Positions of one chunk are consecutive, first position first.
    """

    student_pos: Tensor
    student_chunk: Tensor
    student_target: Tensor
    teacher_pos: Tensor
    teacher_chunk: Tensor
    teacher_target: Tensor
    row: Tensor
    num_rows: int

    @property
    def num_chunks(self) -> int:
        return int(self.row.numel())

    def to(self, device) -> Chunks:
        tensors = [
            getattr(self, f) for f in ("student_pos", "student_chunk", "student_target", "teacher_pos")
        ]
        tensors += [self.teacher_chunk, self.teacher_target, self.row]
        return Chunks(*(t.to(device) for t in tensors), self.num_rows)


def chunks_from_alignments(
    alignments: list[Alignment], student_ids: Tensor, teacher_ids: Tensor, valid_teacher: Tensor | None = None
) -> Chunks:
    """Chunks of token alignments (one per sample, over whole sequences) as prediction positions.

    ``student_ids [B, S_s]`` and ``teacher_ids [B, S_t]`` are the input ids; token k is predicted at
    position k - 1 of logits ``[B, S - 1, V]``, so a chunk holding the first token of either side has no
    prediction and is dropped. ``valid_teacher [B, S_t]`` (False at padding) drops chunks touching padding.
    """
    s_len, t_len = student_ids.shape[1] - 1, teacher_ids.shape[1] - 1
    cols = {k: [] for k in ("sp", "sc", "st", "tp", "tc", "tt", "row")}
    c = 0
    for b, alignment in enumerate(alignments):
        for (s0, s1), (t0, t1) in zip(alignment.student, alignment.teacher):
            if s0 == 0 or t0 == 0:
                continue
            if valid_teacher is not None and not bool(valid_teacher[b, t0:t1].all()):
                continue
            cols["sp"] += [b * s_len + k - 1 for k in range(s0, s1)]
            cols["st"] += student_ids[b, s0:s1].tolist()
            cols["sc"] += [c] * (s1 - s0)
            cols["tp"] += [b * t_len + k - 1 for k in range(t0, t1)]
            cols["tt"] += teacher_ids[b, t0:t1].tolist()
            cols["tc"] += [c] * (t1 - t0)
            cols["row"].append(b)
            c += 1
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in cols.items()}
    return Chunks(t["sp"], t["sc"], t["st"], t["tp"], t["tc"], t["tt"], t["row"], len(alignments))


@dataclass(frozen=True)
class TokenPairs:
    """Student ids ``[M]`` paired one to one with teacher ids ``[M]`` (the common or matched tokens)."""

    student: Tensor
    teacher: Tensor

    def to(self, device) -> TokenPairs:
        return TokenPairs(self.student.to(device), self.teacher.to(device))


def common_pairs(projection: Projection, threshold: float = COMMON_WEIGHT) -> TokenPairs:
    """H-KL's common tokens: rows whose top weight in W is >= ``threshold``, each to its top teacher token;
    when several student tokens pick one teacher token, the one with the highest weight keeps it."""
    weight, teacher = projection.top_entry()
    keep = (weight >= threshold) & (teacher >= 0)
    s_ids = keep.nonzero().squeeze(1)
    order = torch.argsort(weight[s_ids], descending=True, stable=True)
    seen, student, paired = set(), [], []
    for s in s_ids[order].tolist():
        t = int(teacher[s])
        if t not in seen:
            seen.add(t)
            student.append(s)
            paired.append(t)
    return TokenPairs(torch.tensor(student, dtype=torch.long), torch.tensor(paired, dtype=torch.long))


def string_pairs(student_tokenizer, teacher_tokenizer) -> TokenPairs:
    """GOLD's matched tokens: identical token strings in both vocabularies (as TRL's ``get_vocab`` match)."""
    student_vocab = student_tokenizer.get_vocab()
    pairs = sorted(
        (t, student_vocab[s]) for s, t in teacher_tokenizer.get_vocab().items() if s in student_vocab
    )
    return TokenPairs(
        torch.tensor([s for _, s in pairs], dtype=torch.long),
        torch.tensor([t for t, _ in pairs], dtype=torch.long),
    )


# ---------------------------------------------------------------------- helpers


def _rows(logits: Tensor, pos: Tensor) -> Tensor:
    """The rows ``pos`` of ``[B, S, V]`` logits, flattened, in float32 (float64 kept): ``[N, V]``."""
    flat = logits.reshape(-1, logits.shape[-1])
    return flat[pos.to(flat.device)].to(compute_dtype(logits))


def _chunk_mean(values: Tensor, chunk: Tensor, num_chunks: int) -> Tensor:
    """``[N, K]`` rows averaged per chunk id ``[N]`` -> ``[C, K]``; the rows of a chunk are consecutive and
    every chunk has one (a segment reduction: ``index_add`` is 5x slower on CPU)."""
    lengths = torch.bincount(chunk, minlength=num_chunks)
    return torch.segment_reduce(values, "mean", lengths=lengths, axis=0)


def _per_row_mean(per_chunk: Tensor, chunks: Chunks) -> Tensor:
    """TRL's reduction: mean over each sample's chunks, then over samples (a sample without chunks adds 0)."""
    rows = per_chunk.new_zeros(chunks.num_rows).scatter_add(0, chunks.row, per_chunk)
    counts = torch.bincount(chunks.row, minlength=chunks.num_rows).clamp_min(1).to(per_chunk.dtype)
    return (rows / counts).mean()


def _zero(student_logits: Tensor) -> Tensor:
    return student_logits.sum() * 0.0  # keeps the graph (and DDP) intact when no chunk is left


def _sorted_l1(a: Tensor, b: Tensor, top: int | None = None) -> Tensor:
    """Per row L1 between the descending-sorted rows of ``a [C, Va]`` and ``b [C, Vb]``, zero-padded."""
    if top is not None:
        a = a.topk(min(top, a.shape[1]), dim=-1).values
        b = b.topk(min(top, b.shape[1]), dim=-1).values
    else:
        a = a.sort(dim=-1, descending=True).values
        b = b.sort(dim=-1, descending=True).values
    width = max(a.shape[1], b.shape[1])
    a, b = F.pad(a, (0, width - a.shape[1])), F.pad(b, (0, width - b.shape[1]))
    return (a - b).abs().sum(-1)


def _merged(probs: Tensor, chunk: Tensor, target: Tensor, num_chunks: int) -> Tensor:
    """TRL's chunk merge: the distribution at a chunk's first position times the probabilities of the
    observed continuation at its later positions (unnormalized): ``[N, V]`` -> ``[C, V]``."""
    first = torch.ones_like(chunk, dtype=torch.bool)
    first[1:] = chunk[1:] != chunk[:-1]
    observed = probs.gather(1, target[:, None]).squeeze(1).clamp_min(_TRL_EPS)
    log_factor = torch.zeros(num_chunks, dtype=probs.dtype, device=probs.device)
    log_factor = log_factor.scatter_add(0, chunk[~first], observed[~first].log())
    return probs[first] * log_factor.exp()[:, None]


def _columns(teacher_logits: Tensor, k: int) -> Tensor:
    """The teacher's top-k columns over a batch ``[..., V]``: those with the largest logit at any position."""
    best = teacher_logits
    while best.dim() > 1:  # one dimension at a time: a tuple of dims is 10x slower on a strided view
        best = best.amax(dim=-2)
    return best.topk(min(k, best.shape[0])).indices.sort().values


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    return logits if temperature == 1.0 else logits / temperature


# ---------------------------------------------------------------------- the losses


def pkl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    chunks: Chunks,
    projection: SparseMatrix,
    *,
    top_k: int = PKL_TOP_K,
    temperature: float = 1.0,
    values: Tensor | None = None,
) -> Tensor:
    """X-Token P-KL (see the module doc); ``projection`` is W ``[V_s, V_t]`` on the logits' device.

    ``values``: W's nonzero values to train (gradients reach them), else W is fixed. Returns a scalar:
    ``T**2 * sum over chunks of KL(teacher chunk || projected student chunk) / number of chunks``.
    """
    if chunks.num_chunks == 0:
        return _zero(student_logits)
    # columns first, then rows, on the [B, S, V] tensors as given (a shifted logits view is not contiguous:
    # flattening it would copy either model's whole logits)
    cols = _columns(teacher_logits, top_k)  # over every position of the batch, as the reference code
    teacher = teacher_logits[..., cols].to(compute_dtype(teacher_logits)).flatten(0, 1)[chunks.teacher_pos]
    log_t = torch.log_softmax(_scaled(teacher, temperature), dim=-1)
    log_t = torch.log_softmax(_chunk_mean(log_t, chunks.teacher_chunk, chunks.num_chunks), dim=-1)
    student = student_logits.to(compute_dtype(student_logits))
    probs = torch.softmax(_scaled(student, temperature), dim=-1).flatten(0, 1)
    projected = sparse_project(probs, projection.columns(cols), values)[chunks.student_pos]
    q = _chunk_mean(projected, chunks.student_chunk, chunks.num_chunks)
    q = q.clamp_min(_EPS)
    log_q = (q / q.sum(-1, keepdim=True)).log()
    kl = (log_t.exp() * (log_t - log_q)).sum(-1)
    return temperature**2 * kl.sum() / chunks.num_chunks


def hkl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    chunks: Chunks,
    common: TokenPairs,
    *,
    top_k: int = PKL_TOP_K,
    temperature: float = 1.0,
) -> Tensor:
    """X-Token H-KL (see the module doc): KL on the common pairs plus sorted L1 on the rest, per chunk mean."""
    if chunks.num_chunks == 0:
        return _zero(student_logits)
    n = chunks.num_chunks
    p_s = _chunk_mean(
        torch.softmax(_scaled(_rows(student_logits, chunks.student_pos), temperature), -1),
        chunks.student_chunk,
        n,
    )
    p_t = _chunk_mean(
        torch.softmax(_scaled(_rows(teacher_logits, chunks.teacher_pos), temperature), -1),
        chunks.teacher_chunk,
        n,
    )
    a, b = p_t[:, common.teacher], p_s[:, common.student]
    rest_t = (1.0 - a.sum(-1, keepdim=True)).clamp_min(0.0)
    rest_s = (1.0 - b.sum(-1, keepdim=True)).clamp_min(0.0)
    target, pred = torch.cat([a, rest_t], -1), torch.cat([b, rest_s], -1)
    kl = (torch.xlogy(target, target) - torch.xlogy(target, pred.clamp_min(_EPS))).sum(-1)
    rest_mask_s = torch.ones(p_s.shape[1], dtype=torch.bool, device=p_s.device)
    rest_mask_t = torch.ones(p_t.shape[1], dtype=torch.bool, device=p_t.device)
    rest_mask_s[common.student], rest_mask_t[common.teacher] = False, False
    l1 = torch.zeros_like(kl)
    if rest_mask_s.any() and rest_mask_t.any():
        l1 = _sorted_l1(p_s[:, rest_mask_s], p_t[:, rest_mask_t], top_k)
    return temperature**2 * (kl + l1).sum() / n


def uld_loss(
    student_logits: Tensor, teacher_logits: Tensor, chunks: Chunks, *, temperature: float = 1.0
) -> Tensor:
    """ULD as TRL's GOLD trainer computes it (extended alignment, no hybrid): see the module doc."""
    if chunks.num_chunks == 0:
        return _zero(student_logits)
    s, t = _merged_pair(student_logits, teacher_logits, chunks, temperature)
    return temperature**2 * _per_row_mean(_sorted_l1(s, t), chunks)


def gold_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    chunks: Chunks,
    matched: TokenPairs,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    matched_weight: float | None = None,
) -> Tensor:
    """GOLD (TRL's hybrid ULD): JSD on identically spelled tokens, sorted L1 on the rest.

    ``matched_weight`` None is TRL's default: the matched share of the teacher vocabulary (and 1 minus it
    for the unmatched part).
    """
    if chunks.num_chunks == 0:
        return _zero(student_logits)
    s, t = _merged_pair(student_logits, teacher_logits, chunks, temperature)
    log_s = s[:, matched.student].clamp_min(_TRL_EPS).log()
    log_t = t[:, matched.teacher].clamp_min(_TRL_EPS).log()
    jsd = (
        kd_loss_spec("jsd").per_token(log_s, log_t, beta=beta)
        if len(matched.student)
        else torch.zeros_like(s[:, 0])
    )
    mask_s = torch.ones(s.shape[1], dtype=torch.bool, device=s.device)
    mask_t = torch.ones(t.shape[1], dtype=torch.bool, device=t.device)
    mask_s[matched.student], mask_t[matched.teacher] = False, False
    l1 = _sorted_l1(s[:, mask_s], t[:, mask_t]) if mask_s.any() and mask_t.any() else torch.zeros_like(jsd)
    w = len(matched.teacher) / max(1, t.shape[1]) if matched_weight is None else matched_weight
    per_chunk = w * jsd + (1.0 - w) * l1
    return temperature**2 * _per_row_mean(per_chunk, chunks)


def _merged_pair(student_logits, teacher_logits, chunks: Chunks, temperature: float) -> tuple[Tensor, Tensor]:
    n = chunks.num_chunks
    p_s = torch.softmax(_scaled(_rows(student_logits, chunks.student_pos), temperature), -1)
    p_t = torch.softmax(_scaled(_rows(teacher_logits, chunks.teacher_pos), temperature), -1)
    s = _merged(p_s, chunks.student_chunk, chunks.student_target.to(p_s.device), n)
    t = _merged(p_t, chunks.teacher_chunk, chunks.teacher_target.to(p_t.device), n)
    return s, t
