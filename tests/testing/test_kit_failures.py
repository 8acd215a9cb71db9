"""Each failure class of issue 9, built anew: the kit must FAIL it, with a readable witness."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings

from mirroropt.maps import Kronecker
from mirroropt.testing import (
    PropertyError,
    check_lipschitz,
    check_map,
    check_monotone,
    check_round_trip,
    sample_points,
)
from mirroropt.testing.strategies import points_for
from tests.registry import perturbed
from tests.testing._bad_maps import (
    DT,
    DropsKey,
    OneBadConvEntry,
    Reflection,
    TurnsBackFar,
    UnflaggedReflection,
    Wiggle,
    claims,
)

W48 = {"w": (48,)}


@pytest.mark.parametrize(
    ("cls", "d"), [(Reflection, 48), (UnflaggedReflection, 48), (Reflection, 3000)]
)
def test_reflection_with_one_negative_direction_fails_with_the_direction(cls: type, d: int) -> None:
    g = cls(d=d)  # 48 coordinates: dense eigh; 3000: Lanczos
    points = sample_points(g, n=3, seed=4)
    with pytest.raises(
        PropertyError, match=r"\[FAIL\] \w+: strongly monotone: measured -1 < bound 0\.5"
    ) as info:
        check_monotone(g, points)
    report = info.value.report
    assert report.measured == pytest.approx(-1.0, abs=1e-10)
    witness = report.witness
    assert witness is not None and witness.value == pytest.approx(-1.0, abs=1e-10)
    v = witness.direction["w"]
    assert abs(float(v @ g.u)) / float(v.norm()) == pytest.approx(1.0, abs=1e-8)  # it is u
    method = "eigh of the dense (J + J')/2" if d <= 256 else "Lanczos on (J + J')/2"
    assert method in witness.how and "Witness: at z = points[" in str(report)
    # the given pairs alone (the old kit) stay far above −1
    pair_only = check_monotone(g, points, local_probes=0, raise_on_failure=False)
    assert pair_only.measured > -0.5

    # and the kit fails on every hypothesis draw, as a user's test would
    @settings(max_examples=10)
    @given(points_for(g))
    def run(pts: list[dict[str, torch.Tensor]]) -> None:
        with pytest.raises(PropertyError, match="strongly monotone"):
            check_map(g, pts)

    run()


def test_one_point_certifies_a_linear_map_and_the_flag_is_verified() -> None:
    g = Reflection()
    one = sample_points(W48, n=1, seed=2)
    report = check_monotone(g, one, raise_on_failure=False)
    assert not report.passed and "holds on all of R^d" in report.detail
    assert "by eigh of the dense Jacobian" in report.detail and ", exact" in report.detail
    big = Reflection(d=3000)
    report = check_monotone(big, sample_points(big, n=1, seed=2), raise_on_failure=False)
    assert not report.passed and "holds on all of R^d" in report.detail
    assert "by Lanczos" in report.detail and report.measured == pytest.approx(-1.0, abs=1e-8)


def test_understated_lipschitz_of_a_fast_wiggle_fails() -> None:
    """z + 0.0099 sin(100 z): true L ≈ 1.99, stated 1.01; pairs alone see slope ≈ 1."""
    g = Wiggle(W48, a=0.0099, omega=100.0, mu=None, lip=1.01)
    points = sample_points(W48, n=3, seed=0, bound=10.0)
    assert check_lipschitz(g, points, local_probes=0).passed  # fooled: the pairs alone
    with pytest.raises(PropertyError, match=r"Lipschitz: measured 1\.9\d+ > bound 1\.01") as info:
        check_lipschitz(g, points)
    witness = info.value.report.witness
    assert witness is not None and witness.value > 1.9
    assert "confirmed by the secant pair" in witness.how


def test_overstated_mu_and_understated_l_fail() -> None:
    """z + 0.5 sin z: μ = 0.5 and L = 1.5 exactly; stated 0.8 and 1.2."""
    shapes = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (5, 20), "s": ()}
    g = Wiggle(shapes, a=0.5, omega=1.0, mu=0.8, lip=1.2)
    points = sample_points(shapes, n=3, seed=1)
    with pytest.raises(PropertyError, match=r"strongly monotone: measured 0\.50?\d* < bound 0\.8"):
        check_monotone(g, points)
    with pytest.raises(PropertyError, match=r"Lipschitz: measured 1\.(49\d*|5) > bound 1\.2"):
        check_lipschitz(g, points)
    honest = Wiggle(shapes, a=0.5, omega=1.0, mu=0.5, lip=1.5)
    assert all(r.passed for r in check_map(honest, points))


def test_a_map_non_monotone_only_beyond_10_fails_exactly_when_the_points_go_there() -> None:
    g = TurnsBackFar({"a": (3, 2, 3, 3), "b": (3,)})
    reached = []

    @settings(max_examples=30)
    @given(points_for(g))
    def run(points: list[dict[str, torch.Tensor]]) -> None:
        beyond = max(float(t.abs().max()) for p in points for t in p.values()) > 10.2
        report = check_monotone(g, points, raise_on_failure=False)
        if beyond:
            reached.append(True)
            assert not report.passed and report.measured < -0.5
            assert report.witness is not None
            assert (
                float(report.witness.point["a"].abs().max()) > 10
                or float(report.witness.point["b"].abs().max()) > 10
            )
        elif max(float(t.abs().max()) for p in points for t in p.values()) < 9.8:
            assert report.passed

    run()
    assert reached, "the default domain (up to 1e3) must reach |z| > 10"
    with pytest.raises(PropertyError, match=r"strictly monotone"):
        check_monotone(g, sample_points(g, n=2, seed=0))


def test_defect_in_one_conv_kernel_entry_is_located() -> None:
    shapes = {"conv.weight": (8, 4, 3, 3), "conv.bias": (8,), "fc.weight": (5, 32), "fc.bias": (5,)}
    g = OneBadConvEntry(shapes, "conv.weight", (6, 1, 0, 2))
    with pytest.raises(PropertyError, match=r"'conv\.weight'\[6, 1, 0, 2\]: [+-]1\b") as info:
        check_monotone(g, sample_points(shapes, n=2, seed=3))
    assert info.value.report.measured == pytest.approx(-1.0, abs=1e-9)


def test_kronecker_fallback_above_512_certified_and_an_overstated_copy_fails() -> None:
    shapes = {"conv.weight": (8, 3, 3, 3), "fc.weight": (5, 800), "fc.bias": (5,)}
    g = perturbed(Kronecker(shapes), scale=0.2, seed=2)
    assert g.log_factors["fc-weight"]["in"].shape == (800,)  # the diagonal fallback
    with torch.no_grad():  # an isolated smallest eigenvalue inside the fallback factor
        g.log_factors["fc-weight"]["in"][123] = -3.0
    points = sample_points(g, n=2, seed=5)
    mu, lip = g.monotonicity_modulus(), g.lipschitz_constant()
    reports = check_map(g, points)
    assert reports[0].measured == pytest.approx(mu, rel=1e-6)  # the kit sees the true minimum
    assert reports[1].measured == pytest.approx(lip, rel=1e-3)
    with pytest.raises(PropertyError, match=r"strongly monotone.*'fc\.weight'\[\d, 123\]"):
        check_monotone(claims(g, mu=1.2 * mu, lip=lip), points)
    with pytest.raises(PropertyError, match=r"Lipschitz: measured .* > bound"):
        check_lipschitz(claims(g, mu=mu, lip=lip / 1.2), points)


def test_a_map_that_drops_a_key_fails_readably_not_with_keyerror() -> None:
    g = DropsKey({"w": (2, 3), "b": (2,)})
    points = sample_points(g, n=2)
    message = r"to_primal must return exactly the names .* missing \['b'\]"
    with pytest.raises(PropertyError, match=message):
        check_monotone(g, points)
    with pytest.raises(PropertyError, match=message):
        check_map(g, points)
    with pytest.raises(PropertyError, match=message):
        check_round_trip(g, points)
    report = check_lipschitz(g, points, constant=1.0, raise_on_failure=False)
    assert not report.passed and math.isnan(report.measured) and "missing ['b']" in str(report)


def test_witness_points_and_directions_have_the_maps_shapes() -> None:
    shapes = {"k": (2, 2, 3, 3), "s": ()}
    g = Wiggle(shapes, a=0.5, omega=1.0, mu=0.9, lip=None)
    report = check_monotone(g, sample_points(shapes, n=2), raise_on_failure=False)
    assert report.witness is not None
    assert {n: t.shape for n, t in report.witness.point.items()} == {
        "k": torch.Size((2, 2, 3, 3)),
        "s": torch.Size(()),
    }
    assert report.witness.direction["k"].dtype == DT
    assert report.witness.claim == 0.9
