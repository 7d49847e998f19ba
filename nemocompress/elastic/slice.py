"""Zero-shot slicing of a trained elastic RUN: one budget (or all) -> stock checkpoints, no training.

slice_run("run", "out-0.5", budget="0.5")      # the 0.5 submodel, with its plan
slice_run("run", "subs", all_budgets=True)     # subs/budget-0.5, subs/budget-0.75, ...

A trained budget is sliced to the architecture the routers chose for it. An untrained budget is refused
unless ``interpolate``: then the architecture is the one whose cost is nearest the budget among those that
lie between the two nearest trained budgets on every axis (so it nests between them); no router chose it
and no training step saw it, and the result says so.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..arch.masking import install_masks
from ..checkpoint import check_output_dir, load_config
from ..prune.budget import Budget
from ..prune.slice import slice_checkpoint
from ..report import format_table, human
from .quant import check_quant, export_quantized, load_quantizer_state, quantize_
from .space import ElasticSpace
from .train import ELASTIC_DIR, QUANTIZERS, ElasticError, _fingerprint, load_state, resolve_budgets

__all__ = ["RunMasks", "SliceResult", "budget_choice", "run_space", "slice_run"]

BUDGET_FILE = "elastic_budget.json"


@dataclass
class SliceResult:
    label: str
    output_dir: Path
    sizes: dict
    params: int
    memory: int
    interpolated: bool

    @staticmethod
    def table(results: Sequence[SliceResult]) -> str:
        rows = [
            [r.label, ", ".join(f"{k} {v}" for k, v in r.sizes.items()), human(r.params), human(r.memory, "B"),
             "interpolated" if r.interpolated else "trained", str(r.output_dir)]
            for r in results
        ]  # fmt: skip
        return format_table(rows, ["budget", "architecture", "params", "memory", "budget was", "checkpoint"])


def _settings(state) -> Budget:
    names = {f.name for f in fields(Budget)}
    return Budget(**{k: v for k, v in state["cost_settings"].items() if k in names})


def run_space(run: Path, state) -> ElasticSpace:
    """The nested space of a finished RUN, checked against the model the RUN holds."""
    config = load_config(run)
    if _fingerprint(config) != state["parent"]:
        raise ElasticError(
            f"{run}: its model is not the one its elastic/elastic.json was trained for; slice the RUN as "
            "`elastic train` wrote it"
        )
    return ElasticSpace.from_dict(config, state["space"])


class RunMasks:
    """A loaded copy of a RUN's parent, masked in place to any choice of its space (what that choice's sliced
    checkpoint computes); ``set(None)`` restores the full model."""

    def __init__(self, run: str | Path, model) -> None:
        self.space = run_space(Path(run), load_state(run))
        names = [n for mats in self.space.indicator_matrices() for n in mats if n != "layers"]
        self.handle = install_masks(model, self.space.adapter, names, layers=True)

    def set(self, choice) -> None:
        if choice is None:
            self.handle.set({}, {})
            return
        self.handle.set(*self.space.hard_masks(choice))

    @contextlib.contextmanager
    def at(self, choice):
        self.set(choice)
        try:
            yield
        finally:
            self.set(None)


def budget_choice(
    run: str | Path, budget: str, interpolate: bool = False
) -> tuple[dict, tuple[int, ...], bool]:
    """(the budget's row, its choice, whether it was interpolated) for a budget given as at training."""
    run = Path(run)
    state = load_state(run)
    rows = state["budgets"]
    for row in rows:
        if row["label"] == str(budget):
            return row, tuple(row["choice"]), False
    space = run_space(run, state)
    table, valid = space.cost_tables(_settings(state))
    values = table[state["metric"]]
    parent_value = float(values[space.full])
    target = resolve_budgets([str(budget)], state["metric"], parent_value)[0].target
    for row in rows:
        if abs(row["target"] - target) <= 1e-6 * parent_value:
            return row, tuple(row["choice"]), False
    trained = ", ".join(r["label"] for r in rows)
    if not interpolate:
        raise ElasticError(
            f"budget {budget} was not trained (trained: {trained}); slice one of those, or pass --interpolate "
            "to take an architecture between its trained neighbours (never chosen by a router nor trained)"
        )
    below = [r for r in rows if r["target"] < target]
    above = [r for r in rows if r["target"] > target]
    low = tuple(max(below, key=lambda r: r["target"])["choice"]) if below else tuple(0 for _ in space.sizes)
    high = tuple(min(above, key=lambda r: r["target"])["choice"])
    allowed = np.asarray(valid).copy()
    grids = np.meshgrid(*[np.arange(n) for n in space.sizes], indexing="ij")
    for d, g in enumerate(grids):
        allowed &= (g >= low[d]) & (g <= high[d])
    if not allowed.any():
        raise ElasticError(f"no architecture lies between the trained budgets around {budget}")
    distance = np.where(allowed, np.abs(values - target), np.inf)
    choice = tuple(int(i) for i in np.unravel_index(int(np.argmin(distance)), distance.shape))
    row = {
        "label": str(budget), "target": target, "choice": list(choice), "sizes": space.export_sizes(choice),
        "value": float(values[choice]), "params": int(table["params"][choice]), "memory": int(table["memory"][choice]),
    }  # fmt: skip
    return row, choice, True


def slice_run(
    run: str | Path,
    output_dir: str | Path,
    budget: str | None = None,
    all_budgets: bool = False,
    interpolate: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    quant: bool = False,
) -> list[SliceResult]:
    """Slice ``budget`` (a label or value as given at training) of ``run`` into ``output_dir``, or with
    ``all_budgets`` every trained budget into ``output_dir/budget-LABEL``. Nothing is trained. ``quant``: a
    RUN trained with ``--quant`` is exported in ModelOpt's quantized Hugging Face format instead, with the
    trained per-tensor scales."""
    run = Path(run)
    if (budget is None) == (not all_budgets):
        raise ElasticError("give --budget B or --all")
    state = load_state(run)
    if quant and not state.get("quant"):
        raise ElasticError(
            f"{run} was trained without --quant: slice it without --quant (or train with --quant fp8)"
        )
    if quant:
        check_quant(state["quant"])
    space = run_space(run, state)
    if all_budgets:
        jobs = [
            (row, tuple(row["choice"]), False, Path(output_dir) / f"budget-{row['label']}")
            for row in state["budgets"]
        ]
        for *_, out in jobs:
            check_output_dir(out, overwrite, inputs=(run,))
    else:
        row, choice, interpolated = budget_choice(run, budget, interpolate)
        jobs = [(row, choice, interpolated, Path(output_dir))]
        check_output_dir(output_dir, overwrite, inputs=(run,))
    results = []
    for row, choice, interpolated, out in jobs:
        plan = space.plan(choice)
        note = {"budget": row["label"], "metric": state["metric"], "target": row["target"],
                "sizes": row["sizes"], "interpolated": interpolated, "run": str(run)}  # fmt: skip

        def extra(tmp: Path, note=note) -> None:
            (tmp / BUDGET_FILE).write_text(json.dumps(note, indent=1))

        if quant:
            _export_quantized(run, space, plan, out, state["quant"], overwrite, extra)
        else:
            slice_checkpoint(run, plan, out, overwrite=overwrite, progress=progress, extra=extra)
        results.append(
            SliceResult(row["label"], out, row["sizes"], row["params"], row["memory"], interpolated)
        )
    return results


def _export_quantized(
    run: Path, space: ElasticSpace, plan, out: Path, quant: str, overwrite: bool, extra
) -> None:
    """The plan's size of the RUN, fake-quantized with the RUN's trained per-tensor scales (the same for every
    size: scales are not pruned), exported by ModelOpt; with the tokenizer, the plan and ``extra``."""
    from safetensors.torch import load_file

    from ..checkpoint import atomic_output_dir
    from ..distill.models import load_causal_lm, load_tokenizer
    from ..prune.slice import PLAN_FILE, slice_model

    adapter = space.adapter
    kept = plan.kept_layers(adapter.num_layers(space.config))
    prefix = adapter.layers_prefix + "."

    def parent_name(name: str) -> str:  # a quantizer of the sliced model -> the parent's (layers renumbered)
        if not name.startswith(prefix):
            return name
        return adapter.renumber(name, kept[int(name[len(prefix) :].split(".", 1)[0])])

    with atomic_output_dir(out, overwrite, (run,)) as tmp:
        sliced = slice_model(load_causal_lm(run), plan)
        quantize_(sliced, quant, torch.zeros(1, 8, dtype=torch.long))  # every amax is then replaced
        load_quantizer_state(sliced, load_file(run / ELASTIC_DIR / QUANTIZERS), parent_name)
        export_quantized(sliced, tmp)
        load_tokenizer(run).save_pretrained(tmp)
        plan.save(tmp / PLAN_FILE)
        extra(tmp)
