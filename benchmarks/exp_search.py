"""Does a budget search beat one-shot choices? Width-only, depth-only, search zero-shot and MiniPuzzle at ~2/3.

For each parent (SmolLM2-135M-Instruct and the reference NemotronH hybrid), at ``--target-fraction`` of its
parameters (default 2/3), four pruned models, each then given the same final distillation budget:

(a) width-only one-shot: the ``--width-configs`` width-only configurations closest to the budget (the
    search space's own width choices, all layers kept), each pruned one shot with ``api.prune`` from one
    activation-importance run (``api.importance``), the best kept by KL to the parent on the validation
    samples, as a user trying a few widths would;
(b) depth-only one-shot: the most layers that fit the budget (``num_layers``), the layers chosen by layer
    importance, ``individual`` and ``contiguous`` selection tried, the better kept by validation KL; on a
    hybrid where that drops the last attention layer, depth per layer kind (a search over layer counts
    only); where no depth-only model fits the budget, (b) is recorded as unreachable (with the reason) in
    results.json and the tables, and has no final distillation;
(c) search zero-shot: ``api.search`` (default space: --max-width-pruning 0.4, --max-depth-pruning 0.2),
    ``--top-k`` candidates ranked by KL on the validation samples through masks;
(d) MiniPuzzle: the same search with ``--kd-steps`` steps of distillation for each of the top-k before
    ranking.

Equal total KD steps: MiniPuzzle spends ``top_k * kd_steps`` distillation steps inside the search, so
(a)-(c) get that many extra steps in their final distillation: (a)-(c) train ``final_steps + top_k *
kd_steps`` steps, (d) continues its (already distilled) winner for ``final_steps``. Every run has the same
optimizer, learning rate schedule shape, batch, sequence length and data (train split of ``--data-domain``).

Data: importance, KD and the final distillation use only the train split of ``--data-domain`` (default
Shakespeare). The validation samples (search scoring, choices (a) and (b)) are the first ``--val-samples``
held-out samples of that domain; the test samples are the next ``--test-samples`` held-out samples of it
and the first ``--test-samples`` held-out samples of ``--other-domain`` (default the Python standard
library): no pruning choice and no training step ever saw them. (The reference hybrid was trained on the
train split of both domains, with the same document split.) Reported: loss and KL to the parent in
nats/token, before and after the final distillation.

Results go to ``WORKDIR/results.json`` and Markdown tables on stdout. The defaults are small for 2 shared
CPU cores (sequences of 64 tokens, batches of 4, 3 KD steps per MiniPuzzle candidate, 10 + 9 final steps):
SmolLM2 alone took about 60 minutes on 2 heavily shared cores, the (cached) reference hybrid 12 minutes.
Usage (the settings of RESULTS.md):
  python benchmarks/exp_search.py --workdir /tmp/exp_search --parents smollm2
  python benchmarks/exp_search.py --workdir /tmp/exp_search_hybrid2 --parents hybrid
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemocompress import api
from nemocompress.arch import get_adapter
from nemocompress.assets import fetch_smollm2, fetch_text
from nemocompress.data import build_samples
from nemocompress.distill import DistillConfig, distill
from nemocompress.errors import PlanError
from nemocompress.evaluate import evaluate
from nemocompress.importance.selection import layer_ranking
from nemocompress.importance.weights import random_scores
from nemocompress.prune.budget import Budget
from nemocompress.prune.cost import model_cost
from nemocompress.prune.minitron import plan_from_targets
from nemocompress.prune.plan import Plan
from nemocompress.prune.search import SearchOptions, prepare_search
from nemocompress.reference import reference_hybrid

METHODS = ("width", "depth", "search", "minipuzzle")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/exp_search")
    p.add_argument(
        "--parents", default="smollm2,hybrid", help="comma list of smollm2, hybrid, checkpoint dirs"
    )
    p.add_argument("--hybrid-max-minutes", type=float, default=None, help="reference_hybrid(max_minutes)")
    p.add_argument("--target-fraction", type=float, default=2 / 3)
    p.add_argument("--data-domain", default="shakespeare", help="fetch_text name or a text file/folder")
    p.add_argument("--other-domain", default="python-stdlib", help="fetch_text name or a text file/folder")
    p.add_argument("--calib-samples", type=int, default=8, help="activation calibration samples")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence everywhere")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--val-samples", type=int, default=8)
    p.add_argument("--test-samples", type=int, default=16)
    p.add_argument("--width-configs", type=int, default=3)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--kd-steps", type=int, default=3)
    p.add_argument("--final-steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-4, help="peak lr of every distillation (search KD too)")
    return p.parse_args(argv)


def count_params(config) -> int:
    return model_cost(config, 4096, 1, torch.bfloat16).params


def corpus(domain: str) -> Path:
    """A text file or folder, or a corpus name of ``nemocompress.assets.fetch_text``."""
    return Path(domain) if Path(domain).exists() else fetch_text(domain)


def heldout(tokenizer, domain: str, seq_len: int, start: int, num: int) -> torch.Tensor:
    """Held-out samples ``[start, start + num)`` of ``domain`` (the split no trainer or calibration sees)."""
    ids = build_samples(tokenizer, corpus(domain), seq_len, num_heldout=start + num).heldout
    if len(ids) < start + num:
        raise SystemExit(f"{domain}: only {len(ids)} held-out samples of {seq_len} tokens")
    return ids[start:]


def loss_kl(model, ids, parent, tokenizer) -> dict:
    report = evaluate(model, ids, tokenizer, reference=parent, progress=False)
    return {"loss": report.loss, "kl": report.kl}


def load(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def fitting_depth(config, target: int, found, selection: str, keep_max: int) -> int | None:
    """The most layers (at most ``keep_max``) that fit ``target`` params when ``selection`` picks which by
    layer importance, as ``api.prune --export-config '{"num_layers": N}'`` would; None when none fits
    (e.g. every fitting choice drops the last attention layer of a hybrid)."""
    adapter = get_adapter(config)
    axes = [(a.name, a.size) for a in adapter.axes(config)]
    for keep in range(keep_max, 0, -1):
        unit = random_scores(axes)  # widths are all kept; only the layer ranking matters
        try:
            unit["layers"] = layer_ranking(
                found.layer_scores, adapter.num_layers(config), keep, "nmse", selection
            )
            plan = plan_from_targets(config, {"num_layers": keep}, unit)
        except (PlanError, KeyError):  # drops the last attention layer; a window that was not scored
            continue
        if count_params(plan.apply_config(config)) <= target:
            return keep
    return None


def first_layers(config, keep: int):
    """``config`` with its first ``keep`` layers (costs the same as any ``keep`` of a uniform model)."""
    adapter = get_adapter(config)
    return Plan(config.model_type, {}, adapter.sized_config(config, {}, list(range(keep)))).apply_config(
        config
    )


def resolve_parent(name: str, hybrid_max_minutes: float | None = None) -> tuple[str, Path]:
    """(name, checkpoint directory) of ``smollm2``, ``hybrid`` or any checkpoint directory (the tests use a
    zoo model)."""
    if Path(name).is_dir():
        return Path(name).name, Path(name)
    if name == "smollm2":
        return name, Path(fetch_smollm2())
    if name == "hybrid":
        return name, Path(reference_hybrid(max_minutes=hybrid_max_minutes, progress=False))
    raise SystemExit(f"unknown parent {name!r}: use smollm2 or hybrid")


def run_parent(name: str, parent_dir: Path, args, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data = corpus(args.data_domain)
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    parent = load(parent_dir)
    config = parent.config
    total = count_params(config)
    target = int(args.target_fraction * total)
    val = heldout(tokenizer, args.data_domain, args.seq_len, 0, args.val_samples)
    tests = {
        args.data_domain: heldout(
            tokenizer, args.data_domain, args.seq_len, args.val_samples, args.test_samples
        ),
        args.other_domain: heldout(tokenizer, args.other_domain, args.seq_len, 0, args.test_samples),
    }
    timings, choices, pruned, unreachable = {}, {}, {}, {}
    budget = Budget(params=target)

    # one calibration for (a) and (b): unit scores and layer scores of windows of 1 and of the depth drop
    began = time.perf_counter()
    n_layers = get_adapter(config).num_layers(config)
    # windows for contiguous selection: every size on a small model, else the drop of a uniform-layer model
    if n_layers <= 12:
        windows = tuple(range(1, n_layers))
    else:
        uniform = max(k for k in range(1, n_layers) if count_params(first_layers(config, k)) <= target)
        windows = (1, n_layers - uniform)
    options = api.ImportanceOptions(samples=args.calib_samples, seq_len=args.seq_len)
    scores_dir = work / "importance"
    found = api.importance(parent_dir, data, scores_dir, options, windows, overwrite=True, progress=False)
    timings["importance_s"] = time.perf_counter() - began

    def one_shot(tag: str, export: dict, opts) -> dict:
        out = work / tag
        api.prune(parent_dir, out, export, opts, scores=scores_dir, overwrite=True, progress=False)
        model = load(out)
        row = {"tag": tag, "export": export, "params": count_params(model.config)}
        row["val_kl"] = loss_kl(model, val, parent, tokenizer)["kl"]
        print(name, json.dumps(row), flush=True)
        return row

    # (a) width-only: the width configurations of the search space closest to the budget, all layers kept
    began = time.perf_counter()
    widths = prepare_search(config, budget, SearchOptions(max_depth_pruning=0.0, top_k=args.width_configs))
    rows = [
        one_shot(f"width{i}", {k: v for k, v in c.export_config.items() if k != "num_layers"}, options)
        for i, c in enumerate(widths.top)
    ]
    choices["width"] = rows
    pruned["width"] = work / min(rows, key=lambda r: r["val_kl"])["tag"]
    timings["width_s"] = time.perf_counter() - began

    # (b) depth-only: the most layers that fit, chosen by layer importance, individually or contiguous
    began = time.perf_counter()
    rows = []
    for selection in ("individual", "contiguous"):
        keep = fitting_depth(config, target, found, selection, n_layers - 1)
        if keep is None:
            print(name, f"depth-only with {selection} selection: no layer count fits", flush=True)
            continue
        opts = api.ImportanceOptions(
            samples=args.calib_samples, seq_len=args.seq_len, layer_selection=selection
        )
        rows.append(one_shot(f"depth_{selection}", {"num_layers": keep}, opts))
    if not rows:  # a hybrid: per kind (the search's depth, which keeps the last attention layer)
        skip = tuple(k for k in get_adapter(config).export_keys if k != "num_layers")
        depth_options = SearchOptions(
            max_depth_pruning=0.75, hparams_to_skip=skip, divisors={"num_layers": 1}, top_k=2, score="kl",
            score_samples=args.val_samples, seq_len=args.seq_len, batch_size=args.batch_size,
        )  # fmt: skip
        try:
            result = api.search(
                parent_dir, work / "depth_per_kind", budget, data, depth_options, options, scores=scores_dir,
                overwrite=True, progress=False,
            )  # fmt: skip
        except PlanError as e:  # a finding, not a crash: depth alone cannot reach the budget
            unreachable["depth"] = str(e)
            rows.append({"tag": "depth_per_kind", "unreachable": str(e)})
            print(name, json.dumps(rows[-1]), flush=True)
        else:
            for e in result.scored:
                row = {
                    "tag": "depth_per_kind",
                    "layers": e["layers"],
                    "params": e["params"],
                    "val_kl": e["score"],
                }
                row["winner"] = e is result.winner
                rows.append(row)
                print(name, json.dumps(row), flush=True)
            rows.sort(key=lambda r: not r["winner"])
    choices["depth"] = rows
    if "depth" not in unreachable:
        pruned["depth"] = work / min(rows, key=lambda r: r["val_kl"])["tag"]
    timings["depth_s"] = time.perf_counter() - began

    # (c), (d): the search, zero-shot and with MiniPuzzle KD
    for method, kd in (("search", 0), ("minipuzzle", args.kd_steps)):
        began = time.perf_counter()
        search_options = SearchOptions(
            top_k=args.top_k, score="kl", score_samples=args.val_samples, seq_len=args.seq_len,
            batch_size=args.batch_size, kd_steps=kd, kd_lr=args.lr,
        )  # fmt: skip
        result = api.search(
            parent_dir, work / method, budget, data, search_options, options, scores=scores_dir,
            overwrite=True, progress=False,
        )  # fmt: skip
        timings[f"{method}_s"] = time.perf_counter() - began
        choices[method] = [
            {k: e.get(k) for k in ("index", "export_config", "layers", "params", "score", "score_kd")}
            for e in result.scored
        ]
        choices[f"{method}_winner"] = result.winner["index"]
        pruned[method] = work / method
        print(name, method, "winner", json.dumps(choices[method][result.scored.index(result.winner)]))
        print(result.table(), flush=True)

    # the final distillation: equal total KD steps
    extra = args.top_k * args.kd_steps
    evals, params = {}, {"parent": total, "target": target}
    for domain, ids in tests.items():
        evals[f"{domain}/parent"] = {"loss": evaluate(parent, ids, tokenizer, progress=False).loss, "kl": 0.0}
    for method in (m for m in METHODS if m in pruned):  # an unreachable method has no model to distill
        steps = args.final_steps + (0 if method == "minipuzzle" else extra)
        began = time.perf_counter()
        cfg = DistillConfig(
            teacher=str(parent_dir), student=str(pruned[method]), data=str(data),
            output_dir=str(work / f"final_{method}"), steps=steps, seq_len=args.seq_len,
            batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10, warmup_steps=max(1, steps // 10),
            eval_every=0, eval_samples=1, save_every=0, overwrite=True, progress=False,
        )  # fmt: skip
        final = distill(cfg).final_dir
        timings[f"final_{method}_s"] = time.perf_counter() - began
        before, after = load(pruned[method]), load(final)
        params[method] = count_params(before.config)
        for domain, ids in tests.items():
            evals[f"{domain}/{method}"] = {
                "steps": steps,
                "before": loss_kl(before, ids, parent, tokenizer),
                "after": loss_kl(after, ids, parent, tokenizer),
            }
            print(name, domain, method, json.dumps(evals[f"{domain}/{method}"]), flush=True)
    return {
        "params": params,
        "choices": choices,
        "evals": evals,
        "timings": timings,
        "unreachable": unreachable,
    }


def markdown(name: str, r: dict, args) -> str:
    p = r["params"]
    lines = [
        f"**{name}**: {p['parent'] / 1e6:.2f}M params, target {p['target'] / 1e6:.2f}M",
        "",
        "| method | params | final KD steps | domain | loss before | loss after | KL before | KL after |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for domain in (args.data_domain, args.other_domain):
        e = r["evals"][f"{domain}/parent"]
        lines.append(f"| parent | {p['parent'] / 1e6:.2f}M | - | {domain} | {e['loss']:.3f} | - | 0 | - |")
    for method in (m for m in METHODS if m in p):
        for domain in (args.data_domain, args.other_domain):
            e = r["evals"][f"{domain}/{method}"]
            b, a = e["before"], e["after"]
            lines.append(
                f"| {method} | {p[method] / 1e6:.2f}M | {e['steps']} | {domain} | {b['loss']:.3f} | "
                f"{a['loss']:.3f} | {b['kl']:.3f} | {a['kl']:.3f} |"
            )
    for method, why in r.get("unreachable", {}).items():
        lines += ["", f"No {method} row: {method}-only cannot reach the target ({why})."]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = {"args": vars(args)}
    path = work / "results.json"
    for name in args.parents.split(","):
        name, parent_dir = resolve_parent(name, args.hybrid_max_minutes)
        began = time.perf_counter()
        results[name] = run_parent(name, Path(parent_dir), args, work / name)
        results[name]["timings"]["total_s"] = time.perf_counter() - began
        path.write_text(json.dumps(results, indent=1, default=str))
        print(markdown(name, results[name], args), flush=True)


if __name__ == "__main__":
    main()
