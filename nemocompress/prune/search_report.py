"""What a search writes: ``report.json`` (every candidate), ``report.md`` and ``candidates.png``."""

from __future__ import annotations

import json
from pathlib import Path

from ..report import format_table, human

__all__ = ["build_report", "write_report", "summary_table"]

_GIB = 2**30


def build_report(prepared, scored: list[dict], winner: dict, scorer, key: str) -> dict:
    """The report as plain data: settings, space, counts, the parent, every listed and every scored candidate."""
    e, s = prepared.enumeration, prepared.space
    return {
        "model_type": prepared.config.model_type,
        "budget": prepared.budget.to_dict(),
        "options": prepared.options.to_dict(),
        "space": {
            "choices": s.choices,
            "num_layers": s.num_layers,
            "layer_kinds": s.layer_kinds,
            "divisors": s.divisors,
            "notes": s.notes,
        },
        "enumeration": {
            "total": e.total,
            "fitting": e.fitting,
            "rejected_by_config": e.rejected_by_config,
            "listed": len(e.candidates),
            "seconds": round(e.seconds, 3),
        },
        "parent": prepared.parent,
        "score": {"name": scorer.name, "higher_is_better": scorer.higher_is_better, "ranked_by": key},
        "scored": scored,
        "winner": winner,
        "candidates": [{"index": i, **c.to_dict()} for i, c in enumerate(e.candidates)],
    }


def _row(entry: dict, winner_index: int, kd: bool) -> list:
    row = [
        "*" if entry["index"] == winner_index else "",
        entry["index"],
        " ".join(f"{k}={v}" for k, v in entry["export_config"].items()),
        "/".join(str(n) for n in entry["layers"].values()),
        human(entry["params"]),
        human(entry["active_params"]),
        f"{entry['memory_bytes'] / _GIB:.3f}",
        f"{entry['latency_ms']:.3g}",
        f"{entry['score']:.4f}",
    ]
    return row + ([f"{entry['score_kd']:.4f}"] if kd else [])


def summary_table(report: dict) -> str:
    kd = report["score"]["ranked_by"] == "score_kd"
    name = report["score"]["name"]
    headers = ["", "#", "sizes", "layers", "params", "active", "memory GiB", "latency ms", name]
    headers += [f"{name} after KD"] if kd else []
    rows = [_row(e, report["winner"]["index"], kd) for e in report["scored"]]
    return format_table(rows, headers)


def _markdown(report: dict) -> str:
    b, e = report["budget"], report["enumeration"]
    targets = {k: b[k] for k in ("params", "active_params", "memory_gib", "latency_ms") if b[k] is not None}
    lines = [
        f"# Search report ({report['model_type']})",
        "",
        f"Targets: {', '.join(f'{k} {v}' for k, v in targets.items())} "
        f"(context {b['context_length']}, batch {b['batch_size']}, {b['dtype']}"
        + (f", memory limit {b['memory_limit_gib']:.3f} GiB" if b["memory_gib"] else "")
        + f", latency on {b['device']}{' measured' if b['measure_latency'] else ' (roofline estimate)'}).",
        "",
        f"Candidates: {e['total']} in the space, {e['rejected_by_config']} refused by the model's config rules, "
        f"{e['fitting']} meet every target ({e['listed']} listed in report.json); enumerated in {e['seconds']} s.",
        "",
        *(f"- {n}" for n in report["space"]["notes"]),
        "",
        f"Parent: {human(report['parent']['params'])} params, {report['parent']['memory'] / _GIB:.3f} GiB.",
        "",
    ]
    kd = report["score"]["ranked_by"] == "score_kd"
    name = report["score"]["name"]
    headers = ["winner", "#", "sizes", "layers", "params", "active", "memory GiB", "latency ms", name]
    headers += [f"{name} after KD"] if kd else []
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += [
        "| " + " | ".join(str(c) for c in _row(r, report["winner"]["index"], kd)) + " |"
        for r in report["scored"]
    ]
    better = "higher" if report["score"]["higher_is_better"] else "lower"
    lines += ["", f"Ranked by {report['score']['ranked_by']} ({better} is better); ties go to lower latency."]
    return "\n".join(lines) + "\n"


def _metric(report: dict) -> tuple[str, str]:
    """The budget's first target (the search's order), as a report key and an axis label."""
    order = [
        ("active_params", "active params"),
        ("params", "params"),
        ("memory_gib", "memory"),
        ("latency_ms", "latency"),
    ]
    return next(((k, label) for k, label in order if report["budget"][k] is not None), ("params", "params"))


def _x(entry: dict, key: str) -> float:
    return {
        "active_params": entry["active_params"],
        "params": entry["params"],
        "memory_gib": entry["memory_bytes"] / _GIB,
        "latency_ms": entry["latency_ms"],
    }[key]


def plot_candidates(report: dict, path: Path) -> Path:
    """Cost (the first target's metric) against score for every scored candidate, before and after KD; the
    Pareto front (no other candidate is both cheaper and better) drawn, the winner marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = _metric(report)
    higher = report["score"]["higher_is_better"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [("score", "zero-shot")]
    if report["score"]["ranked_by"] == "score_kd":
        series.append(("score_kd", "after KD"))
    for field, name in series:
        pts = sorted((_x(e, key), e[field]) for e in report["scored"])
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name, alpha=0.7)
        front, best = [], None
        for x, y in pts:  # cheapest first: a point is on the front when it beats every cheaper one
            if best is None or (y > best if higher else y < best):
                front.append((x, y))
                best = y
        ax.plot([p[0] for p in front], [p[1] for p in front], drawstyle="steps-post", alpha=0.6)
    w = report["winner"]
    ax.scatter([_x(w, key)], [w[series[-1][0]]], marker="*", s=250, color="red", label="winner", zorder=3)
    ax.set_xlabel(label + (" (GiB)" if key == "memory_gib" else " (ms)" if key == "latency_ms" else ""))
    ax.set_ylabel(f"{report['score']['name']} ({'higher' if higher else 'lower'} is better)")
    ax.legend()
    ax.set_title(f"{len(report['scored'])} scored candidates of {report['enumeration']['fitting']} that fit")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    (directory / "report.md").write_text(_markdown(report))
    plot_candidates(report, directory / "candidates.png")
    return directory
