"""Run by test_train in a subprocess: ``run_elastic.py CONFIG.yaml [--kill-in-save N]``.

Trains with seeded random importance scores (no calibration). With ``--kill-in-save N`` the process
SIGKILLs itself during its N-th checkpoint save (see ``helpers.die_in_save``). Under ``torchrun`` it runs
one rank of a multi-process job.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import die_in_save, seeded_scores  # noqa: E402

from nemocompress.api import end_processes  # noqa: E402
from nemocompress.elastic import ElasticConfig, train_elastic  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--kill-in-save", type=int, default=None)
    args = parser.parse_args()
    if args.kill_in_save is not None:
        die_in_save(args.kill_in_save)
    config = ElasticConfig.from_yaml(args.config)
    train_elastic(config, lambda: seeded_scores(config.parent))
    end_processes()
