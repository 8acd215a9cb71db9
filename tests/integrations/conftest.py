"""One intra-op thread for the integration tests: the CI machine has 2 shared cores, and
oversubscribed thread pools made the example runs ~50× slower. Restored after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
