"""Aligning two tokenizations of one text into chunks that end on a boundary both share.

A chunk is a run of student tokens and a run of teacher tokens that spell the same bytes: for
``"In 1905"``, student ``["In", " 1905"]`` and teacher ``["In", " ", "1", "9", "0", "5"]`` give the chunks
``(["In"], ["In"])`` and ``([" 1905"], [" ", "1", "9", "0", "5"])``.

- Fast path (:func:`align_spans`, TRL's byte-offset walk): when both sequences spell the same bytes, walk
  both offset arrays, advancing the side whose token ends first; a chunk closes where both end together.
- Fallback (:func:`align_pieces` when the bytes differ: a BOS or EOS on one side only, special tokens, a
  tokenizer that adds a leading space, text cut mid-character): unique 3-grams of tokens found in both
  sequences, in the same order, anchor the alignment; between anchors, the longest head and tail that
  spell the same bytes use the walk, the rest a Needleman-Wunsch alignment (a one-to-one match scores +3, a block of up to 4
  tokens on each side spelling the same bytes 1.5 per token, a token left out -1.5). Tokens left out
  belong to no chunk.

alignment = align_pieces(student_pieces, teacher_pieces)    # lists of bytes (None: a special token)
alignment.student[c], alignment.teacher[c]                  # [start, end) token ranges of chunk c
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate

__all__ = ["Alignment", "align_pieces", "align_spans"]

MATCH = 3.0
BLOCK = 1.5  # per token of a many-token block
GAP = -1.5
MAX_BLOCK = 4
MAX_DP_CELLS = 250_000  # a segment larger than this (between anchors) is left unaligned


@dataclass(frozen=True)
class Alignment:
    """Chunks in order: ``student[c]`` and ``teacher[c]`` are ``[start, end)`` token ranges, never empty."""

    student: list[tuple[int, int]]
    teacher: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.student)

    def shifted(self, student: int, teacher: int) -> Alignment:
        return Alignment(
            [(a + student, b + student) for a, b in self.student],
            [(a + teacher, b + teacher) for a, b in self.teacher],
        )

    def __add__(self, other: Alignment) -> Alignment:
        return Alignment(self.student + other.student, self.teacher + other.teacher)


def _ends(lengths: list[int]) -> list[int]:
    return list(accumulate(lengths))


def align_spans(student_ends: list[int], teacher_ends: list[int]) -> Alignment:
    """Chunks from the end offsets of each token of two tokenizations of one text (the byte-offset walk).

    Offsets are cumulative (token i spans ``[ends[i-1], ends[i])``); a zero-width token (a special token)
    joins no chunk unless it falls inside one. Tokens after the last shared boundary join no chunk.
    """
    student, teacher = [], []
    s0 = t0 = s = t = 0
    s_prev = t_prev = 0  # the offset where the current chunk starts on each side
    n_s, n_t = len(student_ends), len(teacher_ends)
    while s < n_s and t < n_t:
        if s == s0 and student_ends[s] == s_prev:  # a zero-width token opening a chunk: left out
            s0 = s = s + 1
            continue
        if t == t0 and teacher_ends[t] == t_prev:
            t0 = t = t + 1
            continue
        a, b = student_ends[s], teacher_ends[t]
        if a < b:
            s += 1
        elif a > b:
            t += 1
        else:
            s, t = s + 1, t + 1
            student.append((s0, s))
            teacher.append((t0, t))
            s0, t0, s_prev, t_prev = s, t, a, b
    return Alignment(student, teacher)


def _walk(student: list[bytes], teacher: list[bytes]) -> Alignment:
    return align_spans(_ends([len(p) for p in student]), _ends([len(p) for p in teacher]))


def align_pieces(student: list[bytes | None], teacher: list[bytes | None]) -> Alignment:
    """Chunks of two token sequences given as the bytes of each token (None for a special token).

    When both spell the same bytes this is :func:`align_spans`; otherwise anchors and a Needleman-Wunsch
    alignment between them (see the module doc). Every chunk's student and teacher bytes are equal.
    """
    a = [p or b"" for p in student]
    b = [p or b"" for p in teacher]
    if b"".join(a) == b"".join(b):
        return _walk(a, b)
    out = Alignment([], [])
    i = j = 0
    for ai, bj in _anchors(a, b):
        if ai < i or bj < j:
            continue
        out = out + _segment(a[i:ai], b[j:bj]).shifted(i, j)
        out = out + Alignment(
            [(ai + k, ai + k + 1) for k in range(3)], [(bj + k, bj + k + 1) for k in range(3)]
        )
        i, j = ai + 3, bj + 3
    return out + _segment(a[i:], b[j:]).shifted(i, j)


def _anchors(a: list[bytes], b: list[bytes]) -> list[tuple[int, int]]:
    """Positions (i, j) of token 3-grams found exactly once in each sequence, increasing on both sides."""
    grams_a = Counter(tuple(a[i : i + 3]) for i in range(len(a) - 2))
    grams_b = Counter(tuple(b[j : j + 3]) for j in range(len(b) - 2))
    where_b = {tuple(b[j : j + 3]): j for j in range(len(b) - 2)}
    pairs = [
        (i, where_b[g])
        for i in range(len(a) - 2)
        if grams_a[g := tuple(a[i : i + 3])] == 1 and grams_b.get(g) == 1 and all(g)
    ]
    return _increasing(pairs)


def _increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest run of ``pairs`` (sorted by i) whose j also increase (patience sorting)."""
    tails, tail_at, parent = [], [], [-1] * len(pairs)
    for k, (_, j) in enumerate(pairs):
        pos = bisect_left(tails, j)
        if pos == len(tails):
            tails.append(j)
            tail_at.append(k)
        else:
            tails[pos], tail_at[pos] = j, k
        parent[k] = tail_at[pos - 1] if pos else -1
    out, k = [], tail_at[-1] if tail_at else -1
    while k >= 0:
        out.append(pairs[k])
        k = parent[k]
    return out[::-1]


