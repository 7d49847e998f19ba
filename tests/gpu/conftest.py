"""GPU tests (``pytest -m gpu``): collected by every run, skipped with a reason where CUDA is absent.

Every module here carries ``pytestmark = pytest.mark.gpu`` and takes the ``device`` fixture, which skips
without CUDA. ``NEMOCOMPRESS_TEST_DEVICE=cpu pytest -m gpu tests/gpu`` rehearses the same tests on the CPU
(bf16 runs there too; the peak-memory and mamba-ssm kernel checks still skip), to check a change before a
GPU machine is at hand.
"""

import importlib.util
import os

import pytest
import torch

NO_CUDA = "needs a CUDA device: run `pytest -m gpu` on a GPU machine (benchmarks/gpu_check.sh does)"


@pytest.fixture
def device() -> torch.device:
    name = os.environ.get("NEMOCOMPRESS_TEST_DEVICE", "cuda")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    return torch.device(name)


@pytest.fixture
def cuda(device) -> torch.device:
    """The CUDA device, for checks that only CUDA can make (its allocator's peak memory, its kernels)."""
    if device.type != "cuda":
        pytest.skip(f"{NO_CUDA}; this check reads CUDA-only state")
    return device


@pytest.fixture
def mamba_kernels(cuda) -> None:
    """mamba-ssm's kernels (and causal-conv1d's) are importable; see benchmarks/gpu_check.sh --wheels."""
    missing = [m for m in ("mamba_ssm", "causal_conv1d") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: transformers' PyTorch path is the only one here")


@pytest.fixture(autouse=True)
def exact_float32():
    """float32 means float32 on CUDA too (no TF32 in matmuls and convolutions) while a test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
