"""The JSON report of ``nemocompress eval`` and the regression gate that compares two of them.

report = EvalResult.load("baseline.json")
comparison = compare_reports(new.report, report.report, max_regression=0.02, tolerances={"kl": 0.05})
print(comparison.table()); comparison.regressed   # the metrics worse than their tolerance, by name

Each metric has a direction: for ``loss``, ``bits_per_byte`` and ``kl`` up is worse, for
``top1_agreement`` and the throughputs down is worse, for ``params``, ``active_params`` and
``memory_bytes`` up is worse. A metric regresses when it moved in its worse direction by more than its
tolerance, relative to the baseline (``(new - old) / |old|``; where the baseline is 0, e.g. the KL of a
model to itself, the change is absolute). By default only the quality metrics (``loss``,
``bits_per_byte``, ``kl``, ``top1_agreement``) are gated, with ``max_regression``; throughput depends on
the machine and its load and the sizes are fixed by the model, so they are shown (a changed size is
flagged) but gate only when a tolerance names them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NemocompressError
from .report import format_table, human

__all__ = [
    "DIRECTIONS",
    "GATED_BY_DEFAULT",
    "REPORT_FORMAT",
    "Comparison",
    "EvalResult",
    "GateError",
    "check_comparable",
    "compare_reports",
    "parse_tolerances",
]

REPORT_FORMAT = "nemocompress-eval/1"
DIRECTIONS = {  # +1: up is worse, -1: down is worse
    "loss": 1,
    "bits_per_byte": 1,
    "kl": 1,
    "top1_agreement": -1,
    "forward_tokens_per_s": -1,
    "generation_tokens_per_s": -1,
    "params": 1,
    "active_params": 1,
    "memory_bytes": 1,
}
GATED_BY_DEFAULT = ("loss", "bits_per_byte", "kl", "top1_agreement")
COMPARED_SETTINGS = ("samples", "seq_len", "heldout_fraction", "seed", "dtype", "context_length")


class GateError(NemocompressError, ValueError):
    """A report or baseline cannot be read or compared; the message names the fix."""


@dataclass
class EvalResult:
    """One evaluation report (the JSON of ``nemocompress eval``): ``report["metrics"]`` and its context."""

    report: dict

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]

    def table(self) -> str:
        rows = [[name, _show(name, value)] for name, value in self.metrics.items() if value is not None]
        s = self.report["settings"]
        head = (
            f"{self.report['model']} on {s['samples']} x {s['seq_len']} held-out tokens of "
            f"{self.report['data']} (fingerprint {self.report['data_fingerprint']})"
        )
        return f"{head}\n\n{format_table(rows, ['metric', 'value'])}"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.report, indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        path = Path(path)
        try:
            report = json.loads(path.read_text())
        except FileNotFoundError:
            raise GateError(
                f"{path} does not exist: write a report with `nemocompress eval ... -o {path}`"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GateError(
                f"{path} is not a readable JSON report ({e}): write it again with eval -o"
            ) from None
        if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
            raise GateError(
                f"{path} is not a {REPORT_FORMAT} report (format {report.get('format') if isinstance(report, dict) else None!r}): "
                "write it with `nemocompress eval ... -o`"
            )
        return cls(report)


def _show(name: str, value: float) -> str:
    if name == "memory_bytes":
        return human(value, "B")
    if name in ("params", "active_params"):
        return f"{human(value)} ({value:,})"
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 1e4 else f"{value:,.0f}"


def parse_tolerances(values: Sequence[str] | Mapping | None) -> dict[str, float | None]:
    """``["loss=0.01", "kl=off"]``, a JSON object (string or ``.json`` file) or a mapping -> {metric: tolerance}.

    A tolerance is a relative change (0.02 = 2%) or ``off`` / None (shown, never gated).
    """
    if values is None:
        return {}
    if isinstance(values, Mapping):
        items = list(values.items())
    else:
        items = []
        for value in values:
            text = value.strip()
            if text.endswith(".json") and Path(text).is_file():
                text = Path(text).read_text()
            if text.startswith("{"):
                try:
                    items += list(json.loads(text).items())
                except (json.JSONDecodeError, AttributeError) as e:
                    raise GateError(f"--tolerance {value!r} is not a JSON object ({e})") from None
                continue
            name, sep, number = text.partition("=")
            if not sep:
                raise GateError(f"--tolerance {value!r}: write METRIC=VALUE, e.g. loss=0.01 or kl=off")
            items.append((name.strip(), number.strip()))
    out: dict[str, float | None] = {}
    for name, value in items:
        if name not in DIRECTIONS:
            raise GateError(f"--tolerance names an unknown metric {name!r}; metrics: {', '.join(DIRECTIONS)}")
        if value is None or str(value).lower() in ("off", "none"):
            out[name] = None
            continue
        try:
            number = float(value)
        except ValueError:
            raise GateError(f"--tolerance {name}={value!r}: the value must be a number or off") from None
        if not number >= 0 or not math.isfinite(number):
            raise GateError(f"--tolerance {name}={value!r}: the value must be a finite number >= 0")
        out[name] = number
    return out


@dataclass
class Comparison:
    """Every metric of a report against its baseline; ``regressed`` names those beyond their tolerance."""

    rows: list[dict] = field(default_factory=list)

    @property
    def regressed(self) -> list[str]:
        return [r["metric"] for r in self.rows if r["status"] == "REGRESSED"]

    def table(self) -> str:
        cells = []
        for r in self.rows:
            tol = "-" if r["tolerance"] is None else f"{r['tolerance']:g}"
            change = "-" if r["change"] is None else f"{r['change']:+.4f}"
            cells.append(
                [
                    r["metric"],
                    _cell(r["metric"], r["baseline"]),
                    _cell(r["metric"], r["new"]),
                    change,
                    tol,
                    r["status"],
                ]
            )
        table = format_table(cells, ["metric", "baseline", "new", "worse by", "tolerance", "status"])
        verdict = f"regressed: {', '.join(self.regressed)}" if self.regressed else "no metric regressed"
        return f"{table}\n\n{verdict}"


def _cell(name: str, value) -> str:
    return "-" if value is None else _show(name, value)


def compare_reports(
    new: Mapping,
    baseline: Mapping,
    max_regression: float = 0.02,
    tolerances: Mapping[str, float | None] | None = None,
    force: bool = False,
) -> Comparison:
    """Compare the metrics of report ``new`` with ``baseline`` (both ``EvalResult.report`` dicts).

    ``max_regression`` is the tolerance of the metrics in :data:`GATED_BY_DEFAULT`; ``tolerances``
    overrides it per metric (None: not gated) and gates any other metric it names. Reports of other
    held-out data (fingerprint) or other settings (samples, seq_len, heldout_fraction, seed, dtype,
    context_length) are not comparable: ``GateError`` unless ``force``.
    """
    if not max_regression >= 0:
        raise GateError(f"--max-regression must be >= 0, got {max_regression}")
    if not force:
        check_comparable(new, baseline)
    chosen = {name: max_regression for name in GATED_BY_DEFAULT} | dict(tolerances or {})
    rows = []
    for name, direction in DIRECTIONS.items():
        old, now = baseline["metrics"].get(name), new["metrics"].get(name)
        tol = chosen.get(name)
        row = {"metric": name, "baseline": old, "new": now, "change": None, "tolerance": tol}
        if old is None or now is None:
            row["status"] = "only in baseline" if now is None and old is not None else "not compared"
            if old is None and now is None:
                continue
        else:
            worse = direction * (now - old) / (abs(old) if old else 1.0) + 0.0  # no -0.0
            row["change"] = worse
            if tol is None:
                row["status"] = "changed" if now != old and name not in _THROUGHPUT else "not gated"
            elif worse > tol:
                row["status"] = "REGRESSED"
            else:
                row["status"] = "ok"
        rows.append(row)
    return Comparison(rows)


_THROUGHPUT = ("forward_tokens_per_s", "generation_tokens_per_s")


def check_comparable(new: Mapping, baseline: Mapping) -> None:
    """Raise ``GateError`` unless both reports (``data_fingerprint`` and ``settings`` suffice) compare."""
    why = []
    if new.get("data_fingerprint") != baseline.get("data_fingerprint"):
        why.append(
            f"held-out data fingerprint {new.get('data_fingerprint')} != baseline {baseline.get('data_fingerprint')}"
        )
    for key in COMPARED_SETTINGS:
        a, b = new["settings"].get(key), baseline["settings"].get(key)
        if a != b:
            why.append(f"{key} {a} != baseline {b}")
    if why:
        raise GateError(
            f"the report and the baseline are not comparable ({'; '.join(why)}): evaluate with the "
            "baseline's data and settings, or pass --force to compare anyway"
        )
