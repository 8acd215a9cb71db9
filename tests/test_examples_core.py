"""The core's example scripts run on a tiny budget and support their claim's direction."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sinusoid_demo_meta_training_lowers_post_adaptation_error() -> None:
    demo = _load("sinusoid_demo")
    untrained = demo.main(iterations=0, test_tasks=100)
    trained = demo.main(iterations=40, test_tasks=100)
    assert untrained["identity"] == untrained["diagonal"]  # identical at the identity init
    assert trained["identity"] < untrained["identity"]
    assert trained["diagonal"] < untrained["diagonal"]
