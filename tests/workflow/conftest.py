"""Workflow tests run on one CPU thread: on a shared 2-core machine more threads oversubscribe
(measured ~10x slower for small Conv4 batches)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
