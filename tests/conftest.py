"""Fixtures shared by the tests."""

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*falling back.*")


@pytest.fixture
def tokens():
    return torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def one_thread():
    """Two cores shared with other jobs: one thread is faster and makes runs comparable to subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
