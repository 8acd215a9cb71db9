"""The Examples in the integrations' docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "mirroropt.integrations._torchfunc",
        "mirroropt.integrations._l2l_style",
        "mirroropt.integrations.higher",
        "mirroropt.integrations.torchopt",
    ],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
