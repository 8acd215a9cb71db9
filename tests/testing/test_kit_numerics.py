"""Duplicates, near-duplicates, tiny and huge magnitudes, float32: no crash, no false verdict."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mirroropt import maps
from mirroropt.maps import Diagonal, Identity
from mirroropt.testing import Report, check_map, check_monotone, default_rtol, sample_points
from mirroropt.testing.strategies import dual_points
from tests.registry import perturbed

DT = torch.float64
SMALL = {"conv.weight": (2, 2, 3, 3), "bias": (2,), "s": ()}


def test_duplicates_are_skipped_and_counted_not_an_error() -> None:
    z = sample_points(SMALL, n=1, seed=3)[0]
    report = check_monotone(Identity(SMALL), [z, z, dict(z)])
    assert (
        report.passed and "0 compared" in report.detail and "3 duplicates skipped" in report.detail
    )
    assert report.measured == pytest.approx(1.0)  # from the local certificate alone


def test_points_1e_200_apart() -> None:
    zero = {"w": torch.zeros(3, dtype=DT)}
    tiny = {"w": torch.full((3,), 1e-200, dtype=DT)}
    # the identity is exactly linear at every scale: the pair is resolvable and has ratio 1
    report = check_monotone(Identity({"w": (3,)}), [zero, tiny], local_probes=0)
    assert report.passed and report.measured == 1.0 and "1 compared" in report.detail
    # exp rounds both to 1: the pair carries no information and is skipped, not divided by
    g = maps.Entropic({"w": (3,)})
    report = check_monotone(g, [zero, tiny])
    assert report.passed and "1 closer than the separation threshold" in report.detail
    with pytest.raises(ValueError, match=r"Nothing to check: local certification is off"):
        check_monotone(g, [zero, tiny], local_probes=0)


def test_relative_near_duplicates_at_large_magnitude_are_skipped() -> None:
    z = {"w": torch.full((4,), 1e3, dtype=DT)}
    near = {"w": z["w"] * (1 + 4e-16)}
    g = maps.ElementwiseConvex({"w": (4,)}).double()
    report = check_monotone(perturbed(g, 1.0), [z, near])
    assert report.passed and "1 closer than the separation threshold" in report.detail


def _with_duplicates(
    points: list[dict[str, torch.Tensor]], offsets: list[float]
) -> list[dict[str, torch.Tensor]]:
    base = points[0]
    out = [*points, dict(base)]
    out += [{n: t + o for n, t in base.items()} for o in offsets]
    out += [{n: t * (1 + 1e-16) for n, t in base.items()}]
    return out


MAPS = {
    "identity": lambda: Identity(SMALL),
    "diagonal": lambda: perturbed(Diagonal(SMALL)),
    "elementwise": lambda: perturbed(maps.ElementwiseConvex(SMALL), 1.0),
    "kronecker": lambda: perturbed(maps.Kronecker(SMALL)),
    "pnorm-3": lambda: maps.PNorm(SMALL, p=3.0),
}


@pytest.mark.parametrize("name", list(MAPS))
def test_hypothesis_duplicates_and_near_duplicates_raise_nothing(name: str) -> None:
    g = MAPS[name]()

    @settings(max_examples=8)
    @given(
        st.lists(dual_points(SMALL), min_size=1, max_size=2),
        st.lists(st.sampled_from([0.0, 1e-300, 1e-200, 1e-17, 1e-9]), max_size=3),
    )
    def run(points: list[dict[str, torch.Tensor]], offsets: list[float]) -> None:
        pts = _with_duplicates(points, offsets)
        reports = check_map(g, pts, raise_on_failure=False, ascent_steps=1)
        assert all(r.passed for r in reports), [str(r) for r in reports if not r.passed]

    run()


def test_default_rtol_scales_with_dtype_and_size() -> None:
    assert default_rtol(torch.float64, 48) == pytest.approx(64 * 2.220446e-16 * math.sqrt(48))
    assert default_rtol(torch.float32, 48) / default_rtol(torch.float64, 48) == pytest.approx(
        2.0**29
    )
    assert default_rtol(torch.float64, 32901) > default_rtol(torch.float64, 48)


def test_float32_maps_at_magnitudes_up_to_1e3_pass() -> None:
    g = perturbed(maps.Kronecker(SMALL)).float()
    points = sample_points(g, n=3, seed=2)
    assert points[0]["s"].dtype == torch.float32
    reports = check_map(g, points)
    assert all(r.passed for r in reports)


def test_reports_never_print_a_violated_inequality_as_pass() -> None:
    within = Report("Lipschitz", "M", True, 1.0 + 1e-14, 1.0, "", tolerance=1e-12, sense="<=")
    assert str(within).startswith("[PASS] M: Lipschitz: measured 1 ≈ bound 1 (within tolerance")
    outright = Report("strongly monotone", "M", True, 0.7, 0.5, "", tolerance=1e-12, sense=">=")
    assert "measured 0.7 ≥ bound 0.5" in str(outright)
    failed = Report("strongly monotone", "M", False, 0.4, 0.5, "", tolerance=1e-12, sense=">=")
    assert "[FAIL] M: strongly monotone: measured 0.4 < bound 0.5" in str(failed)
    assert "≈" not in str(failed)


def test_round_trip_report_is_consistent_with_its_verdict() -> None:
    """Issue 9 saw '[PASS] … measured 7.98e-07 (bound 1e-08)'; now measured ≤ bound iff PASS."""
    from mirroropt.testing import check_round_trip

    g = perturbed(maps.ElementwiseConvex(SMALL), 1.0)
    for seed in range(3):
        report = check_round_trip(g, sample_points(g, n=2, seed=seed))
        assert report.passed and report.bound is not None and report.measured <= report.bound
        assert "≤ bound" in str(report)
    bad = check_round_trip(g, sample_points(g, n=2), atol=0.0, rtol=1e-30, raise_on_failure=False)
    assert not bad.passed and bad.bound is not None and bad.measured > bad.bound
