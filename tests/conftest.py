import os

import pytest
import torch

# Under pytest-xdist each worker gets one thread: two workers x two threads on two cores makes
# OpenMP spin-waits collide and tiny models run up to 100x slower.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture()
def one_thread():
    """Tiny models train several times faster on one thread on this shared 2-core machine (modules
    that train opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
