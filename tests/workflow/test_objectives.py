"""MetaMD's regret bound against hand-computed values on quadratics, and its building blocks."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from mirroropt import adapt_trajectory
from mirroropt.maps import Diagonal, Identity, MirrorMap
from mirroropt.workflow import (
    bregman_divergence,
    check_metamd_supported,
    dual_norm_sq,
    metamd_bound,
)

A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
C = torch.tensor([1.0, -2.0], dtype=torch.float64)


def quad(p: Mapping[str, Tensor]) -> Tensor:
    d = p["w"] - C
    return 0.5 * d @ A @ d


class Cubic(MirrorMap):
    """g(z) = z + s z³/3 elementwise: a nonlinear gradient field with h*(z) = z²/2 + s z⁴/12."""

    has_to_dual: ClassVar[bool] = False
    is_gradient_field: ClassVar[bool] = True

    def __init__(self, params: Any, s: float = 0.7) -> None:
        super().__init__(params)
        self.s = s

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: z[n] + self.s * z[n] ** 3 / 3 for n in self.shapes}

    def h_star(self, z: Tensor) -> Tensor:
        return (z**2 / 2 + self.s * z**4 / 12).sum()


class Triangular(MirrorMap):
    is_gradient_field: ClassVar[bool] = False

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return dict(z)


def test_identity_bound_equals_hand_computation() -> None:
    m = Identity({"w": torch.zeros(2)})
    phi0, lr = {"w": torch.tensor([0.5, 0.5], dtype=torch.float64)}, 0.3
    t = adapt_trajectory(m, quad, phi0, lr=lr, steps=2)
    # by hand: two gradient steps on ½(φ−c)ᵀA(φ−c)
    p0 = phi0["w"]
    g0 = A @ (p0 - C)
    p1 = p0 - lr * g0
    g1 = A @ (p1 - C)
    p2 = p1 - lr * g1
    expected = ((p2 - p0) ** 2).sum() / (2 * lr) + lr / 2 * ((g0**2).sum() + (g1**2).sum())
    torch.testing.assert_close(metamd_bound(m, t, lr), expected, rtol=1e-12, atol=0)


def test_diagonal_bound_value_and_gradient_hold_the_comparator_fixed() -> None:
    shapes = {"w": torch.zeros(2, dtype=torch.float64)}
    m = Diagonal(shapes).double()
    with torch.no_grad():
        m.log_scale["w"].copy_(torch.tensor([0.3, -0.4]))
    phi0, lr = {"w": torch.tensor([0.5, 0.5], dtype=torch.float64)}, 0.2
    bound = metamd_bound(m, adapt_trajectory(m, quad, phi0, lr=lr, steps=3), lr)

    rho = m.log_scale["w"].detach().clone().requires_grad_(True)
    d = rho.exp()
    p, gs = phi0["w"], []
    for _ in range(3):  # Meta-SGD by hand: φ ← φ − α d ⊙ ∇L
        g = A @ (p - C)
        gs.append(g)
        p = p - lr * d * g
    star = p.detach()  # the fixed comparator sg(φ_K)
    hand = (0.5 * ((star - phi0["w"]) ** 2 / d).sum()) / lr + lr / 2 * sum(
        (d * g * g).sum() for g in gs
    )
    torch.testing.assert_close(bound, hand, rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(bound, m.log_scale["w"])
    (hand_grad,) = torch.autograd.grad(hand, rho)
    torch.testing.assert_close(grad, hand_grad, rtol=1e-10, atol=0)


def test_bregman_divergence_linear_and_line_integral() -> None:
    z0 = {"w": torch.tensor([0.4, -1.1, 2.0], dtype=torch.float64)}
    zs = {"w": torch.tensor([-0.3, 0.5, 1.0], dtype=torch.float64)}
    cubic = Cubic({"w": torch.zeros(3)})
    closed = (
        cubic.h_star(z0["w"])
        - cubic.h_star(zs["w"])
        - (cubic.to_primal(zs)["w"] * (z0["w"] - zs["w"])).sum()
    )
    # g is a cubic polynomial: 2-point Gauss–Legendre integrates the degree-3 integrand exactly
    torch.testing.assert_close(
        bregman_divergence(cubic, z0, zs, nodes=2), closed, rtol=1e-12, atol=0
    )
    assert abs(float(bregman_divergence(cubic, z0, zs, nodes=1) - closed)) > 1e-3
    diag = Diagonal({"w": torch.zeros(3)}).double()
    with torch.no_grad():
        diag.log_scale["w"].copy_(torch.tensor([0.1, 0.2, -0.5]))
    dvec = diag.log_scale["w"].exp()
    delta = z0["w"] - zs["w"]
    torch.testing.assert_close(
        bregman_divergence(diag, z0, zs), 0.5 * (dvec * delta**2).sum(), rtol=1e-12, atol=0
    )


def test_dual_norm_is_the_jacobian_quadratic_form() -> None:
    cubic = Cubic({"w": torch.zeros(3)})
    z = {"w": torch.tensor([0.4, -1.1, 2.0], dtype=torch.float64)}
    g = {"w": torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)}
    jac = 1 + cubic.s * z["w"] ** 2  # diagonal Jacobian of z + s z³/3
    torch.testing.assert_close(dual_norm_sq(cubic, z, g), (jac * g["w"] ** 2).sum())


def test_supported_maps_and_errors() -> None:
    check_metamd_supported(Identity({"w": torch.zeros(1)}))
    with pytest.raises(TypeError, match=r"needs a map that is a gradient field.*Triangular is not"):
        check_metamd_supported(Triangular({"w": torch.zeros(1)}))
    with pytest.raises(TypeError, match=r"needs a closed-form to_dual.*Cubic has none"):
        check_metamd_supported(Cubic({"w": torch.zeros(1)}))
    with pytest.raises(
        TypeError, match=r"`mirror_map` must be a mirroropt.maps.MirrorMap, got int"
    ):
        check_metamd_supported(3)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"must be a MirrorMap that is a gradient field, got Triangular"
    ):
        bregman_divergence(Triangular({"w": torch.zeros(1)}), {}, {})
    m = Identity({"w": torch.zeros(2)})
    z = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"`nodes` must be a positive int, got 0"):
        bregman_divergence(m, z, z, nodes=0)
    t0 = adapt_trajectory(m, lambda p: (p["w"] ** 2).sum(), z, lr=0.1, steps=0)
    with pytest.raises(ValueError, match=r"`trajectory` must have at least one step"):
        metamd_bound(m, t0, 0.1)
    t1 = adapt_trajectory(m, lambda p: (p["w"] ** 2).sum(), z, lr=0.1, steps=1)
    with pytest.raises(TypeError, match=r"`lr` must be a positive number or a scalar tensor"):
        metamd_bound(m, t1, {"w": 0.1})  # type: ignore[arg-type]


def _metamd_cases() -> list[Any]:
    from tests.registry import CASES

    out = []
    for case in CASES:
        m = case.make(SHAPES_SMALL)
        if m.is_gradient_field and m.has_to_dual:
            out.append(pytest.param(case, id=case.id))
    return out


SHAPES_SMALL = {"a": torch.Size((3, 4)), "b": torch.Size((3,))}


@pytest.mark.parametrize("case", _metamd_cases())
def test_bound_is_the_linearized_regret_and_bounds_the_realised_one(case: Any) -> None:
    """For every map MetaMD accepts: B = Σ⟨∇L(φ_k), φ_k − φ_K⟩ ≥ Σ L(φ_k) − L(φ_K) (convex L).

    The old bound's α/2‖g_k‖²_* term at J_g(z_k) fails the equality for nonlinear maps (entropic:
    1.750 where the exact D_h(φ_k, φ_{k+1}) is 2.498).
    """
    m = case.build_trained(SHAPES_SMALL)
    gen = torch.Generator().manual_seed(3)
    z0 = {n: torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1 for n, s in m.shapes.items()}
    phi0 = {n: t.detach() for n, t in m.to_primal(z0).items()}
    target = {n: torch.rand(s, generator=gen, dtype=torch.float64) for n, s in m.shapes.items()}

    def loss(p: Mapping[str, Tensor]) -> Tensor:
        return sum(((p[n] - target[n]) ** 2).sum() for n in p) * 2.0  # type: ignore[return-value]

    lipschitz = m.lipschitz_constant()
    lr = 0.2 / (4.0 * lipschitz) if lipschitz else 0.05  # a stable step: the loss is 4-smooth
    with torch.no_grad():
        traj = adapt_trajectory(m, loss, phi0, lr=lr, steps=4, first_order=True)
        bound = metamd_bound(m, traj, lr)
    last = traj.phi[-1]
    linearized = sum(
        sum(float((g[n] * (p[n] - last[n])).sum()) for n in p)
        for p, g in zip(traj.phi[:-1], traj.grads)
    )
    realised = sum(float(loss(p) - loss(last)) for p in traj.phi[:-1])
    assert realised > 1e-3  # the trajectory moved, so the test has teeth
    assert abs(float(bound) - linearized) <= 1e-8 * abs(linearized)
    assert float(bound) >= realised - 1e-12


def test_entropic_bound_is_exact_where_the_local_norm_term_is_not() -> None:
    from mirroropt.maps import Entropic

    m = Entropic({"w": torch.zeros(4)}).double()
    phi0 = {"w": torch.full((4,), 0.5, dtype=torch.float64)}
    target = torch.tensor([3.0, 0.1, 2.0, 0.05], dtype=torch.float64)
    lr = 0.5

    def loss(p: Mapping[str, Tensor]) -> Tensor:
        return ((p["w"] - target) ** 2).sum()

    traj = adapt_trajectory(m, loss, phi0, lr=lr, steps=3)
    step_terms = [float(bregman_divergence(m, traj.z[k + 1], traj.z[k])) for k in range(3)]
    local = [float(lr**2 / 2 * dual_norm_sq(m, z, g)) for z, g in zip(traj.z, traj.grads)]
    # the local-norm surrogate α²/2‖g_k‖²_* at z_k is not D_h(φ_k, φ_{k+1}) for a nonlinear map
    assert abs(sum(step_terms) - sum(local)) > 0.05 * sum(step_terms)
    phi = [p["w"] for p in traj.phi]
    exact = sum(  # D_h for h(φ) = Σ φ log φ − φ (the orthant entropy), by hand
        float((a * (a / b).log() - a + b).sum()) for a, b in itertools.pairwise(phi)
    )
    assert abs(sum(step_terms) - exact) <= 1e-10 * exact
