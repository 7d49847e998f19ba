"""Budget search and MiniPuzzle: enumerate, rank zero-shot through masks, distill the best few, keep one.

prepared = prepare_search(config, budget, SearchOptions(top_k=10, score="kl", kd_steps=0))   # errors first
result = run_search(model_dir, output_dir, prepared, found, data, state)                      # then the work

Every finished step is saved in the search state directory (``OUT.search`` beside the output) as it
finishes: the candidate list, each zero-shot score, each distilled candidate and its score. ``resume``
reads them back and never recomputes one; the winner is written as a stock checkpoint with ``search/``
(report.json, report.md, candidates.png) inside it, and the state directory is removed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..arch import get_adapter
from ..checkpoint import atomic_file
from ..errors import OutputError, PlanError
from .budget import Budget
from .cost import CostModel
from .minitron import plan_from_targets
from .plan import Plan
from .space import Candidate, Enumeration, SearchSpace, enumerate_candidates, nearest_reachable

__all__ = ["SearchOptions", "PreparedSearch", "SearchState", "SearchResult", "prepare_search", "run_search"]

STATE_VERSION = 1


@dataclass(frozen=True)
class SearchOptions:
    """How to search (ModelOpt's names for the space: max_width_pruning, max_depth_pruning, hparams_to_skip,
    divisors, top_k) and how to rank: ``score`` ``lm-loss`` | ``kl`` | ``top1`` | ``mc:FILE.jsonl`` (or a
    callable ``model -> float`` through the API) on ``score_samples`` held-out sequences of ``seq_len``
    tokens; ``kd_steps`` > 0 distills each of the top ``top_k`` from the parent (MiniPuzzle) before the
    final ranking."""

    max_width_pruning: float = 0.4
    max_depth_pruning: float = 0.2
    hparams_to_skip: tuple[str, ...] = ()
    divisors: Mapping[str, int] | None = None
    top_k: int = 10
    score: str | Callable = "kl"
    score_samples: int = 16
    seq_len: int = 512
    batch_size: int = 4
    kd_steps: int = 0
    kd_lr: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.top_k < 1:
            raise PlanError(f"--top-k must be a positive integer, got {self.top_k}")
        if self.kd_steps < 0:
            raise PlanError(f"--kd-steps must not be negative, got {self.kd_steps}")
        if self.score_samples < 1 or self.seq_len < 2 or self.batch_size < 1:
            raise PlanError("--score-samples, --seq-len and --batch-size must be positive (--seq-len >= 2)")

    @property
    def score_name(self) -> str:
        return self.score if isinstance(self.score, str) else getattr(self.score, "__name__", "callable")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["score"] = self.score_name
        d["hparams_to_skip"] = list(self.hparams_to_skip)
        d["divisors"] = dict(self.divisors or {})
        return d


@dataclass
class PreparedSearch:
    """Everything decided before any work: the space, the fitting candidates, the parent's costs."""

    config: object
    budget: Budget
    options: SearchOptions
    space: SearchSpace
    enumeration: Enumeration
    parent: dict[str, float]

    @property
    def top(self) -> list[Candidate]:
        return self.enumeration.candidates[: self.options.top_k]


def parent_metrics(config, budget: Budget) -> dict[str, float]:
    """The unpruned model's params, active params, memory (bytes) and estimated latency under ``budget``."""
    c = CostModel(config)(
        context_length=budget.context_length, batch_size=budget.batch_size, dtype=budget.torch_dtype
    )
    return {
        "params": int(c["params"]),
        "active_params": int(c["active_params"]),
        "memory": int(c["memory"]),
        "latency": float(budget.estimate_latency(c)),
    }


