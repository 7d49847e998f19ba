"""Run by test_two_processes: calibrate a zoo model on this process's shard and save the reduced result; fail
if a gloo thread outlives the process group (a process exiting with one running while a peer still runs may
abort: "terminate called without an active exception")."""

import sys
from pathlib import Path

import torch
from accelerate import PartialState

from nemocompress.arch import get_adapter
from nemocompress.importance.calibrate import calibrate
from nemocompress.zoo import zoo_model

if __name__ == "__main__":
    state = PartialState(cpu=True)
    model = zoo_model(sys.argv[2])
    samples = torch.randint(2, 98, (8, 24), generator=torch.Generator().manual_seed(0))
    artifact = calibrate(
        model, get_adapter(model.config), samples, batch_size=2, block_sizes=(1, 2), progress=False
    )
    if state.is_main_process:
        artifact.save(sys.argv[1])
    state.wait_for_everyone()
    state.destroy_process_group()
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
    if any("gloo" in n for n in names):
        sys.exit(f"gloo threads still running after destroy_process_group: {names}")
