"""Every map in the registry, certified at Conv4 sizes (32 901 coordinates, a (5, 800) head).

Each map's stated ``monotonicity_modulus()`` / ``lipschitz_constant()`` is compared with what the
kit certifies; a copy of the map that states a constant tighter than the certified one fails.
"""

from __future__ import annotations

import pytest
from torch import Tensor

from mirroropt.maps import BlockIAF, Kronecker, MirrorMap
from mirroropt.testing import (
    PropertyError,
    check_lipschitz,
    check_map,
    check_monotone,
    sample_points,
)
from tests.registry import CASES, CONV4, SHAPES, MapCase
from tests.testing._bad_maps import claims

ids = [c.id for c in CASES]


def _points(case: MapCase, g: MirrorMap) -> list[dict[str, Tensor]]:
    return sample_points(g, n=case.kit_points, seed=1, bound=case.domain)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_registry_map_at_conv4_sizes(case: MapCase) -> None:
    g = case.build_trained(CONV4)
    points = _points(case, g)
    reports = check_map(g, points, raise_on_failure=False)
    monotone, rest = reports[0], reports[1:]
    assert all(r.passed for r in rest), [str(r) for r in rest if not r.passed]
    assert all(str(r).startswith("[PASS]") for r in rest)
    if case.monotone_everywhere:
        assert monotone.passed, str(monotone)
        mu = g.monotonicity_modulus()
        if mu is not None:  # the stated modulus is a lower bound of everything certified
            assert monotone.measured >= mu - monotone.tolerance
    else:  # the unconstrained flow: provably not monotone, and the kit says where
        assert not monotone.passed and monotone.measured < 0
        assert monotone.witness is not None
        assert "confirmed by the secant pair" in monotone.witness.how
    lip = g.lipschitz_constant()
    if lip is not None:
        assert reports[1].prop == "Lipschitz" and reports[1].measured <= lip + reports[1].tolerance


def test_conv4_shapes_exercise_the_kronecker_fallback_and_conv_kernels() -> None:
    assert CONV4["head.weight"] == (5, 800) and CONV4["features.4.weight"] == (32, 32, 3, 3)
    assert sum(s.numel() for s in CONV4.values()) == 32901
    g = Kronecker(CONV4)
    assert g.log_factors["head-weight"]["in"].shape == (800,)  # diagonal above 512
    assert g.log_factors["head-weight"]["out"].shape == (5, 5)


TIGHT = [
    "identity",
    "diagonal",
    "diagonal-per-tensor",
    "kronecker",
    "kronecker-capped",
    "pnorm-2",
    "elementwise_convex",
]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in TIGHT], ids=TIGHT)
def test_stated_constants_are_tight_where_the_math_says_so(case: MapCase) -> None:
    """Linear maps (one point certifies R^d) and the elementwise map (μ attained in its tails):
    the certified extremes equal the stated constants."""
    g = case.build_trained(CONV4)
    points = _points(case, g)
    mono = check_monotone(g, points)
    # Lanczos stops at a relative residual eps^(1/4); Ritz values converge quadratically
    assert mono.measured == pytest.approx(g.monotonicity_modulus(), rel=1e-4)
    assert mono.measured >= g.monotonicity_modulus() * (1 - 1e-12)  # Ritz values never undershoot
    if g.is_linear:
        assert "holds on all of R^d" in mono.detail
        lip = check_lipschitz(g, points)
        assert lip.measured == pytest.approx(g.lipschitz_constant(), rel=1e-4)


WITH_MU = [
    c
    for c in CASES
    if c.id in ("diagonal", "kronecker", "block_iaf-monotone", "convex_potential", "pnorm-3")
]


@pytest.mark.parametrize("case", WITH_MU, ids=[c.id for c in WITH_MU])
def test_a_stated_constant_beyond_the_certified_one_fails(case: MapCase) -> None:
    """Linear maps at Conv4 size (one point certifies them); nonlinear ones on the small layers."""
    shapes = CONV4 if case.id in ("diagonal", "kronecker") else SHAPES
    g = case.build_trained(shapes)
    points = sample_points(g, n=2, seed=1, bound=case.domain)
    certified_mu = check_monotone(g, points).measured
    with pytest.raises(PropertyError, match=r"strongly monotone: measured .* < bound"):
        check_monotone(claims(g, mu=1.05 * certified_mu, lip=None), points)
    if g.lipschitz_constant() is not None:
        certified_l = check_lipschitz(g, points).measured
        with pytest.raises(PropertyError, match=r"Lipschitz: measured .* > bound"):
            check_lipschitz(claims(g, mu=None, lip=certified_l / 1.05), points)


def test_unconstrained_flow_fails_and_monotone_flow_passes_on_the_same_points() -> None:
    bad = CASES[ids.index("block_iaf")].build_trained(SHAPES)
    good = CASES[ids.index("block_iaf-monotone")].build_trained(SHAPES)
    assert isinstance(bad, BlockIAF) and not bad.monotone and good.monotone
    points = sample_points(SHAPES, n=3, seed=0)  # magnitudes up to 1e3, as for real weights
    with pytest.raises(
        PropertyError, match=r"\[FAIL\] BlockIAF: strictly monotone .*Witness: at z"
    ):
        check_monotone(bad, points)
    assert check_monotone(good, points).passed
