"""Run by test_trainer in a subprocess: ``run_distill.py CONFIG.yaml [--kill-in-save N]``.

With ``--kill-in-save N`` the process SIGKILLs itself during its N-th checkpoint save, after accelerate
wrote the files and before the directory is renamed into place (a torn checkpoint). Under ``torchrun``
it runs one rank of a multi-process job.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import die_in_save  # noqa: E402

from nemocompress.distill import DistillConfig, distill  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--kill-in-save", type=int, default=None)
    args = parser.parse_args()
    if args.kill_in_save is not None:
        die_in_save(args.kill_in_save)
    distill(DistillConfig.from_yaml(args.config))