def _segment(a: list[bytes], b: list[bytes]) -> Alignment:
    """A span between anchors: the walk over the longest head and tail both spell alike, Needleman-Wunsch
    on what is left between them (left unaligned when larger than MAX_DP_CELLS)."""
    if not a or not b:
        return Alignment([], [])
    if b"".join(a) == b"".join(b):
        return _walk(a, b)
    ka, kb = _shared_head(a, b)
    ta, tb = _shared_head([p[::-1] for p in a[ka:][::-1]], [p[::-1] for p in b[kb:][::-1]])
    ea, eb = len(a) - ta, len(b) - tb
    middle_a, middle_b = a[ka:ea], b[kb:eb]
    middle = Alignment([], [])
    if middle_a and middle_b and len(middle_a) * len(middle_b) <= MAX_DP_CELLS:
        middle = _needleman_wunsch(middle_a, middle_b)
    return _walk(a[:ka], b[:kb]) + middle.shifted(ka, kb) + _walk(a[ea:], b[eb:]).shifted(ea, eb)


def _shared_head(a: list[bytes], b: list[bytes]) -> tuple[int, int]:
    """Token counts ``(ka, kb)`` of the longest heads of ``a`` and ``b`` that end on one shared boundary
    inside the bytes both sequences start with."""
    joined_a, joined_b = b"".join(a), b"".join(b)
    common = len(os.path.commonprefix([joined_a, joined_b]))
    ends_a, ends_b = _ends([len(p) for p in a]), _ends([len(p) for p in b])
    shared = set(e for e in ends_a if 0 < e <= common) & set(ends_b)
    if not shared:
        return 0, 0
    end = max(shared)
    return bisect_left(ends_a, end) + 1, bisect_left(ends_b, end) + 1


def _needleman_wunsch(a: list[bytes], b: list[bytes]) -> Alignment:
    """Best-scoring chunks of blocks (up to MAX_BLOCK tokens a side) spelling the same non-empty bytes."""
    n, m = len(a), len(b)
    neg = float("-inf")
    score = [[neg] * (m + 1) for _ in range(n + 1)]
    move = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    score[0][0] = 0.0
    for i in range(n + 1):
        for j in range(m + 1):
            here = score[i][j]
            if here == neg:
                continue
            for di, dj, gain in ((1, 0, GAP), (0, 1, GAP)):
                if i + di <= n and j + dj <= m and here + gain > score[i + di][j + dj]:
                    score[i + di][j + dj], move[i + di][j + dj] = here + gain, (di, dj)
            left = b""
            for di in range(1, min(MAX_BLOCK, n - i) + 1):
                left += a[i + di - 1]
                right = b""
                for dj in range(1, min(MAX_BLOCK, m - j) + 1):
                    right += b[j + dj - 1]
                    if len(right) > len(left):
                        break
                    if right == left and left:
                        gain = MATCH if di == dj == 1 else BLOCK * (di + dj)
                        if here + gain > score[i + di][j + dj]:
                            score[i + di][j + dj], move[i + di][j + dj] = here + gain, (-di, -dj)
    student, teacher = [], []
    i, j = n, m
    while i or j:
        di, dj = move[i][j]
        if di < 0:  # a block: a chunk
            student.append((i + di, i))
            teacher.append((j + dj, j))
            i, j = i + di, j + dj
        else:
            i, j = i - di, j - dj
    return Alignment(student[::-1], teacher[::-1])
