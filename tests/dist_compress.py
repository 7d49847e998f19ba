"""Run by test_compress under ``torchrun``: ``dist_compress.py RECORD_DIR ARGS...`` runs ``nemocompress ARGS`` on
this process and writes ``RECORD_DIR/rank{N}.json``: the compress stages this process ran, the calibration
sequences it scored (its shard of the samples) and the gloo threads still running once it is done (none: its
process group was really destroyed).
"""

import functools
import json
import os
import sys
from pathlib import Path

from nemocompress import compress
from nemocompress.cli import main
from nemocompress.importance.activation import ActivationCollector

RECORD = {"stages": [], "calibrated": 0}


def gloo_threads() -> list[str]:
    """Names of this process's native threads that belong to gloo (Linux: /proc)."""
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
    return [n for n in names if "gloo" in n]


def _recorded(name: str):
    real = getattr(compress, name)

    @functools.wraps(real)
    def run(recipe, stages, progress):
        RECORD["stages"].append(name)
        return real(recipe, stages, progress)

    return run


def _counting(real):
    @functools.wraps(real)
    def collect(self, batches, *args, **kwargs):
        batches = list(batches)
        RECORD["calibrated"] += sum(len(b) for b in batches)
        return real(self, batches, *args, **kwargs)

    return collect


if __name__ == "__main__":
    record_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    for stage in ("_importance", "_plan", "_prune", "_distill", "_eval"):
        setattr(compress, stage, _recorded(stage))
    ActivationCollector.collect = _counting(ActivationCollector.collect)
    code = main(argv)
    RECORD["gloo_threads"] = gloo_threads()
    (record_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps(RECORD))
    sys.exit(code)
