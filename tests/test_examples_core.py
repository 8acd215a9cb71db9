"""The core's example scripts run on a tiny budget and support their claim's direction."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
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


def test_map_costs_lists_every_map_and_the_learned_maps_are_lean() -> None:
    from mirroropt.maps import MAPS

    costs = _load("map_costs").main(width=64, size=28, channels=1, repeats=1)
    assert set(costs) == set(MAPS)
    assert costs["identity"]["params"] == 0 and costs["identity"]["step_ratio"] == 1.0
    assert costs["diagonal"]["ratio"] == 1.0  # one scale per coordinate
    for name in ("kronecker", "block_iaf", "convex_potential", "elementwise_convex"):
        assert 0 < costs[name]["ratio"] < 1.0, name  # the authors' blockIAF: about 28×
    assert all(c["to_primal_ms"] >= 0 and c["step_ratio"] > 0 for c in costs.values())


def test_convex_potential_start_anchored_gets_the_step_size_gradient() -> None:
    res = _load("convex_potential_start").main(batches=1, tasks=2, width=4, benchmark="synthetic")
    anchored, diag, learned = res["anchored"], res["meta-sgd per tensor"], res["learned z0"]
    for name in diag:
        assert abs(anchored[name] - diag[name]) <= 1e-5 * max(1.0, abs(diag[name])), name
    assert max(abs(learned[n] - diag[n]) for n in diag) > 1e-4  # the rescaling of φ₀ shows
