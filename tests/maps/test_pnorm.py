"""p-norm map: numpy closed forms, round trip, p = 2 is GD, bounds, zeros, stability, errors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mirroropt import adapt
from mirroropt.maps import MAPS, Identity, PNorm
from mirroropt.testing import (
    check_gradient_field,
    check_lipschitz,
    check_monotone,
    check_round_trip,
)

DT = torch.float64
SHAPES = {
    "w": torch.Size((3, 4)),
    "b": torch.Size((4,)),
    "k": torch.Size((2, 1, 3)),
    "s": torch.Size(()),
}
PS = [1.1, 1.5, 2.0, 2.5, 4.0, "auto"]


def _random(
    shapes: Mapping[str, tuple[int, ...]], seed: int, scale: float = 2.0
) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=gen, dtype=DT) for n, s in shapes.items()}


def _np_grad_half_sq_norm(x: np.ndarray, r: float) -> np.ndarray:
    """sign(x)|x|^{r−1} / ‖x‖_r^{r−2}, the textbook formula."""
    norm = np.sum(np.abs(x) ** r) ** (1.0 / r)
    return np.sign(x) * np.abs(x) ** (r - 1) / norm ** (r - 2)


def _np_reference(
    x: dict[str, Tensor], ps: dict[str, float], per: str, dual: bool
) -> dict[str, np.ndarray]:
    r = {n: (p / (p - 1) if dual else p) for n, p in ps.items()}
    if per == "tensor":
        return {
            n: _np_grad_half_sq_norm(x[n].numpy().reshape(-1), r[n]).reshape(x[n].shape) for n in x
        }
    flat = np.concatenate([x[n].numpy().reshape(-1) for n in x])
    out = _np_grad_half_sq_norm(flat, r[next(iter(r))])
    parts = np.split(out, np.cumsum([x[n].numel() for n in x])[:-1])
    return {n: part.reshape(x[n].shape) for n, part in zip(x, parts)}


@pytest.mark.parametrize("per", ["all", "tensor"])
@pytest.mark.parametrize("p", PS)
def test_closed_form_against_numpy(p: float | str, per: str) -> None:
    g = PNorm(SHAPES, p=p, per=per)  # type: ignore[arg-type]
    z, phi = _random(SHAPES, 0), _random(SHAPES, 1)
    primal, dual = g.to_primal(z), g.to_dual(phi)
    ref_primal = _np_reference(z, g.exponents, per, dual=True)
    ref_dual = _np_reference(phi, g.exponents, per, dual=False)
    for n in SHAPES:
        np.testing.assert_allclose(primal[n].numpy(), ref_primal[n], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dual[n].numpy(), ref_dual[n], rtol=1e-12, atol=1e-14)


def test_auto_exponent() -> None:
    total = sum(s.numel() for s in SHAPES.values())  # 12 + 4 + 6 + 1 = 23
    joint = PNorm(SHAPES)
    assert joint.exponents == dict.fromkeys(SHAPES, 1 + 1 / math.log(total))
    split = PNorm(SHAPES, per="tensor")
    assert split.exponents == {
        "w": 1 + 1 / math.log(12),
        "b": 1 + 1 / math.log(4),
        "k": 1 + 1 / math.log(6),
        "s": 2.0,
    }
    assert PNorm({"x": (2,)}).exponents["x"] == 2.0  # d ≤ e: capped at 2 (p ≤ 2 needs ln d ≥ 1)


@pytest.mark.parametrize("per", ["all", "tensor"])
@pytest.mark.parametrize("p", PS)
def test_round_trip(p: float | str, per: str) -> None:
    g = PNorm(SHAPES, p=p, per=per)  # type: ignore[arg-type]
    points = [_random(SHAPES, s) for s in range(3)]
    points.append({n: t.masked_fill(t.abs() < 1.0, 0.0) for n, t in points[0].items()})  # zeros
    points.append({n: torch.zeros(s, dtype=DT) for n, s in SHAPES.items()})
    assert check_round_trip(g, points, atol=1e-12, rtol=1e-10).passed
    phi = _random(SHAPES, 5)  # and the other way round
    back = g.to_primal(g.to_dual(phi))
    for n in SHAPES:
        torch.testing.assert_close(back[n], phi[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per", ["all", "tensor"])
def test_p_two_is_gradient_descent_exactly(per: Literal["all", "tensor"]) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(6, 3, dtype=DT), torch.randn(6, 2, dtype=DT)

    def loss(p: dict[str, Tensor]) -> Tensor:
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()

    phi = {n: p.detach() for n, p in model.named_parameters()}
    got = adapt(PNorm(model, p=2, per=per), loss, phi, lr=0.1, steps=4)
    ref = adapt(Identity(model), loss, phi, lr=0.1, steps=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(got[n], ref[n])
        torch.testing.assert_close(got[n], p.detach(), rtol=1e-14, atol=1e-14)
    assert PNorm(model, p=2).monotonicity_modulus() == PNorm(model, p=2).lipschitz_constant() == 1.0


@pytest.mark.parametrize("per", ["all", "tensor"])
@pytest.mark.parametrize("p", PS)
def test_gradient_field_monotone_and_stated_bounds(p: float | str, per: str) -> None:
    g = PNorm(SHAPES, p=p, per=per)  # type: ignore[arg-type]
    points = [_random(SHAPES, s) for s in range(5)]
    assert check_gradient_field(g, points).passed
    assert check_monotone(g, points).measured > 0  # against μ when stated, else strictly
    if g.lipschitz_constant() is not None:
        assert check_lipschitz(g, points).passed
    ps = set(g.exponents.values())
    assert (g.lipschitz_constant() is None) == any(e > 2 for e in ps)
    assert (g.monotonicity_modulus() is None) == any(e < 2 for e in ps)


def test_bounds_are_honest_where_none() -> None:
    """p < 2: not strongly monotone (ratio → 0); p > 2: not Lipschitz (ratio → ∞); L = q − 1."""
    sparse = PNorm({"x": (2,)}, p=1.5)  # q = 3, L = 2
    assert sparse.lipschitz_constant() == pytest.approx(2.0)
    a, b = {"x": torch.tensor([1.0, 0.0], dtype=DT)}, {"x": torch.tensor([1.0, 1e-4], dtype=DT)}
    assert check_monotone(sparse, [a, b]).measured < 1e-3
    dense = PNorm({"x": (2,)}, p=3.0)  # q = 1.5, μ = 1/2
    assert dense.monotonicity_modulus() == pytest.approx(0.5)
    c = {"x": torch.tensor([1.0, 1e-6], dtype=DT)}
    assert check_lipschitz(dense, [a, c], constant=1.0, raise_on_failure=False).measured > 100
    # the stated L = q − 1 is an upper bound (not tight: the measured sup is ≈ 1.587 for q = 3)
    gen = torch.Generator().manual_seed(0)
    pts = [{"x": torch.randn(2, generator=gen, dtype=DT)} for _ in range(40)]
    assert check_lipschitz(sparse, pts).measured <= 2.0


def _derivatives(fn, z: dict[str, Tensor]) -> list[Tensor]:
    weights = _random({n: t.shape for n, t in z.items()}, 9, scale=1.0)

    def probe(x: dict[str, Tensor]) -> Tensor:
        out = fn(x)
        return sum(((out[n] * weights[n]) ** 2).sum() + (out[n] * weights[n]).sum() for n in out)  # type: ignore[return-value]

    def directional(x: dict[str, Tensor]) -> Tensor:
        d = torch.func.grad(probe)(x)
        return sum((d[n] * weights[n]).sum() for n in d)  # type: ignore[return-value]

    return [*torch.func.grad(probe)(z).values(), *torch.func.grad(directional)(z).values()]


@pytest.mark.parametrize("per", ["all", "tensor"])
@pytest.mark.parametrize("p", [1.2, 1.5, 3.0, "auto"])
def test_zeros_give_finite_first_and_second_derivatives(p: float | str, per: str) -> None:
    g = PNorm(SHAPES, p=p, per=per)  # type: ignore[arg-type]
    origin = {n: torch.zeros(s, dtype=DT) for n, s in SHAPES.items()}
    some_zeros = {n: t.masked_fill(t.abs() < 1.5, 0.0) for n, t in _random(SHAPES, 3).items()}
    for point in (origin, some_zeros):
        for fn in (g.to_primal, g.to_dual):
            out = fn(point)
            for n in SHAPES:
                assert bool(torch.isfinite(out[n]).all())
                assert bool((out[n][point[n] == 0] == 0).all())  # g(0) = 0, coordinatewise
            for d in _derivatives(fn, point):
                assert bool(torch.isfinite(d).all())
    # at the origin of a norm group the returned Jacobian is the identity (p = 2's)
    jac = torch.func.jacrev(lambda v: g.to_primal({**origin, "b": v})["b"])(origin["b"])
    torch.testing.assert_close(jac, torch.eye(4, dtype=DT))


@pytest.mark.parametrize("p", [1.2, 1.5, 2.5])
def test_gradcheck_to_primal_and_through_adapt(p: float) -> None:
    g = PNorm({"w": (2, 3), "b": (2,)}, p=p)
    z = _random({"w": (2, 3), "b": (2,)}, 11)
    target = _random({"w": (2, 3), "b": (2,)}, 12)

    def loss(q: dict[str, Tensor]) -> Tensor:
        return sum(((q[n] - target[n]) ** 2 * (1 + 0.3 * q[n] ** 2)).sum() for n in q)  # type: ignore[return-value]

    def f(w: Tensor, b: Tensor) -> tuple[Tensor, ...]:
        return tuple(g.to_primal({"w": w, "b": b}).values())

    def run(w: Tensor, b: Tensor, lr: Tensor) -> tuple[Tensor, ...]:
        return tuple(adapt(g, loss, {"w": w, "b": b}, lr=lr, steps=3).values())

    inputs = (z["w"].requires_grad_(), z["b"].requires_grad_())
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
    phi0 = tuple(
        t.detach().requires_grad_()
        for t in _random({"w": (2, 3), "b": (2,)}, 13, scale=1.0).values()
    )
    lr = torch.tensor(0.02, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(run, (*phi0, lr))


def test_large_dual_exponent_is_stable_in_float32() -> None:
    """p = 1.05 (q = 21): |z|^21 would overflow/underflow float32 at |z| = 1e3 / 1e-3."""
    g = PNorm({"w": (6,)}, p=1.05)
    for scale in (1e3, 1e-3):
        z = {"w": scale * torch.tensor([1.0, -0.9, 0.5, 0.0, -0.2, 0.95])}
        got = g.to_primal(z)["w"]
        ref = _np_grad_half_sq_norm(z["w"].double().numpy(), 1.05 / 0.05)
        assert bool(torch.isfinite(got).all())
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6 * scale)
        back = g.to_dual(g.to_primal(z))["w"]
        torch.testing.assert_close(back, z["w"], rtol=1e-4, atol=1e-5 * scale)


def test_vmap_over_tasks_equals_loop() -> None:
    g = PNorm(SHAPES, p=1.5)
    targets = {n: torch.randn(3, *s, dtype=DT) for n, s in SHAPES.items()}
    phi = _random(SHAPES, 10)

    def one(target: dict[str, Tensor]) -> dict[str, Tensor]:
        def loss(q: dict[str, Tensor]) -> Tensor:
            return sum(((q[n] - target[n]) ** 2).sum() for n in q)  # type: ignore[return-value]

        return adapt(g, loss, phi, lr=0.05, steps=3)

    batched = torch.func.vmap(one)(targets)
    for i in range(3):
        single = one({n: t[i] for n, t in targets.items()})
        for n in SHAPES:
            torch.testing.assert_close(batched[n][i], single[n], rtol=1e-12, atol=1e-12)


def test_registry_and_errors() -> None:
    assert MAPS["pnorm"] is PNorm
    with pytest.raises(ValueError, match=r"`per` must be 'all' or 'tensor', got 'layer'"):
        PNorm(SHAPES, per="layer")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`p` must be a number or 'auto', got list"):
        PNorm(SHAPES, p=[2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`p` must be a number or 'auto', got bool"):
        PNorm(SHAPES, p=True)
    with pytest.raises(ValueError, match=r"`p` must be a number in \(1, inf\) or 'auto', got 'ln'"):
        PNorm(SHAPES, p="ln")  # type: ignore[arg-type]
    for bad in (1.0, 0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"`p` must be a number in \(1, inf\) or 'auto', got"):
            PNorm(SHAPES, p=bad)


@pytest.mark.parametrize("per", ["all", "tensor"])
@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_potential_gradient_is_to_primal(p: float, per: str) -> None:
    from mirroropt.maps import PNorm

    m = PNorm({"a": torch.zeros(3, 2), "b": torch.zeros(4)}, p=p, per=per)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    z = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in m.shapes.items()}
    grads = torch.func.grad(m.potential)(z)
    for n, g in m.to_primal(z).items():
        torch.testing.assert_close(grads[n], g, rtol=1e-12, atol=1e-14)
