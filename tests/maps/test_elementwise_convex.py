"""ElementwiseConvex: closed form vs autograd, derivative bounds, identity init, to_dual, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import mirroropt
from mirroropt.maps import MAPS, ElementwiseConvex
from mirroropt.testing import check_differentiable, check_lipschitz, check_monotone
from mirroropt.testing.strategies import dual_points
from tests.maps._helpers import MapCall, tiny_problem
from tests.registry import SHAPES, perturbed

Params = dict[str, torch.Tensor]


def _trained(scale: float = 1.0, seed: int = 1, terms: int = 4) -> ElementwiseConvex:
    g = perturbed(ElementwiseConvex(SHAPES, terms=terms), scale, seed)
    assert isinstance(g, ElementwiseConvex)
    return g


def _random(seed: int, bound: float = 4.0, dtype: torch.dtype = torch.float64) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: bound * (2 * torch.rand(s, generator=gen, dtype=dtype) - 1) for n, s in SHAPES.items()
    }


def _max_err(a: Params, b: Params) -> float:
    return max(float((a[n] - b[n]).detach().abs().max()) for n in a)


def test_registered_and_flags() -> None:
    assert MAPS["elementwise_convex"] is ElementwiseConvex
    assert ElementwiseConvex.has_to_dual and ElementwiseConvex.is_gradient_field
    assert not ElementwiseConvex.is_linear
    g = ElementwiseConvex(SHAPES, terms=5)
    assert sum(p.numel() for p in g.parameters()) == len(SHAPES) * (3 * 5 + 1)
    assert "terms=5" in repr(g)


def test_closed_form_by_hand() -> None:
    """One tensor, one term: g(z) = μz + a w σ(wz + b) with the parametrization written out."""
    g = ElementwiseConvex({"w": (3,)}, terms=1).double()
    with torch.no_grad():
        g.log_mu["w"].fill_(math.log(0.5))
        g.raw_coef["w"].fill_(0.3)
        g.slope["w"].fill_(-1.7)
        g.shift["w"].fill_(0.4)
    z = [-2.0, 0.25, 3.0]
    a = math.log1p(math.exp(0.3))
    expected = [0.5 * v + a * -1.7 / (1 + math.exp(-(-1.7 * v + 0.4))) for v in z]
    out = g.to_primal({"w": torch.tensor(z, dtype=torch.float64)})["w"]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert g.monotonicity_modulus() == pytest.approx(0.5, abs=1e-15)
    assert g.lipschitz_constant() == pytest.approx(0.5 + 0.25 * a * 1.7**2, abs=1e-15)


def test_equals_autograd_of_its_potential() -> None:
    g = _trained(scale=1.5)
    for seed in range(3):
        z = _random(seed)
        auto = torch.func.grad(g.potential)(z)
        assert _max_err(g.to_primal(z), auto) < 1e-12
        # the Jacobian is diagonal (separable potential): 1ᵀJ equals the stated curvature ψ''
        # (vjp, not jvp: torch.func.jvp's first use scripts decompositions and warns)
        _, pullback = torch.func.vjp(g.to_primal, z)
        (row,) = pullback({n: torch.ones_like(t) for n, t in z.items()})
        assert _max_err(row, g.curvature(z)) < 1e-12
        # and a Jacobian row has a single nonzero (no coupling between coordinates)
        e = {n: torch.zeros_like(t) for n, t in z.items()}
        e["fc.weight"][1, 2] = 1.0
        (col,) = pullback(e)
        assert int(sum((c != 0).sum() for c in col.values())) == 1


@given(st.lists(dual_points(SHAPES, bound=6.0), min_size=3, max_size=3))
def test_derivative_bounds_hold(points: list[Params]) -> None:
    g = _trained(scale=1.5)
    points = [{k: v + 0.5 * i for k, v in p.items()} for i, p in enumerate(points)]
    mu, lip = g.monotonicity_modulus(), g.lipschitz_constant()
    assert check_monotone(g, points).measured >= mu * (1 - 1e-9)
    assert check_lipschitz(g, points).measured <= lip * (1 + 1e-9)
    with torch.no_grad():  # per tensor: ψ'' ∈ [μ_t, L_t] at every coordinate
        for name, c in g.curvature(points[0]).items():
            mu_t, a, w, _ = g._coefficients(name)
            assert float(c.min()) >= float(mu_t) * (1 - 1e-12)
            assert float(c.max()) <= float(mu_t + 0.25 * (a * w * w).sum()) * (1 + 1e-12)


def test_lipschitz_bound_is_attained() -> None:
    """σ' peaks at 1/4: with one term the stated L equals the curvature at z = -b/w."""
    g = ElementwiseConvex({"w": ()}, terms=1).double()
    with torch.no_grad():
        g.slope["w"].fill_(3.0)
        g.shift["w"].fill_(1.5)
    peak = g.curvature({"w": torch.tensor(-0.5, dtype=torch.float64)})["w"].detach()
    assert float(peak) == pytest.approx(g.lipschitz_constant(), rel=1e-14)


