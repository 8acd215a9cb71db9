"""Importing mirroropt (or mirroropt.integrations) never imports the optional dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import mirroropt.integrations

ROOT = Path(__file__).resolve().parents[2]


def test_optional_dependencies_are_not_imported() -> None:
    code = (
        "import sys, mirroropt, mirroropt.integrations as mi; "
        "mi.MirrorMAML, mi.mirror_step; "
        "assert 'higher' not in sys.modules and 'torchopt' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True
    )


def test_unknown_attribute_is_an_attribute_error() -> None:
    assert "MirrorMAML" in dir(mirroropt.integrations)
    with pytest.raises(AttributeError, match=r"has no attribute 'learn2learn'"):
        mirroropt.integrations.learn2learn  # noqa: B018
