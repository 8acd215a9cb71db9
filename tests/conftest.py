"""Test configuration: float64 determinism and the derandomized hypothesis profile for CI."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

from mirroropt.testing.strategies import register_profiles

register_profiles()
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seeded_single_thread() -> Iterator[None]:
    """Seeded RNG, and one intra-op thread: the tensors here are tiny, and oversubscribed thread
    pools on the 2-core CI machine made small ops (softmax, conv) up to ~50× slower."""
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
