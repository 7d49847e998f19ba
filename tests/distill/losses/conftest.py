"""The shared ``logits`` fixture of the loss tests."""

import pytest
import torch
from distill.losses.reference import F64, B, S, V


@pytest.fixture
def logits():
    gen = torch.Generator().manual_seed(0)
    student = (2 * torch.randn(B, S, V, generator=gen, dtype=F64)).requires_grad_()
    teacher = (2 * torch.randn(B, S, V, generator=gen, dtype=F64)).requires_grad_()
    labels = torch.randint(0, V, (B, S), generator=gen)
    labels[0, 1] = -100
    labels[1, :3] = -100
    return student, teacher, labels
