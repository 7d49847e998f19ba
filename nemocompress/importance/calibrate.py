"""One calibration run: activation statistics and layer statistics over batches, on one or many processes.

With several processes (``torchrun`` / ``accelerate launch``), each scores its shard of the batches and the
sums are reduced across processes before any square root, so the result equals a single-process run.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from accelerate import PartialState
from accelerate.utils import reduce
from tqdm.auto import tqdm

from ..arch import Adapter
from ..checkpoint import atomic_file
from ..data import calibration_samples
from ..errors import OutputError
from .activation import CONSTANT_STATS, ActivationCollector
from .artifact import ImportanceArtifact, ScoresError
from .depth import LayerStats, default_layer_metrics, layer_stats
from .options import ImportanceOptions

__all__ = ["calibrate", "CalibrationCheckpoint", "load_model_and_samples"]


def load_model_and_samples(
    model_dir, data, options: ImportanceOptions
) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model in the options' dtype on their device (default: this process's accelerate device) and
    calibration samples ``[N, S]`` from the train split of ``data``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples, _ = calibration_samples(tokenizer, data, options.samples, options.seq_len, options.seed)
    device = options.device or str(PartialState().device)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, options.dtype), device_map={"": device}
    )
    return model, samples


def _reduce(stats: dict, state: PartialState) -> dict:
    """Sum every statistic across processes (constants such as weight norms are kept as they are)."""
    if state.num_processes == 1:
        return stats
    out = {}
    for k, v in stats.items():
        if isinstance(v, dict):
            out[k] = _reduce(v, state)
        else:
            out[k] = v if k in CONSTANT_STATS else reduce(v.to(state.device), "sum").cpu()
    return out


class CalibrationCheckpoint:
    """The sums of a calibration in progress, saved so that an interrupted run resumes where it stopped.

    One file per process in ``directory`` (each process has its own shard), replaced atomically at most
    every ``every_s`` seconds. ``run`` identifies the calibration (model, data, settings); resuming a
    different one is refused.
    """

    def __init__(self, directory: str | Path, run: dict, every_s: float = 60.0):
        state = PartialState()
        self.directory, self.run, self.every_s = Path(directory), run, every_s
        self.file = self.directory / f"rank{state.process_index}-of-{state.num_processes}.safetensors"
        self._saved_at = time.monotonic()

    @classmethod
    def beside(
        cls, output_dir: str | Path, run: dict, overwrite: bool, resume: bool, every_s: float = 60.0
    ) -> CalibrationCheckpoint:
        """The checkpoint of a calibration into ``output_dir``: ``.NAME.partial`` beside it.

        One left by an interrupted run is continued with ``resume``, deleted with ``overwrite``, and
        refused otherwise.
        """
        partial = Path(output_dir).parent / f".{Path(output_dir).name}.partial"
        if partial.exists() and not resume:
            if not overwrite:
                raise OutputError(
                    f"an interrupted calibration for {output_dir} is saved in {partial}: pass --resume to "
                    "continue it or --overwrite to start over"
                )
            if PartialState().is_main_process:
                shutil.rmtree(partial)
            PartialState().wait_for_everyone()
        return cls(partial, run, every_s)

    def load(self) -> tuple[int, ImportanceArtifact]:
        """(batches done, sums so far); nothing done when this process saved nothing yet."""
        if not self.file.is_file():
            return 0, ImportanceArtifact({}, {})
        with safetensors.safe_open(str(self.file), "pt") as f:
            meta = f.metadata()
        if json.loads(meta["run"]) != self.run:
            raise ScoresError(
                f"{self.directory} holds an interrupted calibration of another model, data or settings: "
                "rerun with the same ones to resume it, or pass --overwrite to start over"
            )
        return int(meta["done"]), ImportanceArtifact.from_tensors(safetensors.torch.load_file(str(self.file)))

    def due(self) -> bool:
        return time.monotonic() - self._saved_at >= self.every_s

    def save(self, done: int, sums: ImportanceArtifact) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        metadata = {"run": json.dumps(self.run, sort_keys=True), "done": str(done)}
        with atomic_file(self.file) as tmp:
            safetensors.torch.save_file(sums.tensors(), str(tmp), metadata=metadata)
        self._saved_at = time.monotonic()


def _summed(a: LayerStats, b: LayerStats) -> LayerStats:
    return {name: a[name] + value if name in a else value for name, value in b.items()}


@torch.no_grad()
def calibrate(
    model: torch.nn.Module,
    adapter: Adapter,
    samples: torch.Tensor,
    batch_size: int = 4,
    block_sizes: Sequence[int] = (1,),
    layer_metrics: Sequence[str] | None = None,
    seq_agg: str = "mean",
    token_moments: bool = True,
    progress: bool = True,
    meta: dict | None = None,
    checkpoint: CalibrationCheckpoint | None = None,
) -> ImportanceArtifact:
    """Collect everything importance needs from ``samples`` ``[N, S]`` (token ids).

    Returns summed statistics: per score site (for width scores; with ``token_moments``, the default,
    everything every built-in ranking needs) and per layer window size in ``block_sizes`` (for depth
    scores, the ``layer_metrics``; the default, :func:`default_layer_metrics`, leaves out ``kl`` and
    ``lm_loss``, which run the LM head once per layer; no ``block_sizes``: no layer scores). With
    ``checkpoint``, starts from its saved sums and saves them as it goes.
    """
    state = PartialState()
    batches = list(samples.split(batch_size))[state.process_index :: state.num_processes]
    model.eval()
    done, sums = checkpoint.load() if checkpoint is not None else (0, ImportanceArtifact({}, {}))
    bar = tqdm(
        total=len(batches) * (1 + len(block_sizes)),
        initial=done,
        desc="importance",
        disable=not (progress and state.is_main_process),
    )

    def step(current: ImportanceArtifact | None = None) -> None:
        nonlocal done
        done += 1
        bar.update(1)
        if checkpoint is not None and checkpoint.due():
            checkpoint.save(done, current or sums)

    if done < len(batches):
        collector = ActivationCollector(model, adapter, seq_agg, token_moments)
        collector.stats = sums.stats

        def width_step() -> None:
            if checkpoint is not None and checkpoint.due():
                collector.flush()
            step()

        sums.stats = collector.collect(batches[done:], on_batch=width_step)
    for phase, window in enumerate(block_sizes, 1):
        start = phase * len(batches)
        if done >= start + len(batches):
            continue
        prior = sums.layers.get(window, {})
        layers = layer_stats(
            model,
            adapter,
            batches[done - start :],
            window=window,
            metrics=default_layer_metrics() if layer_metrics is None else layer_metrics,
            on_batch=lambda so_far, window=window, prior=prior: step(
                ImportanceArtifact(sums.stats, {**sums.layers, window: _summed(prior, so_far)})
            ),
        )
        sums.layers[window] = _summed(prior, layers)
    bar.close()
    return ImportanceArtifact(
        _reduce(sums.stats, state), {k: _reduce(v, state) for k, v in sums.layers.items()}, meta or {}
    )
