import os
from collections.abc import Iterator

import pytest
import torch
from hardening import single_thread

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Its tensors are tiny: on a busy 2-core machine a second thread mostly spins and synchronises.
    """
    with single_thread():
        yield
