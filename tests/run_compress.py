"""Run by test_compress in a subprocess: ``run_compress.py STAGE ARGS...`` runs ``nemocompress ARGS`` and
SIGKILLs itself in the middle of STAGE (``01-importance`` ... ``05-eval``; ``none``: no kill).

The kill points lie inside each stage's work, after some of it is done and before the stage is complete:
the importance scores computed, their directory half-written; one candidate of the search scored; the pruned
checkpoint written, not yet renamed into place; the second distillation checkpoint saved; the first model
evaluated.
"""

import functools
import os
import signal
import sys

from accelerate import Accelerator

from nemocompress import api, compress
from nemocompress.cli import main
from nemocompress.importance import result
from nemocompress.prune.search import SearchState


def _die_on_call(owner, name: str, call: int, after: bool = True) -> None:
    """Replace ``owner.name`` by a wrapper that SIGKILLs this process at its ``call``-th call."""
    real, calls = getattr(owner, name), []

    @functools.wraps(real)  # the parser reads api functions' signatures
    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == call and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, name, dying)


KILL_POINTS = {
    "01-importance": (result, "plot_scores", 1, True),  # inside the stage's temporary directory
    "02-plan": (SearchState, "add", 1, True),  # one zero-shot score saved
    "03-prune": (compress, "replace_dir", 1, False),  # before the pruned checkpoint is renamed in
    "04-distill": (Accelerator, "save_state", 2, True),  # the second checkpoint written, not renamed
    "05-eval": (api, "eval_model", 2, False),  # the parent evaluated
}

if __name__ == "__main__":
    stage, argv = sys.argv[1], sys.argv[2:]
    if stage != "none":
        _die_on_call(*KILL_POINTS[stage])
    sys.exit(main(argv))
