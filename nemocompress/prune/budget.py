"""Budgets: the targets a search must meet (params, active params, memory at a context, decode latency).

budget = Budget(params=parse_count("6B"), memory_gib=22.06, reserve_fraction=0.05, reserve_gib=1.3,
                context_length=131072)                       # Nemotron Nano 2: 19.66 GiB for the model
budget.check(cost, latency_ms)                               # names of the targets a cost misses

Latency is a roofline estimate of one decode step (every sequence of the batch gets one new token) at the
context length: ``max(bytes read / bandwidth, FLOPs / peak FLOP/s)``. Bytes read: the active weights once,
the whole KV cache, the recurrent state twice (read and written). FLOPs: ``2 x active params`` per token
plus the attention scores and mix over the context (``4 x query width x context`` per attention layer per
token); Mamba's scan and the norms are ignored (well under 1% at these sizes). It ranks candidates against
each other; it does not predict a serving stack's absolute numbers (no kernel efficiency, no overlap).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import PlanError
from ..report import human

__all__ = [
    "DEVICE_PROFILES",
    "Budget",
    "DeviceProfile",
    "decode_latency_ms",
    "device_profile",
    "parse_count",
]

_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_GIB = 2**30


def parse_count(value: str | int | float, what: str = "count") -> int:
    """``"6B"`` / ``"900M"`` / ``"6e9"`` / ``6000000000`` -> an int. Suffixes K, M, B (= G), T; case-insensitive."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(value))
        if m is None:
            raise PlanError(f"{what}: cannot read {value!r} as a number; write e.g. 6e9, 6B or 900M")
        number = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not math.isfinite(number) or number <= 0:
        raise PlanError(f"{what} must be a positive number, got {value!r}")
    return round(number)


@dataclass(frozen=True)
class DeviceProfile:
    """Peak memory bandwidth (bytes/s) and dense bf16 FLOP/s of one accelerator, from its datasheet."""

    name: str
    bandwidth: float
    flops: float
    source: str = ""


#: Datasheet peaks (dense, no sparsity). ``cpu`` is a rough two-channel DDR5 desktop, not this machine:
#: use ``--measure-latency`` to time on the machine at hand.
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("a10g", 600e9, 70e12, "NVIDIA A10G (AWS g5): 600 GB/s GDDR6, ~70 TFLOP/s bf16 dense"),
        DeviceProfile("l40s", 864e9, 362e12, "NVIDIA L40S datasheet: 864 GB/s, 362 TFLOP/s bf16 dense"),
        DeviceProfile("a100", 2039e9, 312e12, "NVIDIA A100 80GB SXM: 2039 GB/s, 312 TFLOP/s bf16 dense"),
        DeviceProfile("h100", 3350e9, 989e12, "NVIDIA H100 SXM: 3.35 TB/s, 989 TFLOP/s bf16 dense"),
        DeviceProfile("h200", 4800e9, 989e12, "NVIDIA H200 SXM: 4.8 TB/s, 989 TFLOP/s bf16 dense"),
        DeviceProfile("cpu", 60e9, 1e12, "a desktop CPU: ~60 GB/s DDR5, ~1 TFLOP/s bf16 (rough)"),
    )
}


def device_profile(spec: str | DeviceProfile) -> DeviceProfile:
    """A named profile, or JSON ``{"bandwidth_gbs": 600, "tflops": 70}`` for any other device."""
    if isinstance(spec, DeviceProfile):
        return spec
    if spec in DEVICE_PROFILES:
        return DEVICE_PROFILES[spec]
    try:
        data = json.loads(spec)
        return DeviceProfile("custom", float(data["bandwidth_gbs"]) * 1e9, float(data["tflops"]) * 1e12, spec)
    except (ValueError, TypeError, KeyError):
        raise PlanError(
            f"unknown --device-profile {spec!r}: use one of {', '.join(DEVICE_PROFILES)} or JSON "
            '\'{"bandwidth_gbs": 600, "tflops": 70}\''
        ) from None


def decode_latency_ms(
    active_params, kv_cache_bytes, state_bytes, attention_width, batch_size: int, context_length: int,
    dtype: torch.dtype, profile: DeviceProfile,
):  # fmt: skip
    """Roofline milliseconds of one decode step (module docstring); arguments may be numpy arrays.

    ``attention_width``: summed query channels of all attention layers (heads x head dim x layers).
    """
    read = np.asarray(active_params, dtype=np.float64) * dtype.itemsize + kv_cache_bytes + 2.0 * state_bytes
    flops = batch_size * (
        2.0 * np.asarray(active_params, dtype=np.float64) + 4.0 * attention_width * context_length
    )
    return 1e3 * np.maximum(read / profile.bandwidth, flops / profile.flops)


