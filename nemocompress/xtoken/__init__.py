"""Distillation across tokenizers (X-Token): a sparse projection W between vocabularies, alignment of two
tokenizations into chunks, and the P-KL, H-KL, ULD and GOLD losses (registered as ``--kd-loss`` choices).

from nemocompress.xtoken import build_projection, Projection
projection = build_projection(student_tokenizer, teacher_tokenizer, top_k=4)
projection.save("w.safetensors"); print(projection.table())
"""

from .projection import Projection, build_projection
from .sparse import ColumnSlice, SparseMatrix, sparse_project
from .vocab import TokenBytes, XTokenError

__all__ = [
    "ColumnSlice",
    "Projection",
    "SparseMatrix",
    "TokenBytes",
    "XTokenError",
    "build_projection",
    "sparse_project",
]
