"""Run by test_train in a subprocess: ``run_elastic.py CONFIG.yaml [--kill-in-save N]``.

Trains with seeded random importance scores (no calibration). With ``--kill-in-save N`` the process
SIGKILLs itself during its N-th checkpoint save, after accelerate wrote the files and before the directory
is renamed into place. Under ``torchrun`` it runs one rank of a multi-process job.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import seeded_scores  # noqa: E402

from nemocompress.api import end_processes  # noqa: E402
from nemocompress.elastic import ElasticConfig, train_elastic  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--kill-in-save", type=int, default=None)
    args = parser.parse_args()
    if args.kill_in_save is not None:
        save_state, calls = Accelerator.save_state, []

        def save_then_die(self, *a, **kw):
            result = save_state(self, *a, **kw)
            calls.append(1)
            if len(calls) == args.kill_in_save:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        Accelerator.save_state = save_then_die
    config = ElasticConfig.from_yaml(args.config)
    train_elastic(config, lambda: seeded_scores(config.parent))
    end_processes()
