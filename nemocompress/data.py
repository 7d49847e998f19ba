"""Text data: load documents from files, split off a held-out set, pack tokens into fixed-length samples.

samples = build_samples(tokenizer, fetch_text("shakespeare"), seq_len=512, num_train=256, num_heldout=16)
samples.train, samples.heldout          # [256, 512] and [16, 512]; no held-out document is in train

The steps on their own:

texts = load_texts(fetch_text("shakespeare"))
train_texts, heldout_texts = split_texts(texts, heldout_fraction=0.1)
input_ids = pack_tokens(tokenizer, train_texts, seq_len=512, num_samples=256)  # [256, 512]
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from nemocompress.errors import NemocompressError

__all__ = [
    "DataError",
    "Samples",
    "TEXT_SUFFIXES",
    "build_samples",
    "calibration_samples",
    "fingerprint",
    "load_texts",
    "pack_tokens",
    "split_texts",
]

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
JSONL_SUFFIX = ".jsonl"
PARQUET_SUFFIX = ".parquet"
DATA_SUFFIXES = TEXT_SUFFIXES + (JSONL_SUFFIX, PARQUET_SUFFIX)
DATA_EXTRA_HINT = 'pip install "nemocompress[data]"'


class DataError(NemocompressError, ValueError):
    """Input data is missing, empty, unreadable or malformed; the message names the fix."""


def load_texts(path: str | os.PathLike, tokenizer: Any = None, text_field: str = "text") -> list[str]:
    """Load documents from ``path``; one string per document, empty documents dropped.

    ``path`` may be:

    - a text file (``.txt``, ``.md``, ``.rst``, ``.py``): one document;
    - a ``.jsonl`` file: one document per line, taken from the ``text_field`` string field, or from a
      chat ``messages`` list (``[{"role": ..., "content": ...}, ...]``) rendered with
      ``tokenizer.apply_chat_template`` (so chat records need a ``tokenizer`` with a chat template);
    - a ``.parquet`` file: one document per row, from the ``text_field`` string column or else a chat
      ``messages`` column, as for ``.jsonl`` (null cells count as empty documents);
    - a Hugging Face ``datasets`` folder written by ``Dataset.save_to_disk`` (one document per row, as
      for ``.parquet``) or ``DatasetDict.save_to_disk`` (its ``"train"`` split is used);
    - a folder: every text, ``.jsonl`` and ``.parquet`` file and every saved ``datasets`` folder below
      it, recursively, in sorted path order, skipping hidden files and folders.

    Text files must be UTF-8. ``.parquet`` files and ``datasets`` folders need the optional ``pyarrow``
    and ``datasets`` packages (``pip install "nemocompress[data]"``). Raises ``DataError`` for a
    missing path, an unsupported file type, unreadable or non-UTF-8 files, malformed JSON lines,
    records or tables without the field, a ``DatasetDict`` without a train split, a missing optional
    package, and when no text is found.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path} does not exist: pass a .txt, .jsonl or .parquet file, a saved datasets folder "
            "or a folder of text files"
        )
    if path.is_dir() and not _is_saved_dataset(path):
        sources = _data_sources(path)
        if not sources:
            raise DataError(
                f"{path} holds no text files ({', '.join(DATA_SUFFIXES)}) and no saved datasets folder: "
                "point at a folder or file that holds the text"
            )
    else:
        if not path.is_dir() and path.suffix not in DATA_SUFFIXES:
            raise DataError(
                f"{path} has an unsupported type {path.suffix or '(no suffix)'!r}: use a text file "
                f"({', '.join(TEXT_SUFFIXES)}), a .jsonl or .parquet file with a {text_field!r} or "
                "'messages' field, a folder saved with datasets' save_to_disk, or a folder of them"
            )
        sources = [path]
    documents = [doc for source in sources for doc in _load_source(source, tokenizer, text_field)]
    texts = [text for text in documents if text.strip()]
    if not texts:
        why = "every document is empty" if documents else "no documents: no rows, lines or text"
        raise DataError(f"{path} holds no text ({why}): add text or point elsewhere")
    return texts