def prepare_search(config, budget: Budget, options: SearchOptions) -> PreparedSearch:
    """Check the targets against the model and the space, enumerate; raise PlanError before any work."""
    if not budget.targets:
        raise PlanError(
            "a search needs a target: --target-params, --target-active-params, --target-memory or --target-latency"
        )
    parent = parent_metrics(config, budget)
    if (
        budget.params is not None
        and budget.active_params is not None
        and budget.active_params >= budget.params
    ):
        raise PlanError(
            f"--target-active-params {budget.describe('params', budget.active_params)} is not below --target-params "
            f"{budget.describe('params', budget.params)}: active params never exceed params, so the targets "
            "contradict what you meant; lower --target-active-params or drop it"
        )
    for metric in budget.targets:
        if budget.measure_latency and metric == "latency":
            continue
        if parent[metric] <= budget.limit(metric):
            raise PlanError(
                f"{budget.flag(metric)} {budget.describe(metric, budget.limit(metric))} is not below the model's "
                f"current {budget.describe(metric, parent[metric])}: it prunes nothing; lower the target"
            )
    space = SearchSpace.build(
        config,
        options.max_width_pruning,
        options.max_depth_pruning,
        options.hparams_to_skip,
        options.divisors,
    )
    enumeration = enumerate_candidates(space, budget)
    if not enumeration.candidates:
        raise PlanError(nearest_reachable(space, budget))
    return PreparedSearch(config, budget, options, space, enumeration, parent)


# ---------------------------------------------------------------------- the state directory


