"""`compress` at two sizes with the same KD budget: SmolLM2-135M to ~2/3 and ~1/2 of its parameters.

For each target, one `nemocompress compress` run (activation importance and the budget search on the train
split of prose, width only; then the same number of KD steps from the parent on the same prose tokens),
then the parent and each compressed model are evaluated by `nemocompress eval` on held-out samples of two
domains: prose (Shakespeare, the training domain) and code (the Python standard library sources, never
trained on). Loss in nats per token, bits per byte, KL to the parent. Results go to WORKDIR/results.json and
a Markdown table on stdout. Runs resume (`--resume`): kill it and start it again.

Usage (long on a CPU; -m slow territory):
  python benchmarks/exp_compress.py --workdir /tmp/exp_compress --kd-steps 200
  python benchmarks/exp_compress.py --workdir /tmp/z --model ZOO_DIR --prose T.txt --code T.txt --targets 90K 60K
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nemocompress import api
from nemocompress.report import format_table, human


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", default=None, help="default: SmolLM2-135M from the cache")
    p.add_argument("--prose", default=None, help="training domain (default Shakespeare)")
    p.add_argument("--code", default=None, help="second domain (default the Python stdlib)")
    p.add_argument("--targets", nargs="+", default=["90M", "67M"], help="~2/3 and ~1/2 of 134.5M")
    p.add_argument("--kd-steps", type=int, default=200)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--samples", type=int, default=32, help="held-out samples per domain")
    args = p.parse_args(argv)
    from nemocompress.assets import fetch_smollm2, fetch_text

    work = Path(args.workdir)
    model = args.model or str(fetch_smollm2())
    domains = {
        "prose": args.prose or fetch_text("shakespeare"),
        "code": args.code or fetch_text("python-stdlib"),
    }
    models = {"parent": model}
    for target in args.targets:
        out = work / f"compress-{target}"
        api.compress(
            out, resume=True, model=model, data=domains["prose"], target_params=target, kd_steps=args.kd_steps,
            seq_len=args.seq_len, kd_lr=1e-3, eval_samples=args.samples, progress=False,
        )  # fmt: skip
        models[f"{target} pruned"] = str(out / "stages" / "03-prune")
        models[f"{target} distilled"] = str(out / "model")
    results = {}
    for name, path in models.items():
        for domain, data in domains.items():
            reference = None if name == "parent" else model
            r = api.eval_model(
                path, data, reference, samples=args.samples, seq_len=args.seq_len, progress=False
            )
            results[f"{name}/{domain}"] = r.metrics
    (work / "results.json").write_text(json.dumps({"kd_steps": args.kd_steps, "results": results}, indent=1))
    rows = []
    for name in models:
        m = {d: results[f"{name}/{d}"] for d in domains}
        row = [name, human(m["prose"]["params"])]
        for d in domains:
            kl = m[d].get("kl")
            row += [f"{m[d]['loss']:.3f}", f"{m[d]['bits_per_byte']:.3f}", "-" if kl is None else f"{kl:.3f}"]
        rows.append(row)
    headers = ["model", "params"] + [f"{d} {k}" for d in domains for k in ("loss", "bpb", "KL")]
    print(format_table(rows, headers))


if __name__ == "__main__":
    main()
