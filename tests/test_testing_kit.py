"""The property-test kit catches broken maps and passes good ones."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch
from hypothesis import given
from torch import Tensor

import mirroropt as mo
from mirroropt.maps import Diagonal, Identity
from mirroropt.testing import (
    PropertyError,
    Report,
    check_differentiable,
    check_gradient_field,
    check_lipschitz,
    check_map,
    check_monotone,
    check_reduces_to_gd,
    check_round_trip,
    sample_points,
)
from mirroropt.testing.strategies import (
    dual_points,
    param_dicts,
    point_lists,
    points_for,
    shape_dicts,
)
from tests.registry import perturbed

SHAPES = {"w": (2,)}


class Rotation(mo.MirrorMap):
    """g(z) = R(θ) z on R²: monotone iff cos θ > 0, a gradient field iff sin θ = 0."""

    has_to_dual = True

    def __init__(self, angle: float, scale: float = 1.0) -> None:
        super().__init__(SHAPES)
        c, s = math.cos(angle), math.sin(angle)
        self.register_buffer("r", scale * torch.tensor([[c, -s], [s, c]], dtype=torch.float64))

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"w": self.r @ z["w"]}

    def to_dual(self, phi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"w": torch.linalg.solve(self.r, phi["w"])}

    def monotonicity_modulus(self) -> float:
        return float(self.r[0, 0])

    def lipschitz_constant(self) -> float:
        return 1.0  # wrong when scale > 1: the kit must notice


def _pts(*rows: list[float]) -> list[dict[str, Tensor]]:
    return [{"w": torch.tensor(r, dtype=torch.float64)} for r in rows]


POINTS = _pts([1.0, 0.0], [0.0, 1.0], [-1.0, 2.0], [3.0, -1.0])


def test_kit_catches_a_non_monotone_map() -> None:
    bad = Rotation(2.0)  # 115°: ⟨z, Rz⟩ = cos θ |z|² < 0
    with pytest.raises(
        PropertyError,
        match=r"\[FAIL\] Rotation: strictly monotone \(to rounding\): measured -0\.416\d* < bound 0",
    ) as info:
        check_monotone(bad, POINTS, modulus=0.0)
    assert info.value.report.measured == pytest.approx(math.cos(2.0))
    with pytest.raises(PropertyError):
        check_map(bad, POINTS)


def test_kit_catches_a_wrong_lipschitz_claim_and_a_non_gradient_field() -> None:
    rot = Rotation(0.3, scale=2.0)  # monotone, Lipschitz 2 (claims 1), not symmetric
    assert check_monotone(rot, POINTS).measured == pytest.approx(2 * math.cos(0.3))
    with pytest.raises(PropertyError, match=r"Lipschitz: measured 2 > bound 1 \(tolerance"):
        check_lipschitz(rot, POINTS)
    assert check_lipschitz(rot, POINTS, constant=2.0).passed
    with pytest.raises(PropertyError, match=r"gradient field"):
        check_gradient_field(rot, POINTS)
    assert check_gradient_field(Rotation(0.0, scale=2.0), POINTS).passed


def test_kit_catches_a_wrong_to_dual() -> None:
    class WrongDual(Rotation):
        def to_dual(self, phi: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {"w": phi["w"]}

    with pytest.raises(PropertyError, match=r"round trip"):
        check_round_trip(WrongDual(0.4), POINTS)
    assert check_round_trip(Rotation(0.4), POINTS).measured < 1e-12


def test_kit_catches_a_map_that_does_not_reduce_to_gd() -> None:
    phi = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    loss = lambda p: (p["w"] ** 4).sum()  # noqa: E731
    assert check_reduces_to_gd(Diagonal(SHAPES).double(), loss, phi).measured == 0.0
    with pytest.raises(PropertyError, match=r"reduces to gradient descent"):
        check_reduces_to_gd(perturbed(Diagonal(SHAPES)), loss, phi)


def test_reports_are_readable_and_can_be_returned_instead_of_raised() -> None:
    report = check_monotone(Rotation(2.0), POINTS, modulus=0.0, raise_on_failure=False)
    assert isinstance(report, Report) and not report.passed
    assert str(report).startswith("[FAIL] Rotation: ")
    good = check_map(Diagonal(SHAPES).double(), POINTS)
    assert [r.prop for r in good] == [
        "strongly monotone",
        "Lipschitz",
        "round trip to_dual(to_primal(z)) == z",
        "gradient field (symmetric Jacobian)",
    ]
    assert all(str(r).startswith("[PASS]") for r in good)


def test_kit_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"`points` must hold at least 1 dual point, got 0"):
        check_monotone(Identity(SHAPES), [])
    with pytest.raises(
        ValueError, match=r"`constant` is required: Bare states no Lipschitz constant"
    ):

        class Bare(mo.MirrorMap):
            def to_primal(self, z):
                return dict(z)

        check_lipschitz(Bare(SHAPES), POINTS)
    with pytest.raises(ValueError, match=r"has no to_dual, so it has no round trip"):
        check_round_trip(Bare(SHAPES), POINTS)
    with pytest.raises(ValueError, match=r"`points\[1\]\['w'\]` has shape \(3,\)"):
        check_monotone(Identity(SHAPES), [POINTS[0], {"w": torch.zeros(3)}])
    with pytest.raises(TypeError, match=r"`points` must be a sequence of dual points"):
        check_monotone(Identity(SHAPES), POINTS[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`lanczos_steps` must be an int ≥ 0, got -1"):
        check_monotone(Identity(SHAPES), POINTS, lanczos_steps=-1)


def test_duplicate_points_are_fine() -> None:
    """Was a ValueError; duplicates now are skipped and counted, the local certificate stands."""
    report = check_monotone(Identity(SHAPES), POINTS[:1] * 2)
    assert report.passed and "1 duplicates skipped" in report.detail


@given(dual_points({"a": (2, 3), "b": ()}, bound=2.5))
def test_dual_points_are_bounded_and_shaped(z: dict[str, Tensor]) -> None:
    assert z["a"].shape == (2, 3) and z["b"].shape == ()
    assert all(t.dtype == torch.float64 and t.abs().max() <= 2.5 for t in z.values())


@given(param_dicts(max_tensors=2))
def test_param_dicts_fit_maps_built_from_them(phi: dict[str, Tensor]) -> None:
    g = Diagonal(phi).double()
    g.check_fits(phi, argument="phi")
    assert 1 <= len(phi) <= 4  # up to two layers, each a weight and maybe a bias


@given(shape_dicts(max_layers=4, max_numel=4096))
def test_shape_dicts_are_layer_like_and_within_budget(shapes: dict[str, tuple[int, ...]]) -> None:
    assert sum(math.prod(s) for s in shapes.values()) <= 4096 + 4 * 256
    for s in shapes.values():
        assert len(s) in (0, 1, 2, 4)
        if len(s) == 4:
            assert s[2] == s[3] and s[2] in (1, 3, 5)  # conv kernels (C_out, C_in, k, k)


def test_shape_dicts_reach_wide_linear_layers_and_conv_kernels() -> None:
    seen: set[str] = set()

    @given(shape_dicts(max_layers=3, max_numel=8192))
    def run(shapes: dict[str, tuple[int, ...]]) -> None:
        for s in shapes.values():
            if len(s) == 2 and s[1] > 512:
                seen.add("wide")
            if len(s) == 4:
                seen.add("conv")
            if len(s) == 0:
                seen.add("scalar")

    run()
    assert seen == {"wide", "conv", "scalar"}


def test_dual_points_spread_magnitudes_over_the_domain() -> None:
    tops: list[float] = []

    @given(dual_points({"w": (64,)}))
    def run(z: dict[str, Tensor]) -> None:
        tops.append(float(z["w"].abs().max()))

    run()
    positive = [t for t in tops if t > 0]
    assert max(tops) <= 1e3 and max(positive) > 10 and min(positive) < 0.1


@given(point_lists({"w": (3,), "b": ()}, min_size=2, max_size=4))
def test_point_lists_are_distinct_by_construction(points: list[dict[str, Tensor]]) -> None:
    flats = [torch.cat([p["w"], p["b"].reshape(1)]) for p in points]
    for i in range(len(flats)):
        for j in range(i):
            assert not torch.equal(flats[i], flats[j])


def test_points_for_uses_the_models_own_shapes_and_dtype() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Linear(4, 600)).float()

    @given(points_for(model))
    def run(points: list[dict[str, Tensor]]) -> None:
        assert points[0]["0.weight"].shape == (3, 2, 3, 3) and points[0]["1.weight"].shape == (
            600,
            4,
        )
        assert points[0]["0.bias"].dtype == torch.float32 and len(points) >= 2

    run()
    simplex = mo.maps.Entropic({"w": (4,)}, domain="simplex")

    @given(points_for(simplex, bound=5.0))
    def projected(points: list[dict[str, Tensor]]) -> None:
        assert all(abs(float(p["w"].sum())) < 1e-9 for p in points)  # canonical_dual applied

    projected()


def test_strategy_and_sampler_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"`bound` must be a positive finite number, got 0"):
        dual_points({"a": (1,)}, bound=0)
    with pytest.raises(ValueError, match=r"`smallest` must be in \(0, bound=1\], got 2"):
        dual_points({"a": (1,)}, bound=1.0, smallest=2.0)
    with pytest.raises(ValueError, match=r"`min_size` and `max_size` must satisfy"):
        point_lists({"a": (1,)}, min_size=3, max_size=2)
    with pytest.raises(ValueError, match=r"`n` must be a positive int, got 0"):
        sample_points({"a": (1,)}, n=0)


def test_sample_points_are_seeded_distinct_and_bounded() -> None:
    a = sample_points({"w": (4, 3, 3, 3), "b": (4,)}, n=5, seed=7, bound=50.0)
    b = sample_points({"w": (4, 3, 3, 3), "b": (4,)}, n=5, seed=7, bound=50.0)
    assert all(torch.equal(x["w"], y["w"]) for x, y in zip(a, b))
    assert all(float(p["w"].abs().max()) <= 50.0 for p in a)
    flats = [torch.cat([p["w"].reshape(-1), p["b"]]) for p in a]
    assert all(not torch.equal(flats[i], flats[j]) for i in range(5) for j in range(i))


class TurnsBack(mo.MirrorMap):
    """g(z) = z − 3·exp(−z²)·z: monotone far out, decreasing near 0 (g′(0) = −2)."""

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        w = z["w"]
        return {"w": w - 3.0 * torch.exp(-(w**2)) * w}


def test_local_certificate_catches_what_far_apart_pairs_miss() -> None:
    g = TurnsBack(SHAPES)
    far = _pts([5.0, 5.0], [-5.0, -5.0], [5.0, -5.0], [0.0, 0.0])
    assert check_monotone(g, far, local_probes=0).passed  # the pairs alone: looks fine
    with pytest.raises(PropertyError, match=r"measured -2 < bound 0.*at z = points\[3\]"):
        check_monotone(g, far)  # at z = 0 the Jacobian is −2·I
    with pytest.raises(ValueError, match=r"`local_probes` must be an int ≥ 0, got -1"):
        check_monotone(g, far, local_probes=-1)


class DetachedScale(mo.MirrorMap):
    """g(z) = s ⊙ z with the scale detached: the meta-gradient w.r.t. s is silently zero."""

    def __init__(self) -> None:
        super().__init__(SHAPES)
        self.s = torch.nn.Parameter(torch.full((2,), 1.5, dtype=torch.float64))

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"w": self.s.detach() * z["w"]}


def test_kit_catches_a_map_whose_meta_gradient_is_wrong() -> None:
    loss = lambda p: (p["w"] ** 4).sum()  # noqa: E731
    z = {"w": torch.tensor([0.5, -1.0], dtype=torch.float64)}
    with pytest.raises(
        PropertyError,
        match=r"differentiable \(gradcheck through the inner loop\).*Jacobian mismatch",
    ):
        check_differentiable(DetachedScale(), loss, z=z)
    assert check_differentiable(Diagonal(SHAPES).double(), loss, z=z, steps=3).passed
    with pytest.raises(
        ValueError, match=r"needs float64 \(finite differences\): call mirror_map.double\(\)"
    ):
        check_differentiable(Diagonal(SHAPES), loss, {"w": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"Give exactly one of `phi` and `z`"):
        check_differentiable(Diagonal(SHAPES).double(), loss, z, z=z)
