"""``cache-teacher`` for a teacher of another tokenizer: its own tokens and top-k, so training runs no teacher.

result = nemocompress.distill.cache_teacher("qwen", "text/", "cache", student="pruned-smollm", top_k=64)
config = DistillConfig(student="pruned-smollm", teacher_cache="cache", kd_loss="pkl", output_dir="out")

The tokens are the student's (its tokenizer, the same samples as ``distill`` makes); each sample's text is
tokenized by the teacher exactly as the live cross-tokenizer term does
(:meth:`~nemocompress.xtoken.CrossTokenizerKD.teacher_inputs`) and the teacher's top-k logits are stored
at its own positions (layout: :mod:`nemocompress.distill.teacher_cache`). Training rebuilds each batch's
teacher logits from the cache: the cached top-k values at their ids, every other logit
:data:`~nemocompress.xtoken.term.MISSING_LOGIT` (probability 0, so each position's distribution is the
teacher's renormalized over its top-k). P-KL then picks its columns from the union of the cached ids of
the batch (the largest cached logit per column, at most its ``top_k`` 8192), so it equals the live run
when the cache holds the whole teacher vocabulary and approximates it otherwise (the mass outside each
position's top-k is dropped).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_config
from ..distill.models import load_tokenizer
from ..distill.teacher_cache import register_teacher_reader
from .term import CrossTokenizerKD

__all__ = ["teacher_reader"]


def teacher_reader(student: str | Path, teacher: str | Path):
    """``(student ids [b, S]) -> (teacher ids [b, L], valid [b, L])``: the teacher's tokens of the text of a
    batch of the student's, cut to the teacher's context (registered as distill's teacher reader)."""
    student_tokenizer, teacher_tokenizer = load_tokenizer(student), load_tokenizer(teacher)
    student_config, teacher_config = load_config(student), load_config(teacher)
    # the term's tokenization; ULD needs no projection W, so building the term costs nothing more
    term = CrossTokenizerKD(
        "uld", student_tokenizer, teacher_tokenizer, student_width=int(student_config.vocab_size),
        teacher_width=int(teacher_config.vocab_size),
    )  # fmt: skip
    limit = getattr(teacher_config, "max_position_embeddings", None)
    return lambda input_ids: term.teacher_inputs(input_ids, limit)[:2]


register_teacher_reader(teacher_reader)
