"""A NemotronH hybrid (Mamba-2, attention, MLP, MoE layers) on the device: forward and cached generation
through transformers' PyTorch path, and through mamba-ssm's kernels when they are installed."""

import subprocess
import sys

import pytest
import torch

from nemocompress.zoo import zoo_model

pytestmark = pytest.mark.gpu

NAME = "nemotron_h-hybrid"
# float32 without TF32: the PyTorch path on the device within 1e-4 of the CPU. mamba-ssm's Triton kernels
# multiply float32 in TF32 (10-bit mantissa), hence 5e-3 against the PyTorch path.
DEVICE_ATOL, KERNEL_ATOL = 1e-4, 5e-3
# The chunk scan's default chunk is 16 in the zoo model: 40 tokens cover two full chunks and a partial one.
PROMPT = torch.randint(2, 128, (2, 40), generator=torch.Generator().manual_seed(3))
NEW_TOKENS = 12


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens.to(model.device), use_cache=False).logits.float().cpu()


def _assert_greedy(sequences: torch.Tensor, logits: torch.Tensor, tol: float) -> None:
    """Each generated token is the argmax of the uncached forward's logits at the position before it (up to
    ``tol``, for near-ties): the cache (Mamba conv and SSM states, attention KV) continues the prompt exactly."""
    start = PROMPT.shape[1]
    generated = sequences[:, start:]
    previous = logits[:, start - 1 : -1]
    chosen = previous.gather(-1, generated[..., None])[..., 0]
    assert (chosen >= previous.max(-1).values - tol).all(), chosen - previous.max(-1).values


def _generate(model) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(
            PROMPT.to(model.device), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS
        )
    return out.cpu()


def test_forward_and_generation_on_device_match_cpu(device):
    reference = zoo_model(NAME)
    model = zoo_model(NAME).to(device)
    torch.testing.assert_close(_logits(model, PROMPT), _logits(reference, PROMPT), atol=DEVICE_ATOL, rtol=0)
    sequences = _generate(model)
    assert sequences.shape == (PROMPT.shape[0], PROMPT.shape[1] + NEW_TOKENS)
    assert torch.equal(sequences[:, : PROMPT.shape[1]], PROMPT)
    _assert_greedy(sequences, _logits(model, sequences), tol=DEVICE_ATOL)
    _assert_greedy(sequences, _logits(reference, sequences), tol=2 * DEVICE_ATOL)


# Run in a child process that cannot import mamba-ssm or causal-conv1d: transformers then binds its PyTorch
# implementations (it picks them once, when the model's module is imported).
TORCH_PATH = """
import sys
sys.modules["mamba_ssm"] = sys.modules["causal_conv1d"] = None
import torch
from nemocompress.zoo import zoo_model
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
model = zoo_model(sys.argv[1]).cuda()
tokens = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(tokens.cuda(), use_cache=False).logits.float().cpu(), sys.argv[3])
"""


def test_mamba_kernels_match_pytorch_path(mamba_kernels, cuda, tmp_path):
    model = zoo_model(NAME).to(cuda)
    sequences = _generate(model)  # cached generation through the kernels (state update, chunk scan, conv)
    kernels = _logits(model, sequences)
    torch.save(sequences, tmp_path / "tokens.pt")
    done = subprocess.run(
        [sys.executable, "-c", TORCH_PATH, NAME, str(tmp_path / "tokens.pt"), str(tmp_path / "logits.pt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    torch_path = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(kernels, torch_path, atol=KERNEL_ATOL, rtol=0)
    _assert_greedy(sequences, torch_path, tol=KERNEL_ATOL)