@dataclass(frozen=True)
class Budget:
    """What a pruned model must fit; None = no target. All given targets must hold.

    ``memory_gib`` is the device memory; the model may use ``memory_gib * (1 - reserve_fraction) -
    reserve_gib`` of it (weights + KV cache + recurrent state at ``context_length`` x ``batch_size``
    in ``dtype``). ``latency_ms``: one decode step by :func:`decode_latency_ms` on ``device``, or timed on
    this machine when ``measure_latency``.
    """

    params: int | None = None
    active_params: int | None = None
    memory_gib: float | None = None
    latency_ms: float | None = None
    context_length: int = 4096
    batch_size: int = 1
    dtype: str = "bfloat16"
    reserve_fraction: float = 0.0
    reserve_gib: float = 0.0
    device: str = "h100"
    measure_latency: bool = False

    def __post_init__(self):
        named = {
            "params": "params",
            "active_params": "active_params",
            "memory_gib": "memory",
            "latency_ms": "latency",
        }
        for name, metric in named.items():
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PlanError(f"{self.flag(metric)} must be positive, got {value}")
        if self.context_length < 1 or self.batch_size < 1:
            raise PlanError("--context-length and --memory-batch-size must be positive integers")
        if not 0 <= self.reserve_fraction < 1 or self.reserve_gib < 0:
            raise PlanError("--reserve-fraction must lie in [0, 1) and --reserve must not be negative")
        if self.memory_gib is not None and self.memory_limit_bytes <= 0:
            raise PlanError(
                f"--target-memory {self.memory_gib} GiB leaves nothing after the reserves "
                f"({self.reserve_fraction:.0%} and {self.reserve_gib} GiB); lower --reserve or --reserve-fraction"
            )
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise PlanError(f"--dtype {self.dtype!r}: use bfloat16, float16 or float32")
        device_profile(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def profile(self) -> DeviceProfile:
        return device_profile(self.device)

    @property
    def memory_limit_bytes(self) -> float | None:
        if self.memory_gib is None:
            return None
        return (self.memory_gib * (1 - self.reserve_fraction) - self.reserve_gib) * _GIB

    @property
    def targets(self) -> list[str]:
        """The metrics with a target, in search order (ModelOpt's: active params, params, memory; then
        latency): candidates closest under the first of them come first."""
        named = ("active_params", "params", "memory", "latency")
        given = (self.active_params, self.params, self.memory_gib, self.latency_ms)
        return [n for n, v in zip(named, given) if v is not None]

    def limit(self, metric: str) -> float:
        return {
            "params": self.params,
            "active_params": self.active_params,
            "memory": self.memory_limit_bytes,
            "latency": self.latency_ms,
        }[metric]

    def estimate_latency(self, cost: dict[str, np.ndarray]):
        """:func:`decode_latency_ms` of a :class:`~nemocompress.prune.cost.CostModel` result on this budget's
        device, batch, context and dtype."""
        return decode_latency_ms(
            cost["active_params"], cost["kv_cache_bytes"], cost["state_bytes"], cost["attention_width"],
            self.batch_size, self.context_length, self.torch_dtype, self.profile,
        )  # fmt: skip

    def metrics(self, cost: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The targetable metrics of a CostModel result (``memory`` in bytes); latency by the roofline
        estimate, left out when the budget measures it instead."""
        out = {"params": cost["params"], "active_params": cost["active_params"], "memory": cost["memory"]}
        if not self.measure_latency:
            out["latency"] = self.estimate_latency(cost)
        return out

    def fits(self, metrics: dict[str, np.ndarray]):
        """Boolean array: every target holds (``metrics``: target name -> values, e.g. ``memory`` in bytes)."""
        ok = True
        for name in self.targets:
            if name in metrics:
                ok = ok & (np.asarray(metrics[name]) <= self.limit(name))
        return ok

    def missed(self, metrics: dict[str, float]) -> list[str]:
        """The targets that ``metrics`` (one candidate) misses."""
        return [n for n in self.targets if n in metrics and metrics[n] > self.limit(n)]

    def describe(self, metric: str, value: float) -> str:
        """A value of ``metric`` for people: 5.1B params, 19.66 GiB, 12.3 ms."""
        if metric in ("params", "active_params"):
            return human(value)
        if metric == "memory":
            return f"{value / _GIB:.4g} GiB"
        return f"{value:.4g} ms"

    def flag(self, metric: str) -> str:
        return {
            "params": "--target-params",
            "active_params": "--target-active-params",
            "memory": "--target-memory",
            "latency": "--target-latency",
        }[metric]

    def to_dict(self) -> dict:
        return {**asdict(self), "memory_limit_gib": (self.memory_limit_bytes or 0) / _GIB or None}
