"""Loading the teacher, the student and their tokenizer, and checking that they share one vocabulary."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import list_tensors, load_config
from .config import DistillError

__all__ = [
    "Vocabulary",
    "check_same_vocabulary",
    "has_tokenizer",
    "load_causal_lm",
    "load_tokenizer",
    "tokenizer_digest",
    "vocabulary",
]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Vocabulary:
    """What logit distillation needs to agree on: the logit width and the token strings behind the ids."""

    size: int
    digest: str | None  # hash of the tokenizer's token -> id map; None when there is no tokenizer


def vocabulary(config: Any, tokenizer: Any | None) -> Vocabulary:
    """The :class:`Vocabulary` of a model config (its ``vocab_size``) and tokenizer."""
    return Vocabulary(int(config.vocab_size), None if tokenizer is None else tokenizer_digest(tokenizer))


def tokenizer_digest(tokenizer: Any) -> str:
    """Hash of a tokenizer's token -> id map (16 hex digits): equal for tokenizers with the same vocabulary."""
    raw = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def check_same_vocabulary(
    teacher: Vocabulary, student: Vocabulary, teacher_name: str, student_name: str
) -> None:
    """Raise DistillError unless both logit widths match and both tokenizers (where known) are equal."""
    why = None
    if teacher.size != student.size:
        why = f"the teacher {teacher_name} has {teacher.size} logits per token, the student {student_name} {student.size}"
    elif None not in (teacher.digest, student.digest) and teacher.digest != student.digest:
        why = f"the teacher {teacher_name} and the student {student_name} have different tokenizers"
    if why:
        raise DistillError(
            f"{why}: same-tokenizer logit distillation needs one shared vocabulary. For a teacher with another "
            "tokenizer pass --kd-loss pkl (cross-tokenizer; also hkl, uld, gold), or give the student the "
            "teacher's tokenizer and vocab size"
        )


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / name).is_file() for name in _TOKENIZER_FILES)


def load_tokenizer(*dirs: str | Path | None):
    """The tokenizer of the first directory that holds one (e.g. the student's, then the teacher's)."""
    from transformers import AutoTokenizer

    for d in dirs:
        if d is not None and has_tokenizer(d):
            return AutoTokenizer.from_pretrained(d)
    names = ", ".join(str(d) for d in dirs if d is not None)
    raise DistillError(f"no tokenizer found in {names}: save one there with tokenizer.save_pretrained(dir)")


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A causal LM from a checkpoint directory, with a one-line error when it is missing or broken."""
    from transformers import AutoModelForCausalLM

    load_config(path)  # CheckpointError for a missing directory or config.json
    list_tensors(path)  # CheckpointError for missing, pickle-only or corrupt weights
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
