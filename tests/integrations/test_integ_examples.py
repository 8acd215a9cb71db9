"""Every example runs on a tiny budget and meta-training lowers its post-adaptation query loss;
the five MAML styles (and the five mirror-descent styles) compute the same numbers."""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
STYLES = ["torchfunc", "higher", "learner", "torchopt", "lists"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def run(name: str) -> tuple[float, float]:
    result = load(name).main(steps=8)
    return result["before"], result["after"]


@pytest.mark.parametrize("kind", ["maml", "mirror"])
@pytest.mark.parametrize("style", STYLES)
def test_meta_training_lowers_the_adapted_query_loss(kind: str, style: str) -> None:
    before, after = run(f"{kind}_{style}")
    assert math.isfinite(before) and after < before - 1e-3


@pytest.mark.parametrize("kind", ["maml", "mirror"])
def test_the_five_styles_compute_the_same_numbers(kind: str) -> None:
    results = [run(f"{kind}_{style}") for style in STYLES]
    for before, after in results[1:]:
        assert before == pytest.approx(results[0][0], rel=1e-5)
        assert after == pytest.approx(results[0][1], rel=1e-4)


def test_mirror_descent_differs_from_maml_after_meta_training() -> None:
    """Same start (the Diagonal map is the identity at initialization), different path."""
    maml, mirror = run("maml_torchfunc"), run("mirror_torchfunc")
    assert mirror[0] == maml[0] and mirror[1] != maml[1]


@pytest.mark.parametrize("map_name", ["identity", "diagonal"])
def test_omniglot_style_example(map_name: str) -> None:
    result = load("omniglot_style").main(steps=10, map_name=map_name, hidden=16, tasks=2)
    assert result["after"] < result["before"] - 1e-2
