"""Two CPU processes (gloo, through accelerate) give the same statistics as one; two fresh interpreters running
the same calibration give bitwise-equal statistics."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import free_port

from nemocompress.arch import get_adapter
from nemocompress.importance.artifact import ImportanceArtifact
from nemocompress.importance.calibrate import calibrate
from nemocompress.zoo import zoo_model

SCRIPT = Path(__file__).with_name("dist_calibrate.py")


def test_two_processes_equal_one(tmp_path):
    name = "nemotron_h-hybrid"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    done = subprocess.run(
        [*cmd, str(SCRIPT), str(tmp_path / "two"), name], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = ImportanceArtifact.load(tmp_path / "two")
    model = zoo_model(name)
    samples = torch.randint(2, 98, (8, 24), generator=torch.Generator().manual_seed(0))
    one = calibrate(
        model, get_adapter(model.config), samples, batch_size=2, block_sizes=(1, 2), progress=False
    )
    assert one.stats.keys() == two.stats.keys()
    for key, stats in one.stats.items():
        for stat, value in stats.items():
            torch.testing.assert_close(two.stats[key][stat], value, rtol=1e-9, atol=1e-9, msg=f"{key}/{stat}")
    for window, stats in one.layers.items():
        for stat, value in stats.items():
            torch.testing.assert_close(
                two.layers[window][stat], value, rtol=1e-9, atol=1e-9, msg=f"{window}/{stat}"
            )


# The same calibration as a fresh process would run it: zoo model, seeded samples, every statistic saved.
_CALIBRATE = """
import sys, torch
from nemocompress.arch import get_adapter
from nemocompress.importance.calibrate import calibrate
from nemocompress.zoo import zoo_model
model = zoo_model("qwen3_moe")
samples = torch.randint(2, 98, (6, 24), generator=torch.Generator().manual_seed(0))
calibrate(model, get_adapter(model.config), samples, batch_size=2, progress=False).save(sys.argv[1])
"""


def test_scores_are_bitwise_equal_across_two_fresh_processes(tmp_path):
    """Two interpreters (own hash seeds, own allocators) compute the same statistics to the bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "random"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _CALIBRATE, str(tmp_path / name)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    a, b = (ImportanceArtifact.load(tmp_path / name) for name in ("a", "b"))
    assert a.tensors().keys() == b.tensors().keys() and len(a.tensors()) > 10
    for key, value in a.tensors().items():
        assert torch.equal(value, b.tensors()[key]), key