def test_identity_at_initialization_equals_gradient_descent() -> None:
    g = ElementwiseConvex(SHAPES).double()
    z = _random(7)
    assert all(torch.equal(g.to_primal(z)[n], z[n]) for n in SHAPES)
    assert _max_err(g.to_dual(z), z) == 0.0
    target = _random(8)

    def loss(p: Params) -> torch.Tensor:
        return sum(((p[n] - target[n]) ** 2 * (1 + p[n] ** 2)).sum() for n in p)  # type: ignore[return-value]

    phi = _random(9, bound=1.0)
    mirror = mirroropt.adapt(g, loss, phi, lr=0.05, steps=3)
    plain = dict(phi)
    for _ in range(3):  # hand-written gradient descent
        grads = torch.func.grad(loss)(plain)
        plain = {n: plain[n] - 0.05 * grads[n] for n in plain}
    assert _max_err(mirror, plain) < 1e-12


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_to_dual_round_trip_float64(scale: float) -> None:
    g = _trained(scale=scale, seed=2, terms=8)

    @given(dual_points(SHAPES, bound=8.0))
    def run(z: Params) -> None:
        with torch.no_grad():
            back = g.to_dual(g.to_primal(z))
        assert _max_err(back, z) < 1e-10

    run()


def test_to_dual_float32_and_under_vmap() -> None:
    g = _trained(scale=1.0, seed=3).float()
    z = _random(10, dtype=torch.float32)
    with torch.no_grad():
        assert _max_err(g.to_dual(g.to_primal(z)), z) < 1e-5
    g = g.double()
    batch = {n: torch.stack([_random(s)[n] for s in range(4)]) for n in SHAPES}
    with torch.no_grad():
        phis = g.to_primal(batch)
        vmapped = torch.func.vmap(g.to_dual)(phis)
        looped = [g.to_dual({n: phis[n][i] for n in SHAPES}) for i in range(4)]
    for i in range(4):
        assert _max_err({n: vmapped[n][i] for n in SHAPES}, looped[i]) < 1e-14
        assert (
            _max_err({n: vmapped[n][i] for n in SHAPES}, {n: batch[n][i] for n in SHAPES}) < 1e-10
        )


