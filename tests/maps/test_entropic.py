"""Entropic map: multiplicative-weights closed forms, stability at |z| = 1e3, round trip, errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mirroropt import adapt
from mirroropt.maps import MAPS, Entropic
from mirroropt.testing import check_lipschitz, check_monotone, check_round_trip

DT = torch.float64
SHAPES = {"w": torch.Size((3, 4)), "b": torch.Size((4,)), "k": torch.Size((2, 3, 5))}


def _random(shapes: dict[str, torch.Size], seed: int, scale: float = 1.0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=gen, dtype=DT) for n, s in shapes.items()}


def _loss(target: dict[str, Tensor]):
    def loss(p: dict[str, Tensor]) -> Tensor:
        return sum(((p[n] - target[n]) ** 2 * (1 + p[n] ** 2)).sum() for n in p)  # type: ignore[return-value]

    return loss


@pytest.mark.parametrize("dim", [-1, 0])
def test_simplex_is_multiplicative_weights(dim: int) -> None:
    """φ_{k+1} ∝ φ_k ⊙ exp(−α ∇L(φ_k)) along ``dim``, over K = 5 steps."""
    g = Entropic(SHAPES, domain="simplex", dim=dim)
    loss = _loss(_random(SHAPES, 0))
    phi0 = {n: torch.softmax(t, dim=dim) for n, t in _random(SHAPES, 1).items()}
    got = adapt(g, loss, phi0, lr=0.3, steps=5)
    phi = dict(phi0)
    for _ in range(5):
        grads = torch.func.grad(loss)(phi)
        unnormalized = {n: phi[n] * torch.exp(-0.3 * grads[n]) for n in phi}
        phi = {n: u / u.sum(dim=dim, keepdim=True) for n, u in unnormalized.items()}
    for n in SHAPES:
        torch.testing.assert_close(got[n], phi[n], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[n].sum(dim=dim), torch.ones_like(got[n].sum(dim=dim)))


def test_orthant_is_exponentiated_gradient() -> None:
    """φ_1 = φ_0 ⊙ exp(−α ∇L(φ_0)) exactly after one step, and the same recursion over K = 4."""
    g = Entropic(SHAPES)
    loss = _loss(_random(SHAPES, 2))
    phi0 = {n: torch.exp(t) for n, t in _random(SHAPES, 3, scale=0.5).items()}
    grads = torch.func.grad(loss)(phi0)
    one = adapt(g, loss, phi0, lr=0.05, steps=1)
    for n in SHAPES:
        torch.testing.assert_close(
            one[n], phi0[n] * torch.exp(-0.05 * grads[n]), rtol=1e-14, atol=0
        )
    got = adapt(g, loss, phi0, lr=0.05, steps=4)
    phi = dict(phi0)
    for _ in range(4):
        grads = torch.func.grad(loss)(phi)
        phi = {n: phi[n] * torch.exp(-0.05 * grads[n]) for n in phi}
    for n in SHAPES:
        torch.testing.assert_close(got[n], phi[n], rtol=1e-12, atol=0)


def _first_and_second_derivatives(fn, z: dict[str, Tensor]) -> list[Tensor]:
    """∇ and a Hessian-vector product of a scalar probe of ``fn`` at ``z`` (torch.func)."""
    weights = _random({n: t.shape for n, t in z.items()}, 9)

    def probe(x: dict[str, Tensor]) -> Tensor:
        out = fn(x)
        return sum(((out[n] * weights[n]) ** 2).sum() + (out[n] * weights[n]).sum() for n in out)  # type: ignore[return-value]

    grad = torch.func.grad(probe)(z)

    def directional(x: dict[str, Tensor]) -> Tensor:  # reverse-over-reverse (no forward AD)
        d = torch.func.grad(probe)(x)
        return sum((d[n] * weights[n]).sum() for n in d)  # type: ignore[return-value]

    hvp = torch.func.grad(directional)(z)
    return [*grad.values(), *hvp.values()]


def test_simplex_is_stable_at_large_dual_values() -> None:
    g = Entropic(SHAPES, domain="simplex")
    z = {n: 1e3 * torch.sign(t) * (1 + t.abs()) for n, t in _random(SHAPES, 4).items()}
    phi = g.to_primal(z)
    for n in SHAPES:
        assert bool(torch.isfinite(phi[n]).all())
        torch.testing.assert_close(phi[n].sum(-1), torch.ones_like(phi[n].sum(-1)))
    # reference: softmax(z) = softmax(z − max z) written out
    shifted = z["w"] - z["w"].amax(-1, keepdim=True)
    torch.testing.assert_close(phi["w"], shifted.exp() / shifted.exp().sum(-1, keepdim=True))
    for d in _first_and_second_derivatives(g.to_primal, z):
        assert bool(torch.isfinite(d).all())
    # second-order meta-gradient through adapt from a saturated dual initialization
    loss = _loss(_random(SHAPES, 5))

    def meta(z0: dict[str, Tensor]) -> Tensor:
        out = adapt(g, loss, z=z0, lr=0.1, steps=3)
        return sum(out[n].square().sum() for n in out)  # type: ignore[return-value]

    for t in torch.func.grad(meta)(z).values():
        assert bool(torch.isfinite(t).all())


def test_orthant_and_to_dual_are_finite_at_the_boundary() -> None:
    g = Entropic(SHAPES)
    z = {n: -1e3 + t for n, t in _random(SHAPES, 6).items()}  # exp underflows to 0
    for d in [*g.to_primal(z).values(), *_first_and_second_derivatives(g.to_primal, z)]:
        assert bool(torch.isfinite(d).all())
    phi = {n: torch.exp(t).masked_fill(t > 0.5, 0.0) for n, t in _random(SHAPES, 7).items()}
    for m in (g, Entropic(SHAPES, domain="simplex")):
        p = (
            phi
            if m.domain == "orthant"
            else {n: t / t.sum(-1, keepdim=True) for n, t in phi.items()}
        )
        dual = m.to_dual(p)
        floor = torch.log(torch.tensor(torch.finfo(DT).tiny, dtype=DT))
        if m.domain == "orthant":
            assert float(dual["w"].min()) == pytest.approx(float(floor))
        for d in [*dual.values(), *_first_and_second_derivatives(m.to_dual, p)]:
            assert bool(torch.isfinite(d).all())


def test_round_trip_on_the_canonical_dual_subspace() -> None:
    simplex = Entropic(SHAPES, domain="simplex", dim=0)
    z = _random(SHAPES, 8, scale=3.0)
    back = simplex.to_dual(simplex.to_primal(z))
    canonical = simplex.canonical_dual(z)
    for n in SHAPES:
        torch.testing.assert_close(back[n], canonical[n], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(back[n], z[n] - z[n].mean(0, keepdim=True))
        assert not torch.allclose(back[n], z[n])  # raw z is NOT recovered: only up to shifts
    points = [simplex.canonical_dual(_random(SHAPES, s, scale=3.0)) for s in range(3)]
    assert check_round_trip(simplex, points).passed
    orthant = Entropic(SHAPES)
    assert check_round_trip(orthant, [_random(SHAPES, s, scale=3.0) for s in range(3)]).passed
    assert orthant.canonical_dual(z) == {n: z[n] for n in SHAPES}


def test_simplex_monotone_only_up_to_shifts_and_half_lipschitz() -> None:
    g = Entropic({"w": (2,)}, domain="simplex")
    z = {"w": torch.tensor([0.3, -1.2], dtype=DT)}
    shifted = {"w": z["w"] + 2.0}
    report = check_monotone(g, [z, shifted], raise_on_failure=False)
    assert abs(report.measured) < 1e-15  # <Δz, Δg> = 0 along shifts: not strictly monotone
    other = {"w": z["w"] + torch.tensor([2.0, 0.0], dtype=DT)}
    assert check_monotone(g, [z, other], local_probes=0).measured > 0.05  # pairwise only
    # L = 1/2 is the supremum: attained in the limit at z = (t, −t), t → 0
    near = [{"w": torch.tensor([t, -t], dtype=DT)} for t in (1e-4, -1e-4)]
    assert check_lipschitz(g, near).measured == pytest.approx(0.5, rel=1e-6)
    big = Entropic(SHAPES, domain="simplex")
    points = [big.canonical_dual(_random(SHAPES, s, scale=2.0)) for s in range(5)]
    assert check_lipschitz(big, points).measured < 0.5
    assert check_monotone(big, points).measured > 0
    assert big.lipschitz_constant() == 0.5 and big.monotonicity_modulus() is None  # type: ignore[func-returns-value]
    assert Entropic(SHAPES).lipschitz_constant() is None


def test_vmap_over_tasks_equals_loop() -> None:
    g = Entropic(SHAPES, domain="simplex")
    targets = {n: torch.randn(3, *s, dtype=DT) for n, s in SHAPES.items()}
    phi = {n: torch.softmax(t, -1) for n, t in _random(SHAPES, 10).items()}

    def one(target: dict[str, Tensor]) -> dict[str, Tensor]:
        return adapt(g, _loss(target), phi, lr=0.1, steps=3)

    batched = torch.func.vmap(one)(targets)
    for i in range(3):
        single = one({n: t[i] for n, t in targets.items()})
        for n in SHAPES:
            torch.testing.assert_close(batched[n][i], single[n], rtol=1e-12, atol=1e-14)


def test_registry_and_errors() -> None:
    assert MAPS["entropic"] is Entropic
    with pytest.raises(ValueError, match=r"`domain` must be 'orthant' or 'simplex', got 'ball'"):
        Entropic(SHAPES, domain="ball")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`dim` must be an int, got float"):
        Entropic(SHAPES, domain="simplex", dim=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`dim`=1 must be an axis .* 'b' has shape \(4,\)"):
        Entropic(SHAPES, domain="simplex", dim=1)
    with pytest.raises(ValueError, match=r"`dim`=-1 must be an axis .* 's' has shape \(\)"):
        Entropic({"s": ()}, domain="simplex")
    Entropic({"s": ()}, dim=5)  # the orthant ignores `dim`
    with pytest.raises(ValueError, match=r"`phi\['b'\]` must be non-negative .* minimum of -0.5"):
        Entropic({"b": (2,)}).to_dual({"b": torch.tensor([1.0, -0.5])})
    with pytest.raises(
        ValueError, match=r"`phi\['b'\]` must sum to 1 along dim=-1 .* error of 0.5"
    ):
        Entropic({"b": (2,)}, domain="simplex").to_dual({"b": torch.tensor([1.0, 0.5])})
