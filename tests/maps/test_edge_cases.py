"""Edge cases over the whole registry: zero-size tensors, half precision, huge float32 values."""

from __future__ import annotations

import copy

import pytest
import torch

from mirroropt.maps import Entropic, Kronecker, PNorm
from tests.registry import CASES, SHAPES, MapCase

ids = [c.id for c in CASES]

#: a zero-size row block, a normal vector and a zero-size column block
ZERO_SIZE = {"a": torch.Size((0, 3)), "b": torch.Size((4,)), "c": torch.Size((3, 0))}


def _zero_size_shapes(case: MapCase) -> dict[str, torch.Size]:
    # a simplex axis of size 0 with other entries would be empty simplices (refused, see below)
    if case.id == "entropic-simplex-dim0":
        return {"c": torch.Size((3, 0)), "b": torch.Size((4, 2)), "d": torch.Size((0, 0))}
    if case.id == "entropic-simplex":
        return {"a": torch.Size((0, 3)), "b": torch.Size((4, 2)), "d": torch.Size((0, 0))}
    return ZERO_SIZE


# BlockIAF's encoder of an empty block is an nn.Linear with no inputs, whose init warns (harmless)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op:UserWarning")
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_zero_size_tensors_pass_through_every_map(case: MapCase) -> None:
    # Reproducer (issue 11): PNorm(per="tensor"), Entropic(simplex) and ConvexPotential crashed
    # on a tensor with no entries.
    shapes = _zero_size_shapes(case)
    g = case.build_trained(shapes)
    gen = torch.Generator().manual_seed(0)
    z = {
        n: (torch.rand(s, generator=gen, dtype=torch.float64) - 0.5).requires_grad_()
        for n, s in shapes.items()
    }
    phi = g.to_primal(z)
    assert {n: t.shape for n, t in phi.items()} == shapes
    assert all(bool(torch.isfinite(t).all()) for t in phi.values())
    if case.id.startswith("pnorm"):  # no parameters: the empty tensors must change nothing
        alone = {n: s for n, s in shapes.items() if s.numel()}
        ref = case.make(alone).to_primal({n: z[n] for n in alone})
        for n in alone:
            torch.testing.assert_close(phi[n], ref[n], rtol=1e-12, atol=1e-14)
    sum(t.sum() for t in phi.values()).backward()
    assert all(z[n].grad is not None and z[n].grad.shape == shapes[n] for n in shapes)
    if g.has_to_dual:
        back = g.to_dual({n: t.detach() for n, t in phi.items()})
        target = g.canonical_dual({n: t.detach() for n, t in z.items()})
        for n in shapes:
            torch.testing.assert_close(back[n], target[n], rtol=1e-9, atol=1e-9)
    for bound in (g.monotonicity_modulus(), g.lipschitz_constant()):
        assert bound is None or bound == bound  # a number (not nan) or no bound


def test_entropic_simplex_refuses_empty_slices() -> None:
    with pytest.raises(
        ValueError,
        match=r"`dim`=-1 of 'w' \(shape \(3, 0\)\) has size 0: a probability simplex needs",
    ):
        Entropic({"w": (3, 0)}, domain="simplex")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_half_precision_matches_float32_within_its_rounding(
    case: MapCase, dtype: torch.dtype
) -> None:
    # Reproducer (issue 11): Kronecker in float16/bfloat16 returned inf/nan (torch's CPU
    # matrix_exp in half); the monotone flow and ConvexPotential's bounds raised in half.
    g32 = case.build_trained(SHAPES).float()
    g_half = copy.deepcopy(g32).to(dtype)
    gen = torch.Generator().manual_seed(3)
    z = {n: 2 * torch.rand(s, generator=gen) - 1 for n, s in SHAPES.items()}
    z = {n: t.to(dtype).float() for n, t in z.items()}  # the same (representable) point
    with torch.no_grad():
        ref = g32.to_primal(z)
        out = g_half.to_primal({n: t.to(dtype) for n, t in z.items()})
    tol = 4 * torch.finfo(dtype).eps  # a few roundings, relative to the largest entry
    for n in SHAPES:
        assert out[n].dtype == dtype
        assert bool(torch.isfinite(out[n]).all())
        err = float((out[n].float() - ref[n]).abs().max() / ref[n].abs().max())
        assert err < 8 * tol, (n, err)
    for bound in (g_half.monotonicity_modulus(), g_half.lipschitz_constant()):
        assert bound is None or (bound == bound and abs(bound) < float("inf"))


def test_kronecker_half_factors_are_computed_in_float32() -> None:
    g = Kronecker({"w": (6, 5)})
    with torch.no_grad():
        g.log_factors["w"]["out"].copy_(0.5 * torch.eye(6) + 0.1)
    z = {"w": torch.ones(6, 5)}
    ref = g.to_primal(z)["w"]
    half = copy.deepcopy(g).half().to_primal({"w": z["w"].half()})["w"]
    torch.testing.assert_close(half.float(), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("p", [1.5, 3.0, "auto"])
def test_pnorm_float32_near_its_largest_value_is_finite(p: float | str) -> None:
    # Reproducer (issue 11): c · ‖v‖ overflowed before the multiply by |u|^{r-1}: inf/nan
    # although every true value fits in float32.
    z = torch.tensor([1e38] * 10 + [-1e38, 0.0, 0.5])
    g32, g64 = PNorm({"w": z.shape}, p=p), PNorm({"w": z.shape}, p=p)  # type: ignore[arg-type]
    for method in ("to_primal", "to_dual"):
        out = getattr(g32, method)({"w": z})["w"]
        ref = getattr(g64, method)({"w": z.double()})["w"]
        assert ref.abs().max() < torch.finfo(torch.float32).max  # the true values fit
        assert bool(torch.isfinite(out).all())
        torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-30)