def _write_json(path: Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


class SearchState:
    """The search's saved progress: ``state.json`` (settings and candidate list) and ``scores.jsonl``
    (one line per finished score, flushed and fsynced). A line torn by a kill is ignored."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @classmethod
    def open(cls, directory: str | Path, settings: dict, resume: bool, overwrite: bool) -> SearchState:
        state = cls(directory)
        meta = state.directory / "state.json"
        if state.directory.exists():
            if overwrite:
                shutil.rmtree(state.directory)
            elif not resume:
                raise OutputError(
                    f"a search state exists at {state.directory}: pass --resume to continue it or --overwrite "
                    "to start over"
                )
            elif meta.exists():
                saved = json.loads(meta.read_text())["settings"]
                changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
                if changed:
                    raise OutputError(
                        f"--resume: the search at {state.directory} was made with other settings "
                        f"({', '.join(changed[:4])}); repeat them, or pass --overwrite to start over"
                    )
        state.directory.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            _write_json(meta, {"version": STATE_VERSION, "settings": settings})
        return state

    def records(self) -> dict[tuple[str, int], dict]:
        """``(phase, candidate index) -> record`` of every finished score."""
        path = self.directory / "scores.jsonl"
        out = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn by a kill mid-write
                out[(r["phase"], r["index"])] = r
        return out

    def add(self, record: dict) -> None:
        with open(self.directory / "scores.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def kd_dir(self, index: int) -> Path:
        return self.directory / "kd" / f"{index:03d}"

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------------- plans and scores


def candidate_plan(config, candidate: Candidate, found, layer_metric: str) -> Plan:
    """The plan that keeps ``candidate``'s sizes: the best units of every axis, and of each layer kind the
    layers that the importance ranking values most."""
    adapter = get_adapter(config)
    targets = dict(candidate.export_config)
    unit = found.unit_scores()
    kinds = adapter.layer_kinds(config)
    if sum(candidate.layers.values()) < len(kinds):
        scores = found.layer_scores(1)[layer_metric]
        kept = []
        for kind, count in candidate.layers.items():
            of_kind = [i for i, k in enumerate(kinds) if k == kind]
            best = sorted(of_kind, key=lambda i: float(scores[i]), reverse=True)[:count]
            kept += best
        ranking = torch.zeros(len(kinds))
        ranking[kept] = 1.0
        unit["layers"] = ranking
        targets["num_layers"] = len(kept)
    rescore = found.unit_scores if found.ranking.restricts else None
    return plan_from_targets(config, targets, unit, rescore=rescore)


@dataclass
class SearchResult:
    """The winner, every scored candidate and where things were written."""

    prepared: PreparedSearch
    scored: list[dict]
    winner: dict
    output_dir: Path
    report: dict = field(default_factory=dict)

    def table(self) -> str:
        """The search space, how many candidates fit, and every scored candidate (the winner starred)."""
        from .search_report import summary_table

        e, space = self.prepared.enumeration, self.prepared.space
        lines = [space.table(), *(f"note: {n}" for n in space.notes)]
        lines.append(
            f"{e.total:,} candidates, {e.rejected_by_config:,} refused by the config's rules, {e.fitting:,} meet "
            f"every target; scored the closest {len(self.scored)}:"
        )
        return "\n".join([*lines, "", summary_table(self.report)])


def _better(scorer, a: dict, b: dict, key: str) -> bool:
    """Whether record ``a`` beats ``b`` on ``key``; ties go to the lower estimated latency."""
    ka, kb = scorer.key(a[key]), scorer.key(b[key])
    if ka != kb:
        return ka > kb
    return a["latency_ms"] < b["latency_ms"]


def run_search(
    model_dir: str | Path,
    output_dir: str | Path,
    prepared: PreparedSearch,
    found,
    data: str | Path,
    state: SearchState,
    layer_metric: str = "nmse",
    overwrite: bool = False,
    progress: bool = True,
    measure: Callable[[object], float] | None = None,
    train: Callable[[Path, Path], Path] | None = None,
) -> SearchResult:
    """Score the top candidates zero-shot on the masked parent, distill them when asked, write the winner.

    ``train``: ``(student_dir, run_dir) -> final model dir``, the distillation of ``kd_steps`` steps from
    the parent (the trainer lives on a floor above; the API passes it), resumable in ``run_dir``.
    ``measure``: ``config -> decode ms`` timed on this machine (``--measure-latency``); then candidates are
    measured in list order and the first ``top_k`` that meet the latency target are scored.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data import build_samples
    from .score import make_scorer, score_masked
    from .search_report import build_report, write_report
    from .slice import slice_checkpoint

    o, config = prepared.options, prepared.config
    adapter = get_adapter(config)
    records = state.records()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heldout = build_samples(tokenizer, data, o.seq_len, 0, o.score_samples, seed=o.seed).heldout
    parent = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    scorer = make_scorer(o.score, parent, tokenizer, heldout, o.batch_size)
    chosen = _choose(prepared, state, records, measure, progress)

    scored = []
    for index in tqdm(chosen, desc="zero-shot scores", disable=not progress):
        cand = prepared.enumeration.candidates[index]
        done = records.get(("zero-shot", index))
        if done is None:
            plan = candidate_plan(config, cand, found, layer_metric)
            value = score_masked(scorer, parent, plan.kept_tensors(), adapter)
            done = {"phase": "zero-shot", "index": index, "score": value}
            state.add(done)
        scored.append(
            {
                "index": index,
                **cand.to_dict(),
                "latency_ms": _latency(cand, records, index),
                "score": done["score"],
            }
        )

    key = "score"
    if o.kd_steps:
        if train is None:
            raise PlanError("kd_steps needs a train function (nemocompress.api.search passes the trainer)")
        del parent
        for entry in tqdm(scored, desc="MiniPuzzle KD", disable=not progress):
            done = records.get(("kd", entry["index"]))
            if done is None:
                model, _ = _distill_candidate(model_dir, prepared, found, entry, state, layer_metric, train)
                done = {"phase": "kd", "index": entry["index"], "score": scorer(model)}
                del model
                state.add(done)
            entry["score_kd"] = done["score"]
        key = "score_kd"
    winner = scored[0]
    for entry in scored[1:]:
        if _better(scorer, entry, winner, key):
            winner = entry
    plan = candidate_plan(config, prepared.enumeration.candidates[winner["index"]], found, layer_metric)
    report = build_report(prepared, scored, winner, scorer, key)

    def add_report(tmp: Path) -> None:
        write_report(report, tmp / "search")

    output_dir = Path(output_dir)
    if o.kd_steps:
        _publish_distilled(state.kd_dir(winner["index"]), output_dir, overwrite, (model_dir,), add_report)
    else:
        slice_checkpoint(
            model_dir, plan, output_dir, overwrite=overwrite, progress=progress, extra=add_report
        )
    state.remove()
    return SearchResult(prepared, scored, winner, output_dir, report)


def _latency(cand: Candidate, records: dict, index: int) -> float:
    measured = records.get(("latency", index))
    return measured["ms"] if measured else cand.latency_ms


#: With --measure-latency, candidates measured at most per candidate scored (they are timed in list order).
MEASURED_PER_SCORED = 4


def _choose(
    prepared: PreparedSearch, state: SearchState, records: dict, measure, progress: bool
) -> list[int]:
    """Indices of the candidates to score: the first ``top_k``, or with ``measure`` the first ``top_k``
    whose measured latency meets the target, measuring at most ``MEASURED_PER_SCORED x top_k`` of them
    (every measurement saved). The fastest candidate by the roofline estimate is measured first: when even
    it misses the target, the search stops there and names what it measured."""
    o, budget = prepared.options, prepared.budget
    candidates = prepared.enumeration.candidates
    if measure is None:
        return list(range(min(o.top_k, len(candidates))))

    def measured(index: int) -> float:
        done = records.get(("latency", index))
        if done is None:
            ms = measure(candidate_config(prepared.config, candidates[index]))
            done = {"phase": "latency", "index": index, "ms": ms}
            state.add(done)
            records[("latency", index)] = done
        return done["ms"]

    def meets(index: int) -> bool:
        return budget.latency_ms is None or measured(index) <= budget.latency_ms

    fastest = min(range(len(candidates)), key=lambda i: candidates[i].latency_ms)
    if not meets(fastest):
        raise PlanError(
            f"no candidate meets --target-latency {budget.latency_ms:g} ms on this machine: the fastest by the "
            f"estimate measures {measured(fastest):.4g} ms; raise the target, or rank by the roofline estimate "
            "(--device-profile) instead of --measure-latency"
        )
    chosen = []
    limit = MEASURED_PER_SCORED * o.top_k
    for index in tqdm(range(min(limit, len(candidates))), desc="measured latency", disable=not progress):
        if meets(index):
            chosen.append(index)
            if len(chosen) == o.top_k:
                break
    return chosen or [fastest]


def candidate_config(config, cand: Candidate):
    """The config of ``cand`` (layers of each kind taken first to last: costs do not depend on which)."""
    adapter = get_adapter(config)
    kinds = adapter.layer_kinds(config)
    kept, left = [], dict(cand.layers)
    for i, k in enumerate(kinds):
        if left.get(k, 0) > 0:
            kept.append(i)
            left[k] -= 1
    sizes = {adapter.export_keys[k]: v for k, v in cand.export_config.items() if k != "num_layers"}
    return Plan(config.model_type, {}, adapter.sized_config(config, sizes, kept)).apply_config(config)


def _distill_candidate(
    model_dir, prepared: PreparedSearch, found, entry: dict, state: SearchState, layer_metric, train
):
    """Slice the candidate from the parent and ``train(student_dir, run_dir) -> final_dir`` it (resumable);
    the distilled model, loaded."""
    from transformers import AutoModelForCausalLM

    from .slice import slice_checkpoint

    root = state.kd_dir(entry["index"])
    student, run = root / "student", root / "run"
    final = root / "final.json"
    if final.exists():
        final_dir = Path(json.loads(final.read_text())["final"])
    else:
        if not student.exists():
            plan = candidate_plan(
                prepared.config, prepared.enumeration.candidates[entry["index"]], found, layer_metric
            )
            slice_checkpoint(model_dir, plan, student, progress=False)
        final_dir = Path(train(student, run))
        _write_json(final, {"final": str(final_dir)})
    return AutoModelForCausalLM.from_pretrained(final_dir, dtype=torch.float32).eval(), final_dir


def _publish_distilled(run_root: Path, output_dir: Path, overwrite: bool, inputs, add_report) -> None:
    from ..checkpoint import atomic_output_dir

    final = Path(json.loads((run_root / "final.json").read_text())["final"])
    with atomic_output_dir(output_dir, overwrite, inputs) as tmp:
        for item in final.iterdir():
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        plan = run_root / "student" / "nemocompress_plan.json"
        if plan.exists():
            shutil.copy2(plan, tmp / plan.name)
        add_report(tmp)


def measure_decode_ms(
    config, context_length: int, batch_size: int, dtype: torch.dtype, new_tokens: int = 8
) -> float:
    """Milliseconds of one decode step of a randomly initialized model of ``config`` on this machine (the
    GPU if there is one, in ``dtype``; on a CPU in float32), after a ``context_length``-token prompt: generating ``1 + new_tokens`` tokens minus
    generating one, over ``new_tokens``; best of three. A long context makes this slow on a CPU."""
    import time

    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        dtype = (
            torch.float32
        )  # CPU bfloat16 kernels are slow or missing (grouped expert matmuls refuse some shapes)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    prompt = torch.randint(0, config.vocab_size, (batch_size, context_length), device=device)
    kwargs = dict(attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True, pad_token_id=0)

    def seconds(tokens: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    seconds(1)  # warm-up
    runs = [(seconds(1 + new_tokens), seconds(1)) for _ in range(3)]
    return 1e3 * max(min(long for long, _ in runs) - min(short for _, short in runs), 0.0) / new_tokens
