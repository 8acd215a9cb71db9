"""Test configuration: float64 determinism and the derandomized hypothesis profile for CI."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from mirroropt.testing.strategies import register_profiles

register_profiles()
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
