"""The projection W from a student vocabulary to a teacher one, built from the two tokenizers alone.

W is ``[V_student, V_teacher]``, sparse, each row a distribution over teacher tokens (METHODS 4, X-Token):

1. tokens compared as the bytes they stand for (:mod:`nemocompress.xtoken.vocab`: space, newline and tab
   markers and byte tokens in one canonical form);
2. a student token whose bytes are one teacher token gets that token with weight 1 (pinned);
3. otherwise its text is re-encoded by the teacher tokenizer (at most 32 pieces), piece i weighted
   0.9 * 0.1^i, normalized; the reverse pass re-encodes each teacher token with the student tokenizer
   and adds its pieces' weights to the entries (student piece, teacher token);
4. special tokens are matched by string similarity (>= 0.3, weight similarity x 0.8);
5. rows normalized, the 32 largest kept, then the runtime ``top_k`` (4 by default), normalized again.

projection = build_projection(student_tokenizer, teacher_tokenizer, top_k=4)
projection.save("w.safetensors")
projection = Projection.load("w.safetensors", student_tokenizer, teacher_tokenizer)  # refuses others
print(projection.table())
"""

from __future__ import annotations

import difflib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..checkpoint import atomic_file, check_output_dir
from ..distill.models import tokenizer_digest
from ..report import format_table
from .sparse import SparseMatrix
from .vocab import TokenBytes, XTokenError, display

__all__ = ["FORMAT", "MAX_PIECES", "Projection", "build_projection"]

FORMAT = "nemocompress-xtoken-projection"
VERSION = 1
MAX_PIECES = 32  # teacher pieces read per re-encoded token, and entries kept per row before the runtime top-k
SPECIAL_SIMILARITY = 0.3
SPECIAL_WEIGHT = 0.8
SPECIAL_MATCHES = 3
_MAX_GREEDY_BYTES = 64


def piece_weights(num_pieces: int) -> list[float]:
    """0.9, 0.09, 0.009, ... for ``num_pieces`` pieces, normalized to sum to one."""
    raw = [0.9 * 0.1**i for i in range(num_pieces)]
    total = sum(raw)
    return [w / total for w in raw]


