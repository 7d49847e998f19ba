"""Checkpoints on disk: safetensors read and written tensor by tensor, atomic output directories.

The reader parses safetensors headers itself and reads only the byte ranges it needs with plain file
reads (no mmap), so that peak memory while streaming stays near one chunk, not the model size. Weights are
never loaded with pickle: a checkpoint with only ``*.bin`` files is refused with a way to convert it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from .errors import CheckpointError, OutputError

__all__ = [
    "atomic_file",
    "TensorInfo",
    "load_config",
    "list_tensors",
    "read_rows",
    "SafetensorsWriter",
    "atomic_output_dir",
    "check_free_space",
    "check_output_dir",
    "remove_stale_temporaries",
    "replace_dir",
    "copy_side_files",
    "side_files",
    "SAFE_INDEX",
    "SAFE_SINGLE",
]

logger = logging.getLogger(__name__)

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_HEADER_LIMIT = 100 * 2**20

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: file, absolute byte offset, dtype and shape."""

    key: str
    file: Path
    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * _itemsize(self.dtype)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is truncated or corrupt ({why}); re-download it or save the model again")


def _read_header(path: Path) -> list[TensorInfo]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise _corrupt(path, "shorter than a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _HEADER_LIMIT):
            raise _corrupt(path, f"header length {n} exceeds the file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _corrupt(path, f"header is not JSON: {e}") from None
    infos, data_start, end_max = [], 8 + n, 0
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = DTYPES[meta["dtype"]]
            shape = tuple(int(s) for s in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad entry for {key}") from None
        info = TensorInfo(key, path, data_start + begin, dtype, shape)
        if end - begin != info.nbytes or data_start + end > size:
            raise _corrupt(path, f"tensor {key} lies past the end of the file or has the wrong size")
        end_max = max(end_max, end)
        infos.append(info)
    if data_start + end_max != size:
        raise _corrupt(path, "file length does not match its header")
    return infos


def load_config(model_dir: str | Path):
    """The transformers config of a checkpoint directory, with a clear error when it is missing."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(
            f"{model_dir} is not a directory; pass the folder that holds config.json and the weights"
        )
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir} has no config.json; pass a folder written by save_pretrained")
    try:
        return AutoConfig.from_pretrained(model_dir)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {model_dir / 'config.json'}: {e}") from None


def list_tensors(model_dir: str | Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors checkpoint (single file or sharded with an index), headers checked."""
    model_dir = Path(model_dir)
    index = model_dir / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise _corrupt(index, f"bad index: {e}") from None
        files = sorted(set(weight_map.values()))
    elif (model_dir / SAFE_SINGLE).is_file():
        weight_map, files = None, [SAFE_SINGLE]
    else:
        pickles = sorted(p.name for p in model_dir.glob("*.bin"))
        hint = (
            f" (found {', '.join(pickles)}: nemocompress never unpickles weights; convert them once with "
            "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir2)`)"
            if pickles
            else ""
        )
        raise CheckpointError(f"{model_dir} holds no {SAFE_SINGLE} or {SAFE_INDEX}{hint}")
    out: dict[str, TensorInfo] = {}
    for name in files:
        path = model_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in {SAFE_INDEX} but missing; re-download the checkpoint")
        for info in _read_header(path):
            out[info.key] = info
    if weight_map is not None and set(weight_map) != set(out):
        raise _corrupt(index, "index and shard headers list different tensors")
    return out


def read_rows(
    info: TensorInfo, rows: torch.Tensor | None = None, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """Read rows of dim 0 with plain file reads: ``rows`` (sorted indices) or the range ``start:stop``.

    Contiguous runs of rows are read in one call each; nothing else of the file is touched.
    """
    shape = info.shape if info.shape else (1,)
    row_bytes = info.nbytes // shape[0] if shape[0] else 0
    if rows is None:
        rows = torch.arange(start, shape[0] if stop is None else stop)
    out = torch.empty((len(rows), *shape[1:]), dtype=info.dtype)
    buf = out.view(-1).view(torch.uint8).numpy() if out.numel() else None
    with open(info.file, "rb", buffering=0) as f:
        pos = 0
        for run_start, run_len in _runs(rows):
            f.seek(info.offset + run_start * row_bytes)
            n = run_len * row_bytes
            if f.readinto(buf[pos : pos + n]) != n:
                raise _corrupt(info.file, f"short read in {info.key}")
            pos += n
    return out if info.shape else out.reshape(())


def _runs(rows: torch.Tensor) -> Iterator[tuple[int, int]]:
    if len(rows) == 0:
        return
    values = rows.tolist()
    start = prev = values[0]
    for v in values[1:]:
        if v != prev + 1:
            yield start, prev - start + 1
            start = v
        prev = v
    yield start, prev - start + 1


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor, in the order of ``layout``.

    The header is written first from ``layout`` (key -> (dtype, shape)); each tensor's bytes are then
    appended, possibly in several chunks along dim 0, so no more than a chunk is held in memory.
    """

    def __init__(self, path: str | Path, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]]):
        self.path = Path(path)
        header, offset = {}, 0
        for key, (dtype, shape) in layout.items():
            n = _numel(shape) * _itemsize(dtype)
            header[key] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._expected = {
            k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"
        }
        self._order = list(layout)
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._written = 0
        self._current = 0

    def write(self, tensor: torch.Tensor) -> None:
        """Append the next bytes of the current tensor (a whole tensor or its next dim-0 chunk)."""
        key = self._order[self._current]
        data = tensor.contiguous().view(-1).view(torch.uint8).numpy() if tensor.numel() else b""
        self._file.write(data)
        self._written += len(data)
        if self._written > self._expected[key]:
            raise RuntimeError(f"wrote more bytes than declared for {key}")
        if self._written == self._expected[key]:
            self._current += 1
            self._written = 0
            while self._current < len(self._order) and self._expected[self._order[self._current]] == 0:
                self._current += 1

    def close(self) -> None:
        done = self._current >= len(self._order)
        self._file.close()
        if not done:
            raise RuntimeError(f"{self.path}: tensor {self._order[self._current]} was not fully written")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def check_output_dir(target: str | Path, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Refuse an output that is (or contains) an input, or that exists without ``overwrite``."""
    target = Path(target).resolve()
    for src in inputs:
        src = Path(src).resolve()
        if target == src or src.is_relative_to(target):
            raise OutputError(
                f"output {target} is (or contains) the input {src}: choose another output directory"
            )
    if target.exists() and not overwrite:
        raise OutputError(
            f"{target} already exists: pass --overwrite (overwrite=True) or choose another directory"
        )
    return target


_OWNER_FILE = ".nemocompress-owner"  # {host, pid} of the process writing a temporary directory
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID`` and ``.NAME.old-PID`` beside ``target`` whose process is gone.

    A directory counts as stale when its PID is not alive on this host. Temporary directories carry an
    owner file with the host that wrote them; one written on another host (a shared filesystem) is kept,
    since its PID says nothing here. A PID reused by an unrelated process keeps a stale directory until
    that process ends: the safe way to be wrong. A ``.NAME.old-PID`` (a previous output, which has no
    owner file) is judged by its PID alone. When ``target`` is missing and a stale ``.NAME.old-PID``
    holds the previous content (a kill between the two renames of a swap), it is renamed back to
    ``target``. Each action is logged in one line. Returns the paths removed or restored.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)")
    host, done = socket.gethostname(), []
    for path in sorted(target.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        pid = int(match[2])
        if pid == os.getpid() or _pid_alive(pid) or _owner_host(path) not in (None, host):
            continue
        if match[1] == "old" and not target.exists():
            path.rename(target)
            logger.warning("restored %s from %s (process %d is gone)", target.name, path.name, pid)
        else:
            shutil.rmtree(path, ignore_errors=True)
            logger.warning("removed stale temporary directory %s (process %d is gone)", path.name, pid)
        done.append(path)
    return done


def _owner_host(path: Path) -> str | None:
    try:
        return json.loads((path / _OWNER_FILE).read_text())["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _disk_full(error: BaseException | None) -> bool:
    """ENOSPC or EDQUOT, as an OSError (or its cause) or inside the message of a Rust writer's error."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return True
        if any(f"(os error {code})" in str(error) for code in _DISK_FULL):  # safetensors' SafetensorError
            return True
        error = error.__cause__ or error.__context__
    return False


def check_free_space(target: str | Path, needed_bytes: int) -> None:
    """Refuse (OutputError) when the filesystem that will hold ``target`` has less than ``needed_bytes``."""
    target = Path(target)
    parent = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if needed_bytes > free:
        raise _no_space(target, needed_bytes, free)


def _no_space(target: Path, needed: int | None, free: int, mid_write: bool = False) -> OutputError:
    what = "the disk filled up while writing" if mid_write else "not enough free space for"
    need = "an unknown number of" if needed is None else f"about {needed:,}"
    return OutputError(
        f"{what} {target}: it needs {need} bytes, {free:,} bytes are free on {target.parent}; "
        "free some space or choose another output directory"
    )


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write one file to; it replaces ``path`` (``os.replace``)
    when the block succeeds and is removed when it fails, so ``path`` is always whole or absent."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Move the complete directory ``new`` to ``target`` by rename, swapping out what was there.

    The previous ``target`` is renamed to ``.NAME.old-PID`` first and deleted only once ``new`` is in
    place, so at no point is a half-deleted directory visible under ``target``; a kill between the two
    renames leaves the previous content in ``.NAME.old-PID``, which :func:`remove_stale_temporaries`
    renames back.
    """
    new, target = Path(new), Path(target)
    (new / _OWNER_FILE).unlink(missing_ok=True)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
    target: str | Path, overwrite: bool = False, inputs: tuple = (), needed_bytes: int | None = None
) -> Iterator[Path]:
    """Yield a temporary directory ``.NAME.tmp-PID`` beside ``target``; swap it in when the block succeeds.

    Refuses what :func:`check_output_dir` refuses, first removing stale temporary directories of
    ``target`` left by killed runs (:func:`remove_stale_temporaries`). With ``needed_bytes`` (an estimate
    of what the block writes) free space is checked first. The new directory replaces ``target`` by
    :func:`replace_dir`. On failure the temporary directory is removed and ``target`` is untouched; a full
    disk (ENOSPC, EDQUOT, also inside a safetensors error) becomes a one-line OutputError naming the path,
    bytes needed and bytes free.
    """
    remove_stale_temporaries(Path(target).resolve())
    target = check_output_dir(target, overwrite, inputs)
    if needed_bytes is not None:
        check_free_space(target, needed_bytes)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / _OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            raise _no_space(target, needed_bytes, shutil.disk_usage(target.parent).free, True) from None
        raise
    replace_dir(tmp, target)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


def side_files(src: str | Path) -> list[Path]:
    """Tokenizer, generation config and other small files of a checkpoint; never weights, index or config."""
    out = []
    for p in sorted(Path(src).iterdir()):
        if not p.is_file() or p.name in ("config.json", SAFE_INDEX) or p.name.endswith(_WEIGHT_SUFFIXES):
            continue
        if p.name.endswith(".index.json") or p.name.startswith("."):
            continue
        out.append(p)
    return out


def copy_side_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy :func:`side_files` of ``src`` into ``dst``; returns their names."""
    copied = []
    for p in side_files(src):
        shutil.copy2(p, Path(dst) / p.name)
        copied.append(p.name)
    return copied
