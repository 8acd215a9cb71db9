"""Every map in the registry against every invariant its capability flags say applies."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mirroropt.testing import (
    PropertyError,
    check_differentiable,
    check_gradient_field,
    check_lipschitz,
    check_map,
    check_monotone,
    check_reduces_to_gd,
    check_round_trip,
)
from mirroropt.testing.strategies import dual_points
from tests.registry import CASES, SHAPES, MapCase

ids = [c.id for c in CASES]
IDENTITY_INIT = [c for c in CASES if c.identity_init]
CLASSICAL = [c for c in CASES if not c.identity_init]


def _points(case: MapCase, n: int = 3) -> st.SearchStrategy[list[dict[str, torch.Tensor]]]:
    """n dual points, made pairwise distinct by a per-point offset (hypothesis shrinks to zeros).

    The offset is a shift plus a ramp, so points stay distinct after projection onto a map's
    ``dual_subspace`` (a pure shift would vanish under the entropic simplex projection).
    """

    def ramp(v: torch.Tensor) -> torch.Tensor:
        return torch.linspace(-1, 1, v.numel(), dtype=v.dtype).reshape(v.shape)

    return st.lists(dual_points(SHAPES, bound=case.bound), min_size=n, max_size=n).map(
        lambda pts: [
            {k: v + 0.5 * i + 0.25 * i * ramp(v) for k, v in p.items()} for i, p in enumerate(pts)
        ]
    )


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_all_applicable_invariants_hold(case: MapCase) -> None:
    g = case.build_trained(SHAPES)

    @given(_points(case))
    def run(points: list[dict[str, torch.Tensor]]) -> None:
        points = [g.canonical_dual(z) for z in points]  # where the map is one-to-one
        reports = check_map(g, points)
        assert all(r.passed for r in reports)
        # monotone at least; the local certificate measures λ_min((J+Jᵀ)/2), which is 0 up to
        # rounding where a strictly (not strongly) monotone map is flat, e.g. PNorm at z_i = 0
        assert reports[0].measured >= -reports[0].tolerance

    run()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_flags_are_asserted_not_skipped(case: MapCase) -> None:
    """A flag that says False must be false in fact: each branch asserts something."""
    g = case.build_trained(SHAPES)
    gen = torch.Generator().manual_seed(3)
    points = [
        {
            n: case.bound * (2 * torch.rand(s, generator=gen, dtype=torch.float64) - 1)
            for n, s in SHAPES.items()
        }
        for _ in range(3)
    ]
    points = [g.canonical_dual(z) for z in points]  # where the map is one-to-one
    if g.has_to_dual:
        assert check_round_trip(g, points).passed
    else:
        with pytest.raises(NotImplementedError, match="no closed-form `to_dual`"):
            g.to_dual(points[0])
    if g.is_gradient_field:
        assert check_gradient_field(g, points).passed
    else:
        with pytest.raises(PropertyError, match="gradient field"):
            check_gradient_field(g, points)
    mu, lip = g.monotonicity_modulus(), g.lipschitz_constant()
    report = check_monotone(g, points)
    if mu is not None:
        assert report.measured >= mu - 1e-9
    if lip is not None:
        assert check_lipschitz(g, points).measured <= lip * (1 + 1e-9)


@pytest.mark.parametrize("case", IDENTITY_INIT, ids=[c.id for c in IDENTITY_INIT])
def test_identity_initialization_reduces_to_gradient_descent(case: MapCase) -> None:
    g = case.make(SHAPES).double()
    gen = torch.Generator().manual_seed(4)
    target = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    phi = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(((p[n] - target[n]) ** 2 * (1 + p[n] ** 2)).sum() for n in p)  # type: ignore[return-value]

    report = check_reduces_to_gd(g, loss, phi, lr=0.05, steps=3, atol=1e-6)
    assert report.passed


@pytest.mark.parametrize("case", CLASSICAL, ids=[c.id for c in CLASSICAL])
def test_classical_maps_do_not_reduce_to_gradient_descent(case: MapCase) -> None:
    """``identity_init=False`` is asserted: from a point in the map's range, φ_K differs from GD."""
    g = case.make(SHAPES).double()
    gen = torch.Generator().manual_seed(4)
    target = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    z0 = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    with torch.no_grad():
        phi = g.to_primal(z0)  # a valid primal start (e.g. on the simplex) for every map

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(((p[n] - target[n]) ** 2 * (1 + p[n] ** 2)).sum() for n in p)  # type: ignore[return-value]

    report = check_reduces_to_gd(g, loss, phi, lr=0.05, steps=3, atol=1e-6, raise_on_failure=False)
    assert not report.passed
    assert report.measured > 1e-3


TINY = {"w": torch.Size((2, 3)), "b": torch.Size((2,))}


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_every_map_is_differentiable_through_the_inner_loop(case: MapCase) -> None:
    """gradcheck of φ_K through 2 unrolled steps w.r.t. the map's parameters, the start and lr."""
    g = case.build_trained(TINY)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    start = {n: 0.5 * torch.randn(s, generator=gen, dtype=torch.float64) for n, s in TINY.items()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((torch.tanh(x @ p["w"].T + p["b"]) - y) ** 2).mean()

    # maps with a closed-form to_dual and no domain restriction start from φ (through to_dual),
    # the others (no to_dual; classical maps with a restricted primal domain) from z
    primal = g.has_to_dual and case.identity_init
    report = (
        check_differentiable(g, loss, start, lr=0.2)
        if primal
        else check_differentiable(g, loss, z=start, lr=0.2)
    )
    assert report.passed
