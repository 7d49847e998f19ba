"""Apply a plan: slice a loaded model in memory, or stream a safetensors checkpoint tensor by tensor.

Both paths cut every tensor with the same rule (``arch.select`` over the adapter's tensor description), so
they give identical tensors; the streaming path holds at most one chunk of one tensor in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM
from transformers.initialization import no_init_weights

from ..arch import Adapter, Segment, dim_indices, disk_dims, get_adapter, select
from ..checkpoint import (
    SAFE_INDEX,
    SafetensorsWriter,
    TensorInfo,
    atomic_output_dir,
    copy_side_files,
    list_tensors,
    load_config,
    read_rows,
    side_files,
)
from ..errors import CheckpointError
from .plan import Plan

__all__ = ["slice_model", "slice_checkpoint", "PLAN_FILE"]

PLAN_FILE = "nemocompress_plan.json"
_CHUNK_BYTES = 64 * 2**20


def _layer_map(plan: Plan, adapter: Adapter, config) -> dict[int, int]:
    return {old: new for new, old in enumerate(plan.kept_layers(adapter.num_layers(config)))}


def slice_model(model: torch.nn.Module, plan: Plan) -> torch.nn.Module:
    """A new model holding only what ``plan`` keeps (the input model is not changed).

    Returns a stock transformers model built from the plan's config, in the input's dtype, on the device of
    its first parameter, eval mode.
    """
    config = model.config
    adapter = get_adapter(config)
    new_config = plan.apply_config(config)
    kept = plan.kept_tensors()
    specs = {s.name: s for s in adapter.tensors(config)}
    layers = _layer_map(plan, adapter, config)
    state = {}
    for name, tensor in model.state_dict().items():
        spec = specs.get(name)
        if spec is None:
            raise CheckpointError(f"parameter {name} is not described by the {config.model_type} adapter")
        if spec.layer is not None:
            if spec.layer not in layers:
                continue
            name = adapter.renumber(name, layers[spec.layer])
        state[name] = select(tensor.detach(), spec.dims, kept)
    first = next(model.parameters())
    with torch.device(first.device), no_init_weights():  # every parameter is loaded below: skip the init
        new_model = AutoModelForCausalLM.from_config(new_config, dtype=first.dtype)
    new_model.tie_weights()  # skipped with the initialization
    new_model.load_state_dict(state, strict=True)
    return new_model.eval()


@dataclass(frozen=True)
class _Job:
    info: TensorInfo
    out_key: str
    dims: Mapping[int, tuple[Segment, ...]]
    shape: tuple[int, ...]


def _jobs(tensors: Mapping[str, TensorInfo], plan: Plan, adapter: Adapter, config) -> list[_Job]:
    specs = {s.name: s for s in adapter.tensors(config)}
    kept = plan.kept_tensors()
    layers = _layer_map(plan, adapter, config)
    jobs = []
    for key, info in tensors.items():
        disk_key, _ = adapter.decode_disk_key(key)
        spec = specs.get(disk_key.memory_name)
        if spec is None:
            raise CheckpointError(
                f"checkpoint tensor {key} is not described by the {config.model_type} adapter; "
                "is this checkpoint for a different architecture than its config.json says?"
            )
        dims = disk_dims(spec, disk_key)
        expected = spec.shape[1:] if disk_key.expert is not None else spec.shape
        if disk_key.part is not None:
            expected = tuple(spec.dims[disk_key.part_dim][disk_key.part].length if d == disk_key.part_dim - 1 else s
                             for d, s in enumerate(expected))  # fmt: skip
        if tuple(info.shape) != tuple(expected):
            raise CheckpointError(
                f"{key} has shape {list(info.shape)} but config.json implies {list(expected)}"
            )
        new_expert = None
        if disk_key.expert is not None:
            experts = dim_indices(spec.dims[0], kept)
            if experts is not None:
                where = (experts == disk_key.expert).nonzero()
                if len(where) == 0:
                    continue
                new_expert = int(where[0, 0])
        new_layer = None
        if spec.layer is not None:
            if spec.layer not in layers:
                continue
            new_layer = layers[spec.layer]
        out_key = adapter.encode_disk_key(key, new_layer, new_expert)
        shape = list(info.shape)
        for dim, segs in dims.items():
            idx = dim_indices(segs, kept)
            if idx is not None:
                shape[dim] = len(idx)
        jobs.append(_Job(info, out_key, dims, tuple(shape)))
    return jobs


def _stream(job: _Job, kept: Mapping[str, torch.Tensor], writer: SafetensorsWriter) -> None:
    """Cut one tensor in dim-0 chunks: read the kept rows of a chunk, cut the other dims, append."""
    rows = dim_indices(job.dims[0], kept) if 0 in job.dims else None
    n_rows = job.info.shape[0] if job.info.shape else 1
    rows = torch.arange(n_rows) if rows is None else rows
    row_bytes = max(1, job.info.nbytes // max(n_rows, 1))
    step = max(1, _CHUNK_BYTES // row_bytes)
    other = {d: s for d, s in job.dims.items() if d != 0}
    if len(rows) == 0:
        writer.write(torch.empty(job.shape, dtype=job.info.dtype))
    for i in range(0, len(rows), step):
        chunk = read_rows(job.info, rows[i : i + step])
        writer.write(select(chunk, other, kept))


def slice_checkpoint(
    model_dir: str | Path,
    plan: Plan,
    output_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write the checkpoint that ``plan`` keeps, streaming tensor by tensor from ``model_dir``.

    The output has the input's key layout and sharding (shard files keep their names), the plan's config,
    the tokenizer and other side files, and ``nemocompress_plan.json``. It is written to a temporary
    directory beside ``output_dir`` and renamed when complete (``atomic_output_dir``), after
    checking that the disk has room for the sliced tensors and the input's side files. ``extra(tmp)``
    writes more files into the directory before it is renamed (a search's report).
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    config = load_config(model_dir)
    adapter = get_adapter(config)
    new_config = plan.apply_config(config)
    tensors = list_tensors(model_dir)
    jobs = _jobs(tensors, plan, adapter, config)
    kept = plan.kept_tensors()
    by_file: dict[Path, list[_Job]] = {}
    for job in jobs:
        by_file.setdefault(job.info.file, []).append(job)
    total = sum(j.info.nbytes for j in jobs)
    total_size = sum(torch.Size(j.shape).numel() * j.info.dtype.itemsize for j in jobs)
    side = sum(p.stat().st_size for p in side_files(model_dir))
    with atomic_output_dir(output_dir, overwrite, (model_dir,), needed_bytes=total_size + side) as tmp:
        weight_map = {}
        with tqdm(total=total, unit="B", unit_scale=True, desc="slicing", disable=not progress) as bar:
            for file, file_jobs in by_file.items():  # the bar ends its line also when a write fails
                layout = {j.out_key: (j.info.dtype, j.shape) for j in file_jobs}
                with SafetensorsWriter(tmp / file.name, layout) as writer:
                    for job in file_jobs:
                        _stream(job, kept, writer)
                        bar.update(job.info.nbytes)
                weight_map.update((j.out_key, file.name) for j in file_jobs)
        if (model_dir / SAFE_INDEX).is_file():
            index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2))
        new_config.save_pretrained(tmp)
        copy_side_files(model_dir, tmp)
        plan.save(tmp / PLAN_FILE)
        if extra is not None:
            extra(tmp)
    return output_dir
