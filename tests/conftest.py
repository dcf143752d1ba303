import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # CI has two cores; one torch thread per test process keeps timings predictable
    torch.set_num_threads(1)
    yield


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
