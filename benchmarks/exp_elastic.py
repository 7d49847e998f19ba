"""One elastic run against separate prune + distill at equal training tokens, per size, zero-shot sliced.

For each parent (SmolLM2-135M-Instruct and the reference NemotronH hybrid) and the sizes 0.5, 0.75 and
1.0 of its parameters (``--budgets``; the full model is always added):

(A) elastic: ONE ``api.elastic_train`` run (budgets 0.5, 0.75 and the full model) of ``--steps`` optimizer
    steps, stage 1 on ``--stage1-seq-len``-token sequences for ``--stage1-fraction`` of the steps, stage 2
    on ``--seq-len`` tokens; then every budget sliced zero-shot (``api.elastic_slice(all_budgets=True)``);
(B) separate: for each budget below 1.0, the parent sliced to the SAME architecture the elastic run chose
    (its ``elastic/elastic.json`` ``sizes``, the ModelOpt export keys, with the elastic space's units and
    layers: the same activation importance, computed again by ``api.importance`` with the same options and
    data), then ``distill`` from the parent; size 1.0 of (B) is the parent itself. ``api.prune`` to the same
    export sizes with those scores is run too and recorded (``api_prune``: its params and the axes where
    it keeps other units): on a hybrid its ``num_layers`` selection can drop the only layer of a kind (the
    reference's MoE layer), which the elastic layer order keeps, so it is not the same architecture;
(C) untrained: (B) before its distillation (the parent for 1.0).

Equal training tokens: the elastic run sees ``steps x batch x (f x stage1_seq_len + (1 - f) x seq_len)``
tokens (f = stage1 fraction); each of the separate distillations gets that total split evenly, at
``--seq-len`` tokens per sequence and the same batch: ``separate_steps = elastic tokens / (runs x batch x
seq_len)``, which must be a whole number (the script refuses settings where it is not). Same peak lr and
min lr (the elastic run's lr is the parent's), same KD loss (KL), same warmup rule (DistillConfig's
default, as the elastic stages use), same seed.

Data: importance and all training on the train split of ``--data-domain`` (Shakespeare); reported: loss
and KL to the parent in nats/token on ``--test-samples`` held-out samples of it and of ``--other-domain``
(the Python standard library), through :func:`nemocompress.evaluate.evaluate`.

Storage: bytes of the elastic deployment (RUN's ``*.safetensors`` + ``elastic/routers.safetensors``)
against the three separate checkpoints (each budget's distilled model + the parent's safetensors).

A finished elastic RUN in WORKDIR is reused (``elastic_train(resume=True)``; ``--fresh`` retrains it), so
an interrupted experiment restarts after its elastic run; ``timings.elastic_steps_s`` is the sum of the
RUN's recorded step times either way. ``--no-api-prune-check`` skips the ``api.importance`` +
``api.prune`` cross-check (one more calibration, minutes on SmolLM2).

Results go to ``WORKDIR/results.json`` and Markdown tables on stdout. Usage (the settings of RESULTS.md):
  python benchmarks/exp_elastic.py --workdir /tmp/exp_elastic --parents hybrid,smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from safetensors import safe_open
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_search import corpus, count_params, heldout, load, loss_kl, resolve_parent  # noqa: E402

from nemocompress import api  # noqa: E402
from nemocompress.checkpoint import load_config  # noqa: E402
from nemocompress.distill import DistillConfig, distill  # noqa: E402
from nemocompress.elastic import ElasticSpace, load_state  # noqa: E402
from nemocompress.evaluate import evaluate  # noqa: E402
from nemocompress.prune.slice import slice_checkpoint  # noqa: E402

METHODS = ("elastic", "separate", "untrained")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/exp_elastic")
    p.add_argument(
        "--parents", default="hybrid,smollm2", help="comma list of smollm2, hybrid, checkpoint dirs"
    )
    p.add_argument("--budgets", default="0.5,0.75", help="fractions of the parent's params (1.0 is added)")
    p.add_argument("--data-domain", default="shakespeare", help="fetch_text name or a text file/folder")
    p.add_argument("--other-domain", default="python-stdlib", help="fetch_text name or a text file/folder")
    p.add_argument("--calib-samples", type=int, default=16, help="activation calibration samples")
    p.add_argument("--calib-seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=64, help="elastic optimizer steps, both stages")
    p.add_argument("--seq-len", type=int, default=64, help="stage 2 and the separate distillations")
    p.add_argument("--stage1-seq-len", type=int, default=32)
    p.add_argument("--stage1-fraction", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4, help="peak lr of the parent (elastic) and the students")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--router-lr", type=float, default=1e-3)
    p.add_argument("--max-width-pruning", type=float, default=0.6, help="of the elastic space")
    p.add_argument("--max-depth-pruning", type=float, default=0.5, help="of the elastic space")
    p.add_argument(
        "--no-api-prune-check", action="store_true",
        help="skip the api.importance + api.prune cross-check of (B)'s units (one more calibration)",
    )  # fmt: skip
    p.add_argument(
        "--fresh",
        action="store_true",
        help="retrain the elastic RUN in WORKDIR (default: reuse a finished one)",
    )
    p.add_argument("--test-samples", type=int, default=16)
    p.add_argument("--test-seq-len", type=int, default=64)
    return p.parse_args(argv)


def token_plan(args, runs: int) -> dict:
    """Tokens of the elastic run and the steps of each of ``runs`` separate distillations that match them."""
    first = round(args.stage1_fraction * args.steps)
    elastic = args.batch_size * (first * args.stage1_seq_len + (args.steps - first) * args.seq_len)
    per_run, rest = divmod(elastic, runs * args.batch_size * args.seq_len)
    if rest or per_run < 1:
        raise SystemExit(
            f"{elastic} elastic tokens do not split into {runs} whole distillations of batch "
            f"{args.batch_size} "
            f"x {args.seq_len} tokens; change --steps"
        )
    return {"elastic_tokens": elastic, "separate_steps": per_run,
            "separate_tokens": runs * per_run * args.batch_size * args.seq_len}  # fmt: skip


def safetensors_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def stored_dtype(folder: Path) -> str:
    """The dtype of the first tensor of the first safetensors file in ``folder``."""
    with safe_open(str(sorted(Path(folder).glob("*.safetensors"))[0]), "pt") as f:
        return str(f.get_slice(next(iter(f.keys()))).get_dtype())


def api_prune_check(parent_dir: Path, work: Path, label: str, sizes: dict, options, plan) -> dict:
    """``api.prune`` of the parent to ``sizes`` with the saved scores: its params and where it keeps other
    units or layers than ``plan`` (the elastic space's)."""
    other = api.prune(
        parent_dir, work / f"api-prune-{label}", sizes, options, scores=work / "importance", overwrite=True,
        progress=False,
    ).plan  # fmt: skip
    differ = sorted(k for k in set(plan.kept) | set(other.kept) if plan.kept.get(k) != other.kept.get(k))
    return {"params": count_params(other.apply_config(load_config(parent_dir))), "differs_on": differ,
            "layers": other.kept.get("layers"), "elastic_layers": plan.kept.get("layers")}  # fmt: skip


def run_parent(name: str, parent_dir: Path, args, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data = corpus(args.data_domain)
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    parent = load(parent_dir)
    total = count_params(parent.config)
    budgets = [b for b in args.budgets.split(",") if b.strip() and float(b) < 1]
    tokens = token_plan(args, len(budgets))
    tests = {
        args.data_domain: heldout(tokenizer, args.data_domain, args.test_seq_len, 0, args.test_samples),
        args.other_domain: heldout(tokenizer, args.other_domain, args.test_seq_len, 0, args.test_samples),
    }
    options = api.ImportanceOptions(samples=args.calib_samples, seq_len=args.calib_seq_len)
    timings = {}

    # (A) one elastic run, every budget sliced zero-shot
    began = time.perf_counter()
    run = work / "elastic_run"
    result = api.elastic_train(
        api.ElasticConfig(
            parent=str(parent_dir), budgets=budgets, data=str(data), output_dir=str(run), steps=args.steps,
            seq_len=args.seq_len, stage1_seq_len=args.stage1_seq_len, stage1_fraction=args.stage1_fraction,
            batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr, router_lr=args.router_lr,
            max_width_pruning=args.max_width_pruning, max_depth_pruning=args.max_depth_pruning,
            eval_every=0, eval_samples=1, save_every=0, overwrite=args.fresh, resume=not args.fresh,
            progress=False,
        ),
        options,
    )  # fmt: skip
    timings["elastic_train_s"] = time.perf_counter() - began
    print(result.table(), flush=True)
    began = time.perf_counter()
    sliced = api.elastic_slice(run, work / "elastic_sliced", all_budgets=True, overwrite=True, progress=False)
    timings["elastic_slice_s"] = time.perf_counter() - began
    state = load_state(run)
    space = ElasticSpace.from_dict(load_config(run), state["space"])
    rows = {r["label"]: r for r in state["budgets"]}
    models = {("elastic", s.label): s.output_dir for s in sliced}
    steps = [r for r in result.records if "tokens_per_s" in r]
    losses = [r["loss"] for r in steps]
    timings["elastic_steps_s"] = sum(r["step_s"] for r in steps)  # also when a finished RUN was reused
    budget_steps = {label: sum(r["budget"] == label for r in steps) for label in rows}

    # (B) and (C): the same architectures pruned from the parent with the same importance, then distilled
    scores = work / "importance"
    if not args.no_api_prune_check:
        began = time.perf_counter()
        api.importance(parent_dir, data, scores, options, block_sizes=(1,), overwrite=True, progress=False)
        timings["importance_s"] = time.perf_counter() - began
    api_prune = {}
    for label in budgets:
        pruned = work / f"pruned-{label}"
        began = time.perf_counter()
        # the elastic space's own units and layers of this budget, from the untrained parent
        plan = space.plan(tuple(rows[label]["choice"]))
        slice_checkpoint(parent_dir, plan, pruned, overwrite=True, progress=False)
        if args.no_api_prune_check:
            api_prune[label] = None
        else:  # api.prune to the same export sizes (same scores): which units or layers it keeps instead
            api_prune[label] = api_prune_check(parent_dir, work, label, rows[label]["sizes"], options, plan)
        timings[f"prune_{label}_s"] = time.perf_counter() - began
        began = time.perf_counter()
        final = distill(
            DistillConfig(
                teacher=str(parent_dir), student=str(pruned), data=str(data),
                output_dir=str(work / f"kd-{label}"),
                steps=tokens["separate_steps"], seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                min_lr=args.min_lr, kd_loss="kl", eval_every=0, eval_samples=1, save_every=0, overwrite=True,
                progress=False,
            )
        ).final_dir  # fmt: skip
        timings[f"distill_{label}_s"] = time.perf_counter() - began
        models[("untrained", label)], models[("separate", label)] = pruned, final
    models[("untrained", "1.0")] = models[("separate", "1.0")] = parent_dir

    began = time.perf_counter()
    evals = {}
    for domain, ids in tests.items():
        evals[f"{domain}/parent"] = {"loss": evaluate(parent, ids, tokenizer, progress=False).loss, "kl": 0.0}
        for (method, label), path in models.items():
            if path == parent_dir:
                evals[f"{domain}/{method}/{label}"] = evals[f"{domain}/parent"]
                continue
            evals[f"{domain}/{method}/{label}"] = loss_kl(load(path), ids, parent, tokenizer)
            print(name, domain, method, label, json.dumps(evals[f"{domain}/{method}/{label}"]), flush=True)
    timings["eval_s"] = time.perf_counter() - began

    params = {f"{m}/{label}": count_params(load_config(p)) for (m, label), p in models.items()}
    routers = run / "elastic" / "routers.safetensors"
    separate = [models[("separate", label)] for label in budgets] + [parent_dir]
    storage = {
        "elastic_bytes": safetensors_bytes(run) + routers.stat().st_size,
        "elastic_model_bytes": safetensors_bytes(run),
        "routers_bytes": routers.stat().st_size,
        "separate_bytes": sum(safetensors_bytes(p) for p in separate),
        "separate_each": {str(p): safetensors_bytes(p) for p in separate},
        "dtypes": {
            "elastic": stored_dtype(run),
            "separate": stored_dtype(separate[0]),
            "parent": stored_dtype(parent_dir),
        },
    }
    storage["ratio"] = storage["elastic_bytes"] / storage["separate_bytes"]
    return {
        "params": {"parent": total, **params}, "budgets": state["budgets"], "tokens": tokens,
        "api_prune": api_prune, "budget_steps": budget_steps, "evals": evals, "storage": storage,
        "timings": timings,
        "elastic_train_loss": {"last": losses[-1] if losses else None, "nan": any(x != x for x in losses)},
    }  # fmt: skip


def markdown(name: str, r: dict, args) -> str:
    p, t, s = r["params"], r["tokens"], r["storage"]
    lines = [
        f"**{name}**: {p['parent'] / 1e6:.2f}M params; elastic {args.steps} steps = "
        f"{t['elastic_tokens']:,} tokens; "
        f"separate {t['separate_steps']} steps per size = {t['separate_tokens']:,} tokens in all",
        "",
        "| budget | chosen architecture | params (vs target) | elastic steps at it |",
        "|---|---|---:|---:|",
    ]
    for b in r["budgets"]:
        arch = ", ".join(f"{k} {v}" for k, v in b["sizes"].items())
        lines.append(
            f"| {b['label']} | {arch} | {b['params'] / 1e6:.2f}M ({b['error']:+.1%}) | "
            f"{r['budget_steps'][b['label']]} |"
        )
    lines += [
        "",
        "| size | domain | (A) elastic loss | (B) separate loss | (C) untrained loss | (A) KL | (B) KL "
        "| (C) KL |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b in r["budgets"]:
        for domain in (args.data_domain, args.other_domain):
            e = {m: r["evals"][f"{domain}/{m}/{b['label']}"] for m in METHODS}
            lines.append(
                f"| {b['label']} | {domain} | "
                + " | ".join(f"{e[m]['loss']:.3f}" for m in METHODS)
                + " | "
                + " | ".join(f"{e[m]['kl']:.3f}" for m in METHODS)
                + " |"
            )
    lines += [
        "",
        f"Storage: elastic {s['elastic_bytes'] / 1e6:.1f} MB (model {s['elastic_model_bytes'] / 1e6:.1f} MB"
        f" + routers {s['routers_bytes'] / 1e3:.1f} kB; {s['dtypes']['elastic']}) vs separate "
        f"{s['separate_bytes'] / 1e6:.1f} MB "
        f"(distilled {s['dtypes']['separate']}, parent {s['dtypes']['parent']}): ratio {s['ratio']:.3f}",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["args"] = vars(args)
    for name in args.parents.split(","):
        name, parent_dir = resolve_parent(name)
        began = time.perf_counter()
        results[name] = run_parent(name, parent_dir, args, work / name)
        results[name]["timings"]["total_s"] = time.perf_counter() - began
        path.write_text(json.dumps(results, indent=1, default=str))
        print(markdown(name, results[name], args), flush=True)


if __name__ == "__main__":
    main()