def split_texts(
    texts: Sequence[str], heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split documents into ``(train, heldout)``, deterministically for a given ``seed``.

    With two or more documents, a seeded random ``heldout_fraction`` of them (at least one, leaving at
    least one for training) is held out whole; both lists keep the input order. A single document is
    cut at the line boundary nearest to ``1 - heldout_fraction`` of its length: the head is the train
    part, the tail the held-out part.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise DataError(f"heldout_fraction must lie strictly between 0 and 1, got {heldout_fraction}")
    texts = _as_text_list(texts)
    if len(texts) == 1:
        return _split_document(texts[0], heldout_fraction)
    num_heldout = min(len(texts) - 1, max(1, round(len(texts) * heldout_fraction)))
    heldout_ids = set(random.Random(seed).sample(range(len(texts)), num_heldout))
    train = [t for i, t in enumerate(texts) if i not in heldout_ids]
    heldout = [t for i, t in enumerate(texts) if i in heldout_ids]
    return train, heldout


def pack_tokens(
    tokenizer: Any,
    texts: Sequence[str],
    seq_len: int,
    num_samples: int | None = None,
    seed: int = 0,
) -> torch.LongTensor:
    """Tokenize ``texts`` and pack them into fixed-length samples: a ``LongTensor [N, seq_len]``.

    Each document is tokenized without special tokens and followed by ``tokenizer.eos_token_id``; the
    concatenated stream is cut into ``N = len(stream) // seq_len`` consecutive samples (the tail is
    dropped), which are shuffled with ``seed``. ``num_samples`` keeps the first ``num_samples`` of the
    shuffled samples, so a smaller request is a prefix of a larger one with the same seed.

    Raises ``DataError`` if the tokenizer has no eos token, if the text is too short for one sample,
    or if fewer than ``num_samples`` samples fit.
    """
    if seq_len < 1:
        raise DataError(f"seq_len must be positive, got {seq_len}")
    if num_samples is not None and num_samples < 1:
        raise DataError(f"num_samples must be positive or None, got {num_samples}")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise DataError("the tokenizer has no eos token to separate documents: set tokenizer.eos_token")
    texts = _as_text_list(texts)
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    stream = torch.tensor(list(chain.from_iterable(ids + [eos_id] for ids in encoded["input_ids"])))
    available = len(stream) // seq_len
    if available == 0:
        raise DataError(
            f"the texts give {len(stream)} tokens, fewer than one sample of seq_len={seq_len}: "
            "add text or lower seq_len"
        )
    if num_samples is not None and num_samples > available:
        raise DataError(
            f"asked for {num_samples} samples of {seq_len} tokens but the texts give only {available}: "
            "add text, lower num_samples or lower seq_len"
        )
    samples = stream[: available * seq_len].view(available, seq_len)
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    return samples[order[:num_samples]].long().contiguous()


def _as_text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise DataError("no texts given: load some with load_texts(path)")
    if not all(isinstance(t, str) for t in texts):
        raise DataError("texts must be strings: load them with load_texts(path)")
    return texts


def _split_document(text: str, heldout_fraction: float) -> tuple[list[str], list[str]]:
    target = int(len(text) * (1.0 - heldout_fraction))
    before = text.rfind("\n", 0, target) + 1  # start of the line holding ``target``
    after = text.find("\n", target) + 1  # start of the next line; 0 if none
    candidates = [c for c in (before, after) if 0 < c < len(text)]
    cut = min(candidates, key=lambda c: abs(c - target)) if candidates else target
    train, heldout = text[:cut], text[cut:]
    if not train.strip() or not heldout.strip():
        raise DataError(
            f"one document of {len(text)} characters is too short to split with "
            f"heldout_fraction={heldout_fraction}: add text or pass several documents"
        )
    return [train], [heldout]


def _data_sources(folder: Path) -> list[Path]:
    """Data files and saved ``datasets`` folders below ``folder`` (not inside those), sorted."""
    entries = [
        e for e in folder.rglob("*") if not any(part.startswith(".") for part in e.relative_to(folder).parts)
    ]
    datasets_dirs = [e for e in entries if e.is_dir() and _is_saved_dataset(e)]
    files = [
        e
        for e in entries
        if e.is_file() and e.suffix in DATA_SUFFIXES and not any(d in e.parents for d in datasets_dirs)
    ]
    # a DatasetDict's split folders are saved datasets themselves: keep only the outermost folder
    datasets_dirs = [d for d in datasets_dirs if not any(o in d.parents for o in datasets_dirs)]
    return sorted(files + datasets_dirs)


def _is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _load_source(path: Path, tokenizer: Any, text_field: str) -> list[str]:
    if path.is_dir():
        return _load_saved_dataset(path, tokenizer, text_field)
    if path.suffix == PARQUET_SUFFIX:
        return _load_parquet(path, tokenizer, text_field)
    return _load_file(path, tokenizer, text_field)


def _load_file(path: Path, tokenizer: Any, text_field: str) -> list[str]:
    text = _read_utf8(path)
    if path.suffix != JSONL_SUFFIX:
        return [text]
    return [
        _record_text(line, f"{path}:{lineno}", tokenizer, text_field)
        for lineno, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]


def _import_optional(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise DataError(f"reading {what} needs the {package!r} package: {DATA_EXTRA_HINT}") from e


def _load_parquet(path: Path, tokenizer: Any, text_field: str) -> list[str]:
    pa = _import_optional("pyarrow", f"{path}")
    pq = _import_optional("pyarrow.parquet", f"{path}")
    try:
        parquet = pq.ParquetFile(path)
        column = _pick_column(parquet.schema_arrow, str(path), text_field)
        table = parquet.read(columns=[column])
    except (OSError, pa.ArrowException) as e:
        raise DataError(
            f"cannot read {path} as parquet ({e}): check that it is a complete parquet file, or re-export it"
        ) from e
    return _table_texts(table, column, str(path), tokenizer, text_field)


def _load_saved_dataset(path: Path, tokenizer: Any, text_field: str) -> list[str]:
    what = f"the saved datasets folder {path}"
    pa = _import_optional("pyarrow", what)
    datasets = _import_optional("datasets", what)
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(
            f"cannot read {what} ({e}): check that it was written completely by save_to_disk, "
            "or save it again"
        ) from e
    where = str(path)
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            splits = sorted(dataset)
            example = f" (e.g. {path / splits[0]})" if splits else ""
            raise DataError(
                f"{path} is a DatasetDict with splits {splits} but no 'train' split: "
                f"point at one split's folder{example} instead"
            )
        dataset, where = dataset["train"], f"{path} (train split)"
    column = _pick_column(dataset.features.arrow_schema, where, text_field)
    table = dataset.select_columns([column]).with_format("arrow")[:]
    return _table_texts(table, column, where, tokenizer, text_field)


def _pick_column(schema: Any, where: str, text_field: str) -> str:
    """The column to read: ``text_field`` (which must hold strings) or else ``messages``."""
    import pyarrow as pa

    if text_field in schema.names:
        kind = schema.field(text_field).type
        value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (
            pa.types.is_string(value_kind)
            or pa.types.is_large_string(value_kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(value_kind)
        ):
            raise DataError(
                f"{where}: column {text_field!r} holds {kind}, expected strings: "
                "pass text_field= naming the column that holds the text"
            )
        return text_field
    if "messages" in schema.names:
        return "messages"
    raise DataError(
        f"{where} has neither a {text_field!r} nor a 'messages' column (its columns are {list(schema.names)}): "
        "pass text_field= naming the column that holds the text"
    )


def _table_texts(table: Any, column: str, where: str, tokenizer: Any, text_field: str) -> list[str]:
    values = table.column(column).to_pylist()
    if column == text_field:
        return [value for value in values if value is not None]
    return [
        _render_messages(messages, f"{where} row {row}", tokenizer)
        for row, messages in enumerate(values)
        if messages is not None
    ]


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 ({e.reason} at byte {e.start}): convert it (iconv -t utf-8) or remove it"
        ) from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}: check that it is a readable file") from e


def _record_text(line: str, where: str, tokenizer: Any, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not valid JSON ({e.msg}): write one JSON object per line") from e
    if not isinstance(record, dict):
        raise DataError(
            f"{where} is a JSON {type(record).__name__}, not an object: write one object per line"
        )
    if text_field in record:
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} is a {type(text).__name__}, expected a string")
        return text
    if "messages" in record:
        return _render_messages(record["messages"], where, tokenizer)
    raise DataError(
        f"{where} has neither a {text_field!r} nor a 'messages' field (it has {sorted(record)}): "
        "pass text_field= naming the field that holds the text"
    )


def _render_messages(messages: Any, where: str, tokenizer: Any) -> str:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise DataError(f"{where}: 'messages' must be a list of {{'role': ..., 'content': ...}} objects")
    if tokenizer is None:
        raise DataError(
            f"{where} holds chat 'messages', which need a chat template: pass tokenizer= to load_texts"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where} holds chat 'messages' but the tokenizer has no chat_template: "
            "use an instruct model's tokenizer or set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False)


@dataclass(frozen=True)
class Samples:
    """Packed token samples from one split of a corpus (see :func:`build_samples`).

    ``train``: ``LongTensor [N, seq_len]`` (None when not asked for); ``heldout``: ``LongTensor [M,
    seq_len]`` (None when not asked for); ``heldout_texts``: the held-out documents, which neither
    ``train`` nor anything built from the train split contains. ``settings``: what built them.
    """

    train: torch.LongTensor | None
    heldout: torch.LongTensor | None
    heldout_texts: list[str]
    settings: dict

    @property
    def heldout_fingerprint(self) -> str:
        """A short hash of the held-out token ids and their shape (two evaluations compare only if equal)."""
        if self.heldout is None:
            raise DataError("no held-out samples were built: pass num_heldout to build_samples")
        return fingerprint(self.heldout)


def build_samples(
    tokenizer: Any,
    data: str | os.PathLike | Sequence[str],
    seq_len: int,
    num_train: int | None = 0,
    num_heldout: int | None = 0,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    text_field: str = "text",
) -> Samples:
    """The one sample builder: load -> split -> pack, seeded; the held-out split is never in ``train``.

    ``data`` is a path (read with :func:`load_texts`) or a list of documents. The documents are split
    with :func:`split_texts` (``heldout_fraction``, ``seed``: whole documents held out; a single document
    is cut near its end), and each part is packed with :func:`pack_tokens` (``seed``):

    - ``num_train``: 0 builds no train samples; None keeps all that fit; a number keeps exactly that
      many (``DataError`` when fewer fit), a prefix of a larger request;
    - ``num_heldout``: 0 builds no held-out samples; None keeps all that fit; a number keeps up to that
      many (the first of the shuffled held-out samples; fewer when the held-out text is short).

    Importance calibration, distillation, the reference model, the demo and ``nemocompress eval`` all
    build their samples here, so a given ``(data, heldout_fraction, seed)`` gives every one of them the
    same split.
    """
    texts = load_texts(data, tokenizer, text_field) if isinstance(data, (str, os.PathLike)) else data
    train_texts, heldout_texts = split_texts(texts, heldout_fraction, seed)
    train = heldout = None
    if num_train != 0:
        train = pack_tokens(tokenizer, train_texts, seq_len, num_samples=num_train, seed=seed)
    if num_heldout != 0:
        try:
            heldout = pack_tokens(tokenizer, heldout_texts, seq_len, seed=seed)[:num_heldout]
        except DataError:
            where = f"of {data} " if isinstance(data, (str, os.PathLike)) else ""
            raise DataError(
                f"the held-out part {where}({heldout_fraction:.0%} of the documents) is shorter than one "
                f"sample of {seq_len} tokens: add text, raise heldout_fraction or lower seq_len"
            ) from None
    settings = {"seq_len": seq_len, "heldout_fraction": heldout_fraction, "seed": seed}
    return Samples(train, heldout, heldout_texts, settings)


def calibration_samples(
    tokenizer: Any,
    path: str | os.PathLike,
    num_samples: int,
    seq_len: int,
    seed: int = 0,
    heldout_fraction: float = 0.1,
) -> tuple[torch.LongTensor, list[str]]:
    """Calibration samples ``[num_samples, seq_len]`` from the train split of the texts at ``path``.

    Returns the samples and the held-out documents (which scoring never sees); see :func:`build_samples`.
    """
    built = build_samples(tokenizer, path, seq_len, num_samples, 0, heldout_fraction, seed)
    return built.train, built.heldout_texts


def fingerprint(samples: torch.Tensor) -> str:
    """A short hash of a token tensor and its shape, to notice that the data changed."""
    digest = hashlib.sha256(samples.to(torch.int64).contiguous().numpy().tobytes())
    digest.update(str(tuple(samples.shape)).encode())
    return digest.hexdigest()[:16]
