"""Importance statistics on disk: one calibration serves many prunes.

A scores directory holds ``scores.safetensors`` (every summed statistic, so any aggregation or method can
be chosen later) and ``meta.json`` (format version, model fingerprint, data, settings, library versions).
Loading checks the fingerprint against the model and refuses a mismatch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
import transformers

from .. import __version__
from ..arch import get_adapter
from ..checkpoint import atomic_output_dir
from ..errors import NemocompressError
from .activation import Stats
from .depth import LayerStats

__all__ = ["SCORES_VERSION", "ImportanceArtifact", "ScoresError", "describe_run", "fingerprint"]

SCORES_VERSION = 1
_TENSORS, _META = "scores.safetensors", "meta.json"


class ScoresError(NemocompressError):
    """A scores directory is missing, unreadable, or for another model."""


def fingerprint(config) -> dict:
    """What identifies a model's prunable shape: family and every axis size."""
    return {
        "model_type": config.model_type,
        "axes": {a.name: a.size for a in get_adapter(config).axes(config)},
    }


@dataclass
class ImportanceArtifact:
    """Summed activation statistics per score site, and layer statistics per window size."""

    stats: Stats
    layers: dict[int, LayerStats]
    meta: dict = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every statistic under a flat name (``site/KEY/STAT``, ``layers/WINDOW/STAT``)."""
        tensors = {f"site/{k}/{n}": v.contiguous() for k, s in self.stats.items() for n, v in s.items()}
        tensors.update(
            {f"layers/{w}/{n}": v.contiguous() for w, s in self.layers.items() for n, v in s.items()}
        )
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> ImportanceArtifact:
        """The inverse of :meth:`tensors`."""
        stats: Stats = {}
        layers: dict[int, LayerStats] = {}
        for key, value in tensors.items():
            kind, rest = key.split("/", 1)
            owner, name = rest.rsplit("/", 1)
            if kind == "site":
                stats.setdefault(owner, {})[name] = value
            else:
                layers.setdefault(int(owner), {})[name] = value
        return cls(stats, layers, meta or {})

    def save(
        self, path: str | Path, overwrite: bool = False, also: Callable[[Path], None] | None = None
    ) -> Path:
        """Write the directory atomically; ``also(tmp)`` may add files (plots) before it is renamed."""
        tensors = self.tensors()
        meta = {**self.meta, "version": SCORES_VERSION}
        needed = sum(t.numel() * t.element_size() for t in tensors.values()) + len(tensors) * 256
        with atomic_output_dir(path, overwrite, needed_bytes=needed) as tmp:
            safetensors.torch.save_file(tensors, str(tmp / _TENSORS))
            (tmp / _META).write_text(json.dumps(meta, indent=1))
            if also is not None:
                also(tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, config=None) -> ImportanceArtifact:
        """Read a scores directory; with ``config``, refuse scores computed for another model."""
        path = Path(path)
        if not (path / _META).is_file() or not (path / _TENSORS).is_file():
            raise ScoresError(
                f"{path} is not a scores directory (run `nemocompress importance ... -o {path}`)"
            )
        meta = json.loads((path / _META).read_text())
        if meta.get("version") != SCORES_VERSION:
            raise ScoresError(
                f"{path}: scores format {meta.get('version')} is not {SCORES_VERSION}; recompute them"
            )
        if config is not None and meta.get("fingerprint") != fingerprint(config):
            raise ScoresError(
                f"{path} was computed for another model ({meta.get('fingerprint', {}).get('model_type')} with other "
                "axis sizes); recompute the scores for this model"
            )
        return cls.from_tensors(safetensors.torch.load_file(str(path / _TENSORS)), meta)


def describe_run(config, data: str, settings: dict) -> dict:
    """The metadata stored beside the statistics."""
    return {
        "fingerprint": fingerprint(config),
        "data": data,
        "settings": settings,
        "versions": {
            "nemocompress": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
