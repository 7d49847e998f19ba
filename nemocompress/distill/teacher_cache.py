"""Offline teacher: run the teacher once over a dataset and keep its top-k logits in sharded safetensors.

result = cache_teacher("parent", "text/", "teacher_cache", seq_len=512, top_k=64)
cache = TeacherCache("teacher_cache")
ids = cache.input_ids("train")                       # [N, S] the tokens the teacher saw
values, indices = cache.topk("train", torch.tensor([3, 7]))   # [2, S - 1, k] each

Layout of the directory:

- ``teacher_cache.json``: version, teacher, vocabulary, data settings and the shard list per split;
- ``{split}-{i:05d}.safetensors`` (split ``train`` or ``heldout``), each with ``input_ids [n, S]`` int64,
  ``topk_values [n, S - 1, k]`` (the teacher's largest logits at positions 0..S-2, descending; position t
  predicts ``input_ids[:, t + 1]``) and ``topk_indices [n, S - 1, k]`` int32 (their vocabulary ids);
- the teacher's tokenizer files (the tokens were made with it).

A cross-tokenizer cache (``cache_teacher(..., student=S)`` where S's tokenizer differs from the teacher's,
tokenized for the teacher by the reader :mod:`nemocompress.xtoken` registers on import) holds the student's tokens as ``input_ids`` (made with S's tokenizer), the teacher's own tokens of
each sample's text, ``teacher_ids [n, L]`` and ``teacher_valid [n, L]`` (False at padding; ``L`` the
widest sample of the shard), and the teacher's top-k at its own prediction positions,
``topk_values`` / ``topk_indices [n, L - 1, k]``. The metadata names the student's tokenizer
(``student_tokenizer_digest``), so a cache is used only with a student of that tokenizer; training
rebuilds the alignment from the token ids and the teacher tokenizer saved beside them.

Several processes (``torchrun``) split the shards between them. The directory is written beside its
target and swapped in by rename when complete (``checkpoint.atomic_output_dir``), so a cache either
exists whole or not at all, and ``overwrite`` keeps the previous cache until the new one is complete.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..checkpoint import atomic_output_dir, check_free_space, check_output_dir, load_config, side_files
from ..report import format_table, human
from .batches import distill_samples, fingerprint
from .config import DistillError
from .models import Vocabulary, load_causal_lm, load_tokenizer, tokenizer_digest, vocabulary

__all__ = [
    "CACHE_META",
    "CACHE_VERSION",
    "TeacherCache",
    "TeacherCacheResult",
    "cache_teacher",
    "register_teacher_reader",
    "write_topk_shards",
]

CACHE_VERSION = 1
CACHE_META = "teacher_cache.json"
SPLITS = ("train", "heldout")
_VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TEACHER_READER = []  # the one registered (student dir, teacher dir) -> teacher_inputs factory


def register_teacher_reader(factory) -> None:
    """Set how a cross-tokenizer cache tokenizes for the teacher: ``factory(student_dir, teacher_dir)``
    returns ``(student ids [b, S]) -> (teacher ids [b, L], valid [b, L])``. :mod:`nemocompress.xtoken`
    registers it on import (as it registers its KD losses)."""
    _TEACHER_READER[:] = [factory]


@dataclass
class TeacherCacheResult:
    output_dir: Path
    num_train: int
    num_heldout: int
    seq_len: int
    top_k: int
    seconds: float
    bytes: int

    def table(self) -> str:
        tokens = (self.num_train + self.num_heldout) * self.seq_len
        rows = [
            ["samples (train / held-out)", f"{self.num_train} / {self.num_heldout}"],
            ["tokens", human(tokens)],
            ["top-k", self.top_k],
            ["size on disk", human(self.bytes, "B")],
            ["teacher tokens/s", f"{tokens / max(self.seconds, 1e-9):,.0f}"],
        ]
        return format_table(rows, ["teacher cache", "value"])


@torch.no_grad()
def write_topk_shards(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    out_dir: Path,
    split: str,
    top_k: int,
    batch_size: int = 4,
    shard_samples: int = 256,
    values_dtype: torch.dtype = torch.float32,
    rank: int = 0,
    num_processes: int = 1,
    progress: bool = True,
    teacher_inputs=None,
) -> list[list]:
    """Write the top-k shards of ``input_ids [N, S]``; this process writes shards ``rank::num_processes``.

    ``teacher_inputs``: ``(input_ids [b, S]) -> (teacher_ids [b, L], valid [b, L])``, the teacher's own tokens
    of a batch (cross-tokenizer cache); the shards then also hold those, and the top-k is taken at the
    teacher's positions. Returns ``[file name, samples]`` for every shard of the split (all processes').
    """
    device = next(model.parameters()).device
    model.eval()
    starts = range(0, len(input_ids), shard_samples)
    shards = [
        [f"{split}-{i:05d}.safetensors", len(input_ids[s : s + shard_samples])] for i, s in enumerate(starts)
    ]
    mine = range(rank, len(shards), num_processes)
    total = sum(shards[i][1] for i in mine)
    bar = tqdm(total=total, desc=f"teacher top-k ({split})", disable=None if progress else True)
    for i in mine:
        ids = input_ids[starts[i] : starts[i] + shard_samples]
        values, indices, teacher_ids, valid = [], [], [], []
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            if teacher_inputs is None:
                logits = model(input_ids=batch.to(device), use_cache=False).logits[:, :-1]
            else:
                tokens, mask = teacher_inputs(batch)
                teacher_ids.append(tokens)
                valid.append(mask)
                logits = model(
                    input_ids=tokens.to(device), attention_mask=mask.long().to(device), use_cache=False
                ).logits[:, :-1]
            top = logits.float().topk(top_k, dim=-1)
            values.append(top.values.to(values_dtype).cpu())
            indices.append(top.indices.to(torch.int32).cpu())
            bar.update(len(batch))
        tensors = {"input_ids": ids.contiguous(), "topk_values": _cat(values), "topk_indices": _cat(indices)}
        if teacher_inputs is not None:
            tensors |= {"teacher_ids": _cat(teacher_ids), "teacher_valid": _cat(valid)}
        save_file(tensors, out_dir / shards[i][0], metadata={"format": "pt"})
    bar.close()
    return shards


def _cat(rows: list[torch.Tensor]) -> torch.Tensor:
    """Batches ``[b, L_i, ...]`` stacked into ``[sum b, max L_i, ...]``, zero-padded along dimension 1."""
    width = max(r.shape[1] for r in rows)
    out = rows[0].new_zeros((sum(len(r) for r in rows), width, *rows[0].shape[2:]))
    start = 0
    for r in rows:
        out[start : start + len(r), : r.shape[1]] = r
        start += len(r)
    return out


def cache_teacher(
    teacher: str | Path,
    data: str | Path,
    output_dir: str | Path,
    *,
    student: str | Path | None = None,
    seq_len: int = 512,
    num_samples: int | None = None,
    top_k: int = 64,
    batch_size: int = 4,
    eval_samples: int = 16,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    shard_samples: int = 256,
    values_dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    teacher_inputs=None,
) -> TeacherCacheResult:
    """Run ``teacher`` once over ``data`` and store its top-k logits for offline distillation.

    The tokens are made exactly as :func:`nemocompress.distill.distill` makes them (the teacher's
    tokenizer, the same document split and packing for a given ``seq_len``, ``heldout_fraction`` and
    ``seed``): ``num_samples`` train samples (None: all) and ``eval_samples`` held-out samples, the latter
    giving the held-out KL during training. Train with ``DistillConfig(teacher_cache=output_dir,
    kd_loss="topk-kl")``. ``values_dtype`` float32 (default), bfloat16 or float16 for the logit values
    (bfloat16 halves them on disk but rounds logits near 20 by up to 0.06).

    ``student`` (a checkpoint directory with a tokenizer): the tokens are made with the student's
    tokenizer. When it differs from the teacher's, the cache is cross-tokenizer (see the module doc; the
    teacher's tokens come from ``teacher_inputs``, by default the reader :mod:`nemocompress.xtoken`
    registers), and trains ``kd_loss`` ``pkl``, ``hkl``, ``uld`` or ``gold`` without a teacher forward.

    Returns where the cache is and how large it is. Raises DistillError / DataError / CheckpointError /
    OutputError for bad input, before any teacher forward.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if values_dtype not in _VALUE_DTYPES:
        raise DistillError(f"values_dtype must be one of {', '.join(_VALUE_DTYPES)}, got {values_dtype!r}")
    if top_k < 1 or seq_len < 2 or batch_size < 1 or shard_samples < 1 or eval_samples < 1:
        raise DistillError("top_k, batch_size, shard_samples and eval_samples must be >= 1 and seq_len >= 2")
    state = PartialState(cpu=not torch.cuda.is_available())
    inputs = (teacher, data) if student is None else (teacher, data, student)
    target = check_output_dir(output_dir, overwrite, inputs=inputs)
    load_config(teacher)  # CheckpointError for a missing teacher, before any work
    teacher_tokenizer = load_tokenizer(teacher)
    tokenizer, student_vocab = teacher_tokenizer, None
    if student is not None:
        tokenizer = load_tokenizer(student)
        student_vocab = vocabulary(load_config(student), tokenizer)
        if student_vocab.digest == tokenizer_digest(teacher_tokenizer):
            teacher_inputs = None  # one tokenizer: a same-tokenizer cache
        elif teacher_inputs is None:
            if not _TEACHER_READER:
                raise DistillError(
                    f"the student {student} has another tokenizer than the teacher: `import nemocompress.xtoken` "
                    "(the CLI and nemocompress.api do) to cache the teacher's own tokens"
                )
            teacher_inputs = _TEACHER_READER[0](student, teacher)
    train_ids, heldout_ids = distill_samples(
        tokenizer, str(data), seq_len, eval_samples, heldout_fraction, seed, num_samples
    )
    value_bytes = _VALUE_DTYPES[values_dtype].itemsize + 4  # a value and its int32 index
    width = (
        seq_len if teacher_inputs is None else 4 * seq_len
    )  # an estimate: 4 teacher tokens per student token
    needed = (len(train_ids) + len(heldout_ids)) * (seq_len * 8 + (width - 1) * top_k * value_bytes)
    needed += sum(p.stat().st_size for p in side_files(teacher))  # about the tokenizer files it saves
    check_free_space(target, needed)  # on every process, so that all of them stop together
    dtype = torch.bfloat16 if state.device.type == "cuda" else torch.float32
    model = load_causal_lm(teacher, dtype).to(state.device)
    if top_k > model.config.vocab_size:
        raise DistillError(f"top_k {top_k} exceeds the teacher's vocabulary of {model.config.vocab_size}")
    main = state.is_main_process
    with atomic_output_dir(target, overwrite, (teacher, data), needed) if main else nullcontext() as tmp:
        tmp = Path(broadcast_object_list([str(tmp)])[0])  # every process writes its shards there
        start = time.perf_counter()
        shards = {}
        for split, ids in (("train", train_ids), ("heldout", heldout_ids)):
            shards[split] = write_topk_shards(
                model, ids, tmp, split, top_k, batch_size, shard_samples, _VALUE_DTYPES[values_dtype],
                state.process_index, state.num_processes, progress, teacher_inputs,
            )  # fmt: skip
        seconds = time.perf_counter() - start
        state.wait_for_everyone()
        if main:
            vocab = vocabulary(model.config, teacher_tokenizer)
            meta = {
                "version": CACHE_VERSION,
                "teacher": str(teacher),
                "teacher_model_type": model.config.model_type,
                "vocab_size": vocab.size,
                "tokenizer_digest": vocab.digest,
                "data": str(data),
                "seq_len": seq_len,
                "top_k": top_k,
                "values_dtype": values_dtype,
                "student_tokenizer_digest": None if teacher_inputs is None else student_vocab.digest,
                "heldout_fraction": heldout_fraction,
                "seed": seed,
                "splits": {
                    split: {"num_samples": sum(n for _, n in shards[split]), "shards": shards[split],
                            "fingerprint": fingerprint(ids)}
                    for split, ids in (("train", train_ids), ("heldout", heldout_ids))
                },
            }  # fmt: skip
            (tmp / CACHE_META).write_text(json.dumps(meta, indent=1))
            teacher_tokenizer.save_pretrained(tmp)
    state.wait_for_everyone()
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    return TeacherCacheResult(target, len(train_ids), len(heldout_ids), seq_len, top_k, seconds, size)


