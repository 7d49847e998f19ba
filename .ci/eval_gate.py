"""CI regression gate over a fixed model size: prune a pinned zoo model, evaluate it, gate on a baseline.

The same three commands a user puts in CI (each printed before it runs):

  nemocompress zoo nemotron_h-hybrid -o W/parent --text W/text.txt
  nemocompress prune W/parent -o W/pruned --export-config .ci/eval_export.json --data W/text.txt \\
      --samples 16 --seq-len 128
  nemocompress eval W/pruned --reference W/parent --data W/text.txt --samples 16 --seq-len 128 \\
      -o W/report.json --baseline .ci/eval_baseline.json --max-regression 0.02 --tolerance top1_agreement=0.05

Everything is offline and deterministic on CPU: the zoo model's weights and text are seeded, and the gate
leaves out throughput (machine-dependent). Exit status: that of the failing command (eval: 3 when a
metric regressed, 2 for bad input), else 0.

  python .ci/eval_gate.py                      # the CI step (about 20 s on 2 cores)
  python .ci/eval_gate.py --write-baseline     # after an intended change: rewrite the baseline, commit it
  python .ci/eval_gate.py -- --importance random   # extra prune flags (a worse model: exits 3)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nemocompress.cli import main  # noqa: E402

BASELINE = ROOT / ".ci" / "eval_baseline.json"
EXPORT = ROOT / ".ci" / "eval_export.json"
ZOO_NAME = "nemotron_h-hybrid"
DATA_FLAGS = ["--samples", "16", "--seq-len", "128"]
GATE_FLAGS = ["--max-regression", "0.02", "--tolerance", "top1_agreement=0.05"]


def commands(work: Path, baseline: Path | None, prune_flags: list[str]) -> list[list[str]]:
    """The CLI argument lists of the gate, in order (``baseline`` None: write the report only)."""
    text, parent, pruned = str(work / "text.txt"), str(work / "parent"), str(work / "pruned")
    evaluate = [
        "eval",
        pruned,
        "--reference",
        parent,
        "--data",
        text,
        *DATA_FLAGS,
        "-o",
        str(work / "report.json"),
    ]
    return [
        ["zoo", ZOO_NAME, "-o", parent, "--text", text],
        [
            "prune",
            parent,
            "-o",
            pruned,
            "--export-config",
            str(EXPORT),
            "--data",
            text,
            *DATA_FLAGS,
            *prune_flags,
        ],
        evaluate + ([] if baseline is None else ["--baseline", str(baseline), *GATE_FLAGS]),
    ]


def run(work: Path, baseline: Path | None = BASELINE, prune_flags: list[str] = ()) -> int:
    """Run the gate in ``work``; returns the first non-zero exit status, else 0."""
    for argv in commands(work, baseline, list(prune_flags)):
        print(f"$ nemocompress {shlex.join(argv)}", flush=True)
        status = main(argv)
        if status:
            return status
    return 0


def _main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-baseline", action="store_true", help=f"write {BASELINE.name} instead of gating")
    p.add_argument("prune_flags", nargs="*", help="extra `nemocompress prune` flags (after --)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval-gate-") as tmp:
        work = Path(tmp)
        status = run(work, None if args.write_baseline else BASELINE, args.prune_flags)
        if status == 0 and args.write_baseline:
            BASELINE.write_text((work / "report.json").read_text().replace(str(work), "W"))  # no temp paths
            print(f"wrote {BASELINE}")
    return status


if __name__ == "__main__":
    sys.exit(_main())
