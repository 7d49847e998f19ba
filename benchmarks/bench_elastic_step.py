"""Time of an elastic training step against a plain KD step at equal shapes (issue 11; target <= 1.3x).

Both sides are the distillation loop (:func:`nemocompress.distill.distill`) with the teacher = the parent and
the student = a copy of the parent, the same sequence length, batch, steps, learning rate and data:

- plain: ``distill(config)``, a KD step of the full-size student;
- elastic: ``distill(config, extension=ElasticModel(...))``, what ``nemocompress elastic train`` runs in
  each stage: the parent masked by the routers' sampled architecture for a budget drawn per step (0.5 / 0.75
  / 1.0 of the parent's params, uniform as in stage 1), the routers' forward, the cost-table term. The
  ElasticModel is built as :func:`nemocompress.elastic.train.train_elastic` builds it (the space from scores,
  here fixed descending scores as its budget probe uses: which units are kept does not change the time; the
  params cost table; the budgets' targets), and the DistillConfig is the one it passes to ``distill``.

A smaller budget skips no compute (its masks zero units of the full-size parent), so every elastic step has
the plain step's shapes; the table also shows the elastic steps per budget drawn. Time per optimizer step is
the trainer's own ``step_s`` (metrics.jsonl: from the learning-rate set-up to after the optimizer step; not
evaluation, checkpoints or the final save), the first ``--warmup`` steps of every run left out. On CPU
(``--clock cpu``, the default there) the trainer's clock is this process's CPU time (all threads), so
``step_s`` is the compute of the step, not the time it waited for a core on a shared machine; the wall time
of the same steps is kept too. On a loaded machine pass ``--threads 1``: idle OpenMP threads that wait for
a core count as CPU time. The sides
alternate over ``--rounds`` runs (plain, elastic, elastic, plain, ...) so that a change in machine load hits
both; run ``i`` of either side has seed ``i`` (the same data order on both sides; on the elastic side the
budgets drawn per step, a function of seed and step, differ between runs). The table gives the best and the
median step over all runs of a side.

Usage:
  python benchmarks/bench_elastic_step.py                    # SmolLM2-135M-Instruct, 2 x 128 tokens
  python benchmarks/bench_elastic_step.py --steps 8 --rounds 3 --threads 1     # benchmarks/RESULTS.md
  python benchmarks/bench_elastic_step.py --quick            # a zoo Llama, seconds (a smoke test)
  python benchmarks/bench_elastic_step.py --model DIR --data TEXT --seq-len 256 --batch-size 4 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from nemocompress.checkpoint import load_config
from nemocompress.distill import distill, trainer
from nemocompress.distill.metrics import read_metrics
from nemocompress.elastic import ElasticConfig
from nemocompress.elastic.model import ElasticModel, Schedule, budget_probabilities
from nemocompress.elastic.train import METRICS, _distill_config, _random_space, resolve_budgets

SIDES = ("plain", "elastic")
TARGET = 1.3  # elastic / plain


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="parent checkpoint (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--data", default=None, help="text file or folder (default: Shakespeare)")
    parser.add_argument("--data-chars", type=int, default=400_000, help="characters of the default data used")
    parser.add_argument("--quick", action="store_true", help="a zoo Llama and zoo text: a smoke test")
    parser.add_argument("--budgets", default="0.5,0.75,1.0")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each run not timed")
    parser.add_argument("--rounds", type=int, default=2, help="runs per side, alternated")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="what step_s counts (default: cpu on CPU, wall on GPU)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--workdir", default=None, help="where runs are written (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    args.clock = args.clock or ("wall" if torch.cuda.is_available() else "cpu")
    return args


def prepare(args: argparse.Namespace, work: Path) -> tuple[str, str]:
    """The parent checkpoint and the training text."""
    if args.quick:
        from nemocompress.zoo import save_zoo_checkpoint, zoo_text

        parent = args.model or str(save_zoo_checkpoint("llama", work / "parent"))
        data = work / "data.txt"
        data.write_text(zoo_text())
        return parent, args.data or str(data)
    from nemocompress import assets
    from nemocompress.data import load_texts

    parent = args.model or str(assets.fetch_smollm2())
    if args.data:
        return parent, args.data
    text = "\n\n".join(load_texts(assets.fetch_text("shakespeare")))[: args.data_chars]
    data = work / "data.txt"
    data.write_text(text)  # a slice: every run tokenizes its data, the step time does not depend on it
    return parent, str(data)


def elastic_config(args: argparse.Namespace, parent: str, data: str, out: Path, seed: int) -> ElasticConfig:
    return ElasticConfig(
        parent=parent, budgets=args.budgets, data=data, output_dir=str(out), steps=args.steps,
        seq_len=args.seq_len, batch_size=args.batch_size, eval_every=0, save_every=0, eval_samples=1,
        progress=False, warmup_steps=0, seed=seed,
    )  # fmt: skip


def elastic_model(config: ElasticConfig) -> ElasticModel:
    """The ElasticModel of ``train_elastic`` for ``config``, budgets drawn uniformly (stage 1)."""
    parent_config = load_config(config.parent)
    metric = METRICS[config.budget_metric]
    space = _random_space(parent_config, config)
    table, valid = space.cost_tables(config.cost_settings())
    budgets = resolve_budgets(config.budgets, metric, float(table[metric][space.full]))
    schedule = Schedule(config.steps, 0, budget_probabilities(len(budgets), None), config.seed,
                        config.temperature, config.logit_scale)  # fmt: skip
    return ElasticModel(space, [b.target for b in budgets], table[metric], valid, schedule, config.cost_weight,
                        [b.label for b in budgets], config.router_lr / config.lr, tolerance=config.tolerance)  # fmt: skip


class Clock:
    """Stands in for the trainer's ``time`` module: ``perf_counter`` returns this process's CPU time (``cpu``)
    or the wall time, and keeps the wall time of each call (the trainer reads it twice per step)."""

    def __init__(self, cpu: bool) -> None:
        self.cpu, self.wall = cpu, []

    def perf_counter(self) -> float:
        self.wall.append(time.perf_counter())
        return time.process_time() if self.cpu else self.wall[-1]


def run_side(side: str, args: argparse.Namespace, parent: str, data: str, out: Path, seed: int) -> list[dict]:
    """One run of ``side``; its timed step records (``step_s``, ``wall_s``, and ``budget`` on the elastic
    side)."""
    config = elastic_config(args, parent, data, out, seed)
    extension = elastic_model(config) if side == "elastic" else None
    clock = Clock(args.clock == "cpu")
    with mock.patch.object(trainer, "time", clock):
        distill(
            _distill_config(config, parent, out, args.steps, args.seq_len), extension, end_processes=False
        )
    if extension is not None:
        extension.detach()
    steps = [r for r in read_metrics(out / "metrics.jsonl") if "step_s" in r]
    shutil.rmtree(out, ignore_errors=True)
    if len(clock.wall) != 2 * len(steps):
        raise SystemExit(
            f"the trainer read its clock {len(clock.wall)} times in {len(steps)} steps, not twice a step"
        )
    for i, r in enumerate(steps):
        r["wall_s"] = clock.wall[2 * i + 1] - clock.wall[2 * i]
    return [r for r in steps if r["step"] > args.warmup]


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return (
        "| "
        + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        + " |"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return measure(args)
    finally:
        torch.set_num_threads(threads)


def measure(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_elastic_"))
    work.mkdir(parents=True, exist_ok=True)
    parent, data = prepare(args, work)
    config = load_config(parent)
    load, started = os.getloadavg(), time.time()
    records: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(args.rounds):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            steps = run_side(side, args, parent, data, work / f"{side}-{i}", seed=i)
            records[side] += steps
            times = ", ".join(
                f"{r['step_s']:.3f}/{r['wall_s']:.3f}" + (f"@{r['budget']}" if "budget" in r else "")
                for r in steps
            )
            print(f"round {i + 1} {side:<8} {args.clock}/wall s per step: {times}", flush=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)

    groups = [("plain KD", records["plain"]), ("elastic (all budgets)", records["elastic"])]
    labels = sorted({r["budget"] for r in records["elastic"]}, key=float)
    groups += [(f"elastic @{b}", [r for r in records["elastic"] if r["budget"] == b]) for b in labels]
    print(
        f"\nparent {Path(parent).name} ({config.model_type}, {config.num_hidden_layers} layers, hidden "
        f"{config.hidden_size}); {args.batch_size} x {args.seq_len} tokens per step; {args.steps} steps per run, "
        f"first {args.warmup} untimed; {args.rounds} runs per side; budgets {args.budgets}; "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {torch.get_num_threads()} threads; load average "
        f"{load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; {time.time() - started:.0f} s"
    )
    summary = {}
    for key, clock in (
        (("step_s", args.clock), ("wall_s", "wall")) if args.clock == "cpu" else (("step_s", "wall"),)
    ):
        header = ["side", "steps", f"best {clock} s", f"median {clock} s", "ratio (best)", "ratio (median)"]
        base = [r[key] for r in records["plain"]]
        table = []
        for name, group in groups:
            t = [r[key] for r in group]
            table.append([name, str(len(t)), f"{min(t):.3f}", f"{statistics.median(t):.3f}",
                          f"{min(t) / min(base):.3f}", f"{statistics.median(t) / statistics.median(base):.3f}"])  # fmt: skip
        elastic = [r[key] for r in records["elastic"]]
        summary[clock] = (min(elastic) / min(base), statistics.median(elastic) / statistics.median(base))
        print(f"\n{clock} time per optimizer step:")
        print_table(header, table)
    ratio, median_ratio = summary[args.clock]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"\nelastic / plain step ({args.clock} time, best): {ratio:.3f} (median {median_ratio:.3f}); "
          f"target <= {TARGET}x: {verdict}")  # fmt: skip
    return {"ratio": ratio, "median_ratio": median_ratio, "verdict": verdict, "clock": args.clock,
            "plain": [r["step_s"] for r in records["plain"]],
            "elastic": [(r["budget"], r["step_s"]) for r in records["elastic"]]}  # fmt: skip


def print_table(header: list[str], table: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    print(fmt_row(header, widths))
    print("|" + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|")
    for row in table:
        print(fmt_row(row, widths))


if __name__ == "__main__":
    main()