class TeacherCache:
    """Read access to a directory written by :func:`cache_teacher`; reads only the rows it is asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / CACHE_META
        if not meta_file.is_file():
            raise DistillError(
                f"{self.path} is not a teacher cache (no {CACHE_META}): write one with `nemocompress cache-teacher`"
            )
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("version") != CACHE_VERSION:
            raise DistillError(f"{self.path} has cache version {self.meta.get('version')}; rebuild it")
        self._files: dict[str, object] = {}
        self._rows: dict[str, list[tuple[str, int]]] = {}
        for split in SPLITS:
            rows = []
            for name, n in self.meta["splits"][split]["shards"]:
                if not (self.path / name).is_file():
                    raise DistillError(f"{self.path / name} is missing: rebuild the cache")
                rows += [(name, r) for r in range(n)]
            self._rows[split] = rows

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(int(self.meta["vocab_size"]), self.meta.get("tokenizer_digest"))

    @property
    def student_digest(self) -> str | None:
        """The student tokenizer's digest of a cross-tokenizer cache (None: a same-tokenizer cache)."""
        return self.meta.get("student_tokenizer_digest")

    def num_samples(self, split: str) -> int:
        return len(self._rows[split])

    def _file(self, name: str):
        if name not in self._files:
            self._files[name] = safe_open(self.path / name, framework="pt")
        return self._files[name]

    def input_ids(self, split: str) -> torch.Tensor:
        """``[N, S]`` int64: every sample of ``split``, in cache order."""
        names = [name for name, _ in self.meta["splits"][split]["shards"]]
        return torch.cat([self._file(name).get_tensor("input_ids") for name in names]).long()

    def topk(
        self, split: str, samples: torch.Tensor, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher top-k of the given samples: float32 values and int64 indices, each ``[n, S - 1, k]``.

        ``k`` (default: all cached) keeps the k largest, which the cache stores first.
        """
        k = self.top_k if k is None else k
        if k > self.top_k:
            raise DistillError(f"asked for the teacher's top {k} but {self.path} holds only {self.top_k}")
        values, indices = [], []
        for i in samples.tolist():
            name, row = self._rows[split][i]
            f = self._file(name)
            values.append(f.get_slice("topk_values")[row : row + 1, :, :k])
            indices.append(f.get_slice("topk_indices")[row : row + 1, :, :k])
        return torch.cat(values).float(), torch.cat(indices).long()

    def teacher_topk(
        self, split: str, samples: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A cross-tokenizer cache's teacher side of the given samples: its ids ``[n, L]`` (int64), validity
        ``[n, L]`` (bool), and all cached top-k values (float32) and ids (int64) ``[n, L - 1, k]``, ``L``
        the widest of these samples."""
        if self.student_digest is None:
            raise DistillError(f"{self.path} is a same-tokenizer cache: it holds no teacher tokens")
        parts = {name: [] for name in ("teacher_ids", "teacher_valid", "topk_values", "topk_indices")}
        for i in samples.tolist():
            name, row = self._rows[split][i]
            f = self._file(name)
            for key, rows in parts.items():
                rows.append(f.get_slice(key)[row : row + 1])
        valid = _cat(parts["teacher_valid"]).bool()
        width = max(2, int(valid.sum(1).max()))
        ids, values, indices = (_cat(parts[k]) for k in ("teacher_ids", "topk_values", "topk_indices"))
        return (
            ids[:, :width].long(),
            valid[:, :width],
            values[:, : width - 1].float(),
            indices[:, : width - 1].long(),
        )
