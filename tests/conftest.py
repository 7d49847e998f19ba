"""Fixtures shared by the tests."""

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*falling back.*")


@pytest.fixture
def tokens():
    return torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(1))
