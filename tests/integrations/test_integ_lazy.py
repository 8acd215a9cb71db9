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


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (so sys.modules starts empty); return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


HIGHER_LOOP = (
    "import torch; from mirroropt.maps import Diagonal\n"
    "net = torch.nn.Linear(2, 1); g = Diagonal(net)\n"
    "opt = mirroropt.MirrorDescent(net.parameters(), g, lr=0.1)\n"
    "with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):\n"
    "    diffopt.step(fnet(torch.ones(3, 2)).pow(2).sum())\n"
    "    fnet(torch.ones(3, 2)).sum().backward()\n"
    "print(type(diffopt).__name__, all(p.grad is not None for p in g.parameters()))\n"
)


def test_plain_import_mirroropt_then_higher_innerloop_ctx_works() -> None:
    """Reproducer of issue 12: after a plain ``import mirroropt`` this raised
    ``ValueError: Optimizer type <class 'mirroropt._optimizer.MirrorDescent'> not supported``."""
    out = run_python(
        "import sys, mirroropt\n"
        "assert 'higher' not in sys.modules\n"
        "import higher\n"
        "assert 'mirroropt.integrations.higher' in sys.modules\n"
        "assert not mirroropt._autoregister.installed()  # the finder removed itself\n"
        + HIGHER_LOOP
    )
    assert out.split() == ["DifferentiableMirrorDescent", "True"]


def test_higher_imported_before_mirroropt_works_too() -> None:
    out = run_python("import higher, mirroropt\n" + HIGHER_LOOP)
    assert out.split() == ["DifferentiableMirrorDescent", "True"]


def test_import_mirroropt_alone_does_not_import_higher() -> None:
    out = run_python(
        "import importlib.util, sys, mirroropt\n"
        "import mirroropt.integrations as mi; mi.mirror_step, mi.MirrorMAML\n"
        "assert importlib.util.find_spec('higher') is not None  # installed, yet …\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('higher', 'torchopt')),\n"
        "      mirroropt._autoregister.installed())\n"
    )
    assert out.split() == ["[]", "True"]


def test_optional_submodules_are_attributes_after_import_mirroropt() -> None:
    out = run_python(
        "import sys, mirroropt\n"
        "assert 'torchopt' not in sys.modules\n"
        "cls = mirroropt.integrations.torchopt.MetaMirrorDescent\n"
        "print(cls.__name__, 'torchopt' in sys.modules)\n"
    )
    assert out.split() == ["MetaMirrorDescent", "True"]