@dataclass
class Projection:
    """A built W: the sparse matrix, the fingerprints of the tokenizers it is for, its top-k and statistics.

    ``matrix``: CSR ``[V_student, V_teacher]`` float32, every covered row summing to one.
    ``stats``: ``exact_share`` (student tokens pinned to one teacher token), ``mean_pieces`` (teacher
    pieces per re-encoded student token), ``student_coverage`` / ``teacher_coverage`` (share of each
    vocabulary's non-special tokens with an entry), ``nnz``, ``seconds``. ``examples``: a few
    ``(student token, [(teacher token, weight)])`` of re-encoded tokens, for the table.
    """

    matrix: SparseMatrix
    student_fingerprint: str
    teacher_fingerprint: str
    top_k: int
    stats: dict[str, float] = field(default_factory=dict)
    examples: list[tuple[str, list[tuple[str, float]]]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def check(
        self, student_tokenizer: Any, teacher_tokenizer: Any, path: str | Path = "the projection"
    ) -> None:
        """Raise XTokenError unless this W was built for these two tokenizers."""
        found = (tokenizer_digest(student_tokenizer), tokenizer_digest(teacher_tokenizer))
        if found != (self.student_fingerprint, self.teacher_fingerprint):
            raise XTokenError(
                f"{path} was built for other tokenizers (student {self.student_fingerprint}, teacher "
                f"{self.teacher_fingerprint}; these are {found[0]}, {found[1]}): rebuild it with "
                "`nemocompress xtoken map --student-tokenizer S --teacher-tokenizer T -o W`"
            )

    def resized(self, rows: int, cols: int) -> Projection:
        """The same W as ``[rows, cols]`` (a model's logit widths may exceed its tokenizer's ids)."""
        if (rows, cols) == self.shape:
            return self
        m = self.matrix
        used_rows = int((m.crow.diff() > 0).nonzero().max()) + 1 if m.nnz else 0
        used_cols = int(m.col.max()) + 1 if m.nnz else 0
        if rows < used_rows or cols < used_cols:
            raise XTokenError(
                f"the projection has entries up to student id {used_rows - 1} and teacher id {used_cols - 1}, "
                f"but the models have {rows} and {cols} logits: rebuild W for these tokenizers"
            )
        crow = torch.cat([m.crow[: rows + 1], m.crow[-1:].expand(max(0, rows + 1 - len(m.crow)))])
        return Projection(
            SparseMatrix(crow, m.col, m.values, (rows, cols)), self.student_fingerprint,
            self.teacher_fingerprint, self.top_k, self.stats, self.examples,
        )  # fmt: skip

    def top_entry(self) -> tuple[Tensor, Tensor]:
        """``(weight [V_s], teacher id [V_s])`` of each row's largest entry (weight 0, id -1 for an empty row)."""
        m = self.matrix
        weight = torch.zeros(m.shape[0], dtype=m.values.dtype)
        ids = torch.full((m.shape[0],), -1, dtype=torch.long)
        if m.nnz:
            rows = m.row_ids()
            order = torch.argsort(m.values, stable=True)  # ascending: the largest value is written last
            weight[rows[order]] = m.values[order]
            ids[rows[order]] = m.col[order]
        return weight, ids

    # ------------------------------------------------------------------ safetensors
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write W, its fingerprints and statistics to one safetensors file (beside, then renamed)."""
        path = check_output_dir(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        m = self.matrix
        meta = {
            "format": FORMAT, "version": str(VERSION), "shape": json.dumps(list(m.shape)),
            "student_fingerprint": self.student_fingerprint, "teacher_fingerprint": self.teacher_fingerprint,
            "top_k": str(self.top_k), "stats": json.dumps(self.stats), "examples": json.dumps(self.examples),
        }  # fmt: skip
        tensors = {"crow": m.crow.contiguous(), "col": m.col.contiguous(), "values": m.values.contiguous()}
        with atomic_file(path) as tmp:
            save_file(tensors, tmp, metadata=meta)
        return path

    @classmethod
    def load(
        cls, path: str | Path, student_tokenizer: Any = None, teacher_tokenizer: Any = None
    ) -> Projection:
        """Read a W saved by :meth:`save`; with both tokenizers, refuse one built for others."""
        path = Path(path)
        if not path.is_file():
            raise XTokenError(
                f"projection file {path} does not exist: build it with `nemocompress xtoken map`"
            )
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("crow", "col", "values")}
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise XTokenError(f"{path} is not a readable projection file ({e}): rebuild it") from None
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise XTokenError(
                f"{path} is not a {FORMAT} v{VERSION} file: rebuild it with `nemocompress xtoken map`"
            )
        shape = tuple(json.loads(meta["shape"]))
        projection = cls(
            SparseMatrix(tensors["crow"], tensors["col"], tensors["values"], shape),
            meta["student_fingerprint"], meta["teacher_fingerprint"], int(meta["top_k"]),
            json.loads(meta["stats"]), [tuple(e) for e in json.loads(meta.get("examples", "[]"))],
        )  # fmt: skip
        if student_tokenizer is not None and teacher_tokenizer is not None:
            projection.check(student_tokenizer, teacher_tokenizer, path)
        return projection

    def table(self) -> str:
        """Statistics and a few re-encoded tokens, for the terminal."""
        s = self.stats
        rows = [
            ["shape (student x teacher)", f"{self.shape[0]:,} x {self.shape[1]:,}"],
            ["entries (top-k)", f"{int(s.get('nnz', self.matrix.nnz)):,} ({self.top_k})"],
            ["exact matches (weight 1)", f"{s.get('exact_share', 0.0):.1%}"],
            ["mean teacher pieces, re-encoded", f"{s.get('mean_pieces', 0.0):.2f}"],
            ["student vocabulary covered", f"{s.get('student_coverage', 0.0):.1%}"],
            ["teacher vocabulary covered", f"{s.get('teacher_coverage', 0.0):.1%}"],
            ["special tokens matched", f"{int(s.get('special_matched', 0))}"],
            ["build time", f"{s.get('seconds', 0.0):.1f} s"],
        ]
        text = format_table(rows, ["projection W", "value"])
        if self.examples:
            shown = [[src, "  ".join(f"{t} {w:.2f}" for t, w in dst)] for src, dst in self.examples]
            text += "\n\n" + format_table(shown, ["student token", "teacher tokens (weight)"])
        return text


# ---------------------------------------------------------------------- building W


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added (the fast backend in one batch when there is one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def _greedy(piece: bytes, target: TokenBytes) -> list[int] | None:
    """Longest-match split of ``piece`` over the target's byte strings; None if some byte has no token."""
    out, i = [], 0
    while i < len(piece):
        for j in range(min(len(piece), i + _MAX_GREEDY_BYTES), i, -1):
            tid = target.ids_of.get(piece[i:j])
            if tid is not None:
                out.append(tid)
                i = j
                break
        else:
            return None
    return out


def reencode(
    source: TokenBytes, target: TokenBytes, target_tokenizer: Any, ids: list[int]
) -> dict[int, list[int]]:
    """Each source id of ``ids`` -> the target ids its bytes encode to (at most MAX_PIECES), where they do.

    The target tokenizer encodes the text; when its pieces do not spell the same bytes (a fragment of a
    UTF-8 character, a tokenizer that adds a leading space), a longest-match split over the target's
    byte strings is used instead.
    """
    texts, readable = [], []
    for i in ids:
        try:
            texts.append(source.pieces[i].decode("utf-8"))
            readable.append(i)
        except UnicodeDecodeError:
            pass
    encoded = dict(zip(readable, _encode(target_tokenizer, texts)))
    out = {}
    for i in ids:
        piece = source.pieces[i]
        pieces = encoded.get(i)
        if pieces is None or target.join(pieces) != piece or any(target.pieces[t] is None for t in pieces):
            pieces = _greedy(piece, target)
        if pieces:
            out[i] = pieces[:MAX_PIECES]
    return out


_SPECIAL_WORD = re.compile(r"[<>|_\[\]]")


def _similarity(a: str, b: str) -> float:
    """String similarity of two special tokens: 0.6 x sequence ratio + 0.4 x shared-word Jaccard."""
    seq = difflib.SequenceMatcher(None, a, b).ratio()
    wa = {w for w in _SPECIAL_WORD.sub(" ", a.lower()).split() if len(w) > 2}
    wb = {w for w in _SPECIAL_WORD.sub(" ", b.lower()).split() if len(w) > 2}
    words = len(wa & wb) / len(wa | wb) if wa or wb else 0.0
    return 0.6 * seq + 0.4 * words


def _special_pairs(student: TokenBytes, teacher: TokenBytes) -> list[tuple[int, int, float]]:
    """(student id, teacher id, similarity) for special tokens at least SPECIAL_SIMILARITY alike (best 3)."""
    pairs = []
    for s, a in student.special.items():
        scored = sorted(((_similarity(a, b), t) for t, b in teacher.special.items()), reverse=True)
        pairs += [(s, t, sim) for sim, t in scored[:SPECIAL_MATCHES] if sim >= SPECIAL_SIMILARITY]
    return pairs


def _rows_top_k(counts: dict[tuple[int, int], float], top_k: int) -> dict[int, list[tuple[int, float]]]:
    """Per student row: normalize, keep the MAX_PIECES largest, then the ``top_k`` largest, normalize."""
    rows: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (s, t), w in counts.items():
        rows[s].append((t, w))
    out = {}
    for s, entries in rows.items():
        entries.sort(key=lambda e: (-e[1], e[0]))
        kept = entries[: min(MAX_PIECES, top_k)]
        total = sum(w for _, w in kept)
        if total > 0:
            out[s] = [(t, w / total) for t, w in kept]
    return out


def build_projection(
    student_tokenizer: Any, teacher_tokenizer: Any, top_k: int = 4, reverse: bool = True
) -> Projection:
    """W from ``student_tokenizer`` to ``teacher_tokenizer`` (transformers tokenizers); see the module doc.

    Returns a :class:`Projection` of shape ``[len(student vocab), len(teacher vocab)]``. Raises
    XTokenError when ``top_k`` < 1 or the vocabularies share no token at all.
    """
    import time

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise XTokenError(f"--top-k must be an integer >= 1, got {top_k!r}")
    started = time.perf_counter()
    student, teacher = TokenBytes.of(student_tokenizer), TokenBytes.of(teacher_tokenizer)
    s_ids = [i for i, p in enumerate(student.pieces) if p]
    t_ids = [i for i, p in enumerate(teacher.pieces) if p]
    pinned = {s: teacher.ids_of[student.pieces[s]] for s in s_ids if student.pieces[s] in teacher.ids_of}
    if not pinned:
        raise XTokenError(
            "the two tokenizers share no token (no student token spells the bytes of a teacher token): "
            "cross-tokenizer distillation needs overlapping vocabularies; check that the right tokenizers "
            "were given"
        )
    counts: dict[tuple[int, int], float] = defaultdict(float)
    forward = reencode(student, teacher, teacher_tokenizer, [s for s in s_ids if s not in pinned])
    for s, pieces in forward.items():
        for t, w in zip(pieces, piece_weights(len(pieces))):
            counts[(s, t)] += w
    if reverse:
        exact_teacher = set(pinned.values())
        backward = reencode(teacher, student, student_tokenizer, [t for t in t_ids if t not in exact_teacher])
        for t, pieces in backward.items():
            for s, w in zip(pieces, piece_weights(len(pieces))):
                if s not in pinned:
                    counts[(s, t)] += w
    special_ids = {content: t for t, content in teacher.special.items()}
    same = {s: special_ids[c] for s, c in student.special.items() if c in special_ids}
    pinned.update(same)  # the same special token on both sides is an exact match too
    specials = _special_pairs(student, teacher)
    for s, t, sim in specials:
        if s not in pinned:
            counts[(s, t)] += sim * SPECIAL_WEIGHT
    rows = _rows_top_k(counts, top_k)
    rows.update({s: [(t, 1.0)] for s, t in pinned.items()})

    entries = [(s, t, w) for s, row in rows.items() for t, w in row]
    r, c, v = (torch.tensor(x) for x in zip(*entries))
    matrix = SparseMatrix.from_entries(r, c, v.float(), (len(student), len(teacher)))
    covered_t = set(matrix.col.tolist())
    stats = {
        "exact_share": (len(pinned) - len(same)) / max(1, len(s_ids)),
        "mean_pieces": sum(len(p) for p in forward.values()) / max(1, len(forward)),
        "student_coverage": sum(1 for s in s_ids if s in rows) / max(1, len(s_ids)),
        "teacher_coverage": sum(1 for t in t_ids if t in covered_t) / max(1, len(t_ids)),
        "special_matched": len(same | {s: t for s, t, _ in specials}),
        "nnz": matrix.nnz,
        "seconds": time.perf_counter() - started,
    }
    examples = []
    shown = [s for s in forward if student.pieces[s].strip()]  # numbers first: the tokens X-Token is about
    for s in sorted(shown, key=lambda s: (not student.pieces[s].strip().isdigit(), -len(forward[s]), s))[:6]:
        examples.append(
            (display(student.pieces[s]), [(display(teacher.pieces[t]), w) for t, w in rows.get(s, [])])
        )
    return Projection(
        matrix,
        tokenizer_digest(student_tokenizer),
        tokenizer_digest(teacher_tokenizer),
        top_k,
        stats,
        examples,
    )
