"""Run by test_trainer in a subprocess: ``run_distill.py CONFIG.yaml [--kill-in-save N]``.

With ``--kill-in-save N`` the process SIGKILLs itself during its N-th checkpoint save, after accelerate
wrote the files and before the directory is renamed into place (a torn checkpoint). Under ``torchrun``
it runs one rank of a multi-process job.
"""

import argparse
import os
import signal

from accelerate import Accelerator

from nemocompress.distill import DistillConfig, distill

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
    distill(DistillConfig.from_yaml(args.config))
