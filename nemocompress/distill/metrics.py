"""Training metrics: one JSON object per line, and a loss-curve PNG drawn from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..checkpoint import atomic_file

__all__ = ["MetricsLog", "plot_loss_curve", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a metrics JSONL file (a torn last line, from a killed run, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends records ``{"step": ..., ...}`` to a JSONL file; only the writing process touches the file.

    With ``keep_until`` (resume), records of later steps than the checkpoint's are dropped first: the
    resumed run writes them again.
    """

    def __init__(self, path: str | Path, keep_until: int | None = None, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        kept = [r for r in read_metrics(self.path) if keep_until is not None and r["step"] <= keep_until]
        self.records = kept
        if enabled:
            with atomic_file(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        record = {k: _plain(v) for k, v in record.items()}
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; "nan" / "inf" keep the line parseable
    return value


def plot_loss_curve(records: list[dict], path: str | Path) -> Path:
    """Training loss per step (left) and held-out loss and KL per evaluation (right), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r and isinstance(r["loss"], float)]
    evals = [r for r in records if "eval/loss" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    terms = [k for k in ("kd", "ce", "intermediate") if any(r.get(k) for r in train)]
    for key in ["loss", *terms] if len(terms) > 1 else ["loss"]:  # one term alone is the loss itself
        points = [(r["step"], r[key]) for r in train if isinstance(r.get(key), float)]
        left.plot(*zip(*points), label=key, linewidth=1)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    if train:
        left.legend()
    for key in ("eval/loss", "eval/kl", "eval/kl_topk"):
        points = [(r["step"], r[key]) for r in evals if isinstance(r.get(key), float)]
        if points:
            right.plot(*zip(*points), marker="o", label=key)
    right.set_xlabel("step")
    right.set_ylabel("held-out (nats / token)")
    if evals:
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