def test_to_dual_is_differentiable_by_the_implicit_function_theorem() -> None:
    g = _trained(scale=1.0, seed=4, terms=3)
    phi = g.to_primal(_random(11, bound=2.0))
    phi = {n: t.detach() for n, t in phi.items()}
    z = g.to_dual(phi)
    # dz/dφ = 1/ψ''(z), coordinate-wise (a diagonal Jacobian: the vjp with ones is its diagonal)
    _, pullback = torch.func.vjp(lambda p: g.to_dual(p), phi)
    (dz,) = pullback({n: torch.ones_like(t) for n, t in phi.items()})
    curvature = g.curvature({n: t.detach() for n, t in z.items()})
    assert _max_err(dz, {n: 1 / c for n, c in curvature.items()}) < 1e-12

    x = phi["fc.bias"].clone().requires_grad_(True)
    slope = g.slope["fc-bias"].detach().clone().requires_grad_(True)
    shell = MapCall(g, lambda m, p: m.to_dual(p))

    def to_dual_fc(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(
            shell, {"map.slope.fc-bias": slope}, ({**phi, "fc.bias": x},)
        )
        return out["fc.bias"]

    assert torch.autograd.gradcheck(to_dual_fc, (x, slope))
    assert torch.autograd.gradgradcheck(to_dual_fc, (x, slope))


def test_gradcheck_through_three_adapt_steps() -> None:
    """float64 gradcheck of φ_K w.r.t. every map parameter, the initialization φ_0 and lr."""
    phi, x, y = tiny_problem()
    g = perturbed(ElementwiseConvex(phi, terms=2), scale=0.8, seed=5)

    def loss_fn(p: Params) -> torch.Tensor:
        return ((torch.tanh(x @ p["w"].T + p["b"]) - y) ** 2).mean()

    assert check_differentiable(g, loss_fn, phi, lr=0.4, steps=3).passed


def test_mirror_descent_optimizer_matches_functional_adapt() -> None:
    phi, x, y = tiny_problem(1)
    g = perturbed(ElementwiseConvex(phi, terms=2), scale=0.8, seed=6)

    def loss_fn(p: Params) -> torch.Tensor:
        return ((torch.tanh(x @ p["w"].T + p["b"]) - y) ** 2).mean()

    expected = mirroropt.adapt(g, loss_fn, phi, lr=0.3, steps=3)
    params = {n: torch.nn.Parameter(t.clone()) for n, t in phi.items()}
    opt = mirroropt.MirrorDescent(params.items(), g, lr=0.3)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
    assert _max_err({n: p.detach() for n, p in params.items()}, expected) < 1e-12


def test_errors() -> None:
    with pytest.raises(ValueError, match="`terms` must be at least 1, got 0"):
        ElementwiseConvex(SHAPES, terms=0)
    with pytest.raises(TypeError, match="`terms` must be an int, got float"):
        ElementwiseConvex(SHAPES, terms=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`steps` must be a positive int, got 0"):
        ElementwiseConvex(SHAPES).to_dual(_random(0, dtype=torch.float32), steps=0)


def test_softplus_potential_matches_reference() -> None:
    """The potential uses softplus exactly (thresholded only where it rounds to the identity)."""
    g = _trained(scale=1.0, seed=8, terms=3)
    z = _random(12)
    ref = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for name in SHAPES:
            mu, a, w, b = g._coefficients(name)
            s = z[name].unsqueeze(-1) * w + b
            ref = ref + (0.5 * mu * z[name] ** 2).sum() + (torch.logaddexp(s, 0 * s) @ a).sum()
        assert float((g.potential(z) - ref).abs()) < 1e-11
        assert float(F.softplus(torch.tensor(40.0, dtype=torch.float64), threshold=40.0)) == 40.0


def test_functorch_meta_gradient_equals_autograd() -> None:
    """torch.func.grad over map weights and the primal initialization (through to_dual) equals autograd."""
    start, x, y = tiny_problem(3)
    g = perturbed(ElementwiseConvex(start), scale=0.8, seed=3)

    def loss_fn(p: Params) -> torch.Tensor:
        return ((torch.tanh(x @ p["w"].T + p["b"]) - y) ** 2).mean()

    shell = MapCall(g, lambda m, z: mirroropt.adapt(m, loss_fn, z, lr=0.3, steps=3))

    def meta(weights: Params, z: Params) -> torch.Tensor:
        return loss_fn(torch.func.functional_call(shell, weights, (z,)))

    weights = {f"map.{n}": p.detach() for n, p in g.named_parameters()}
    by_func = torch.func.grad(meta, argnums=(0, 1))(weights, start)
    leaves = {n: t.clone().requires_grad_(True) for n, t in start.items()}
    by_autograd = torch.autograd.grad(
        meta(dict(shell.named_parameters()), leaves), [*g.parameters(), *leaves.values()]
    )
    flat_func = [*by_func[0].values(), *by_func[1].values()]
    assert max(float((a - b).abs().max()) for a, b in zip(flat_func, by_autograd)) < 1e-12
    assert min(float(a.abs().max()) for a in by_autograd) > 0
