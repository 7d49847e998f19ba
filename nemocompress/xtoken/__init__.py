"""Distillation across tokenizers (X-Token): a sparse projection W between vocabularies, alignment of two
tokenizations into chunks, and the P-KL, H-KL, ULD and GOLD losses.

Importing this package registers ``pkl``, ``hkl``, ``uld`` and ``gold`` as KD losses of the distillation
trainer (``nemocompress distill --kd-loss pkl``), which then works for a teacher with another tokenizer.

from nemocompress.xtoken import build_projection, Projection
projection = build_projection(student_tokenizer, teacher_tokenizer, top_k=4)
projection.save("w.safetensors"); print(projection.table())
"""

from .align import Alignment, align_pieces, align_spans
from .cache import teacher_reader
from .losses import Chunks, TokenPairs, chunks_from_alignments, gold_loss, hkl_loss, pkl_loss, uld_loss
from .projection import Projection, build_projection
from .sparse import ColumnSlice, SparseMatrix, sparse_project
from .term import CrossTokenizerKD, projection_for
from .vocab import TokenBytes, XTokenError

__all__ = [
    "Alignment",
    "Chunks",
    "ColumnSlice",
    "CrossTokenizerKD",
    "Projection",
    "SparseMatrix",
    "TokenBytes",
    "TokenPairs",
    "XTokenError",
    "align_pieces",
    "align_spans",
    "build_projection",
    "chunks_from_alignments",
    "gold_loss",
    "hkl_loss",
    "pkl_loss",
    "projection_for",
    "sparse_project",
    "teacher_reader",
    "uld_loss",
]
