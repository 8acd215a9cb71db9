"""Maps that are provably wrong in one way each: the kit must FAIL every one, with a witness."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

import mirroropt as mo

DT = torch.float64


class Reflection(mo.MirrorMap):
    """g(z) = (I − 2uuᵀ) z on 48 coordinates: one eigenvalue −1, the rest 1; claims μ = 0.5."""

    is_linear = True
    has_to_dual = True

    def __init__(self, *, d: int = 48, seed: int = 0) -> None:
        super().__init__({"w": (d,)})
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(d, generator=gen, dtype=DT)
        self.register_buffer("u", u / u.norm())

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        w = z["w"]
        return {"w": w - 2.0 * self.u * (self.u @ w)}

    def to_dual(self, phi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.to_primal(phi)  # a reflection is its own inverse

    def monotonicity_modulus(self) -> float:
        return 0.5

    def lipschitz_constant(self) -> float:
        return 1.0


class UnflaggedReflection(Reflection):
    """The same reflection without the ``is_linear`` flag: every point is certified."""

    is_linear = False


class Wiggle(mo.MirrorMap):
    """g(z) = z + a·sin(ω z) per coordinate: slope 1 + aω·cos(ω z) ∈ [1 − aω, 1 + aω].

    With a = 0.0099, ω = 100 the true L is 1.99 while pairs far apart see slope ≈ 1;
    with a = 0.5, ω = 1: μ = 0.5, L = 1.5 exactly. Claims whatever it is given.
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        a: float,
        omega: float,
        mu: float | None,
        lip: float | None,
    ) -> None:
        super().__init__(shapes)
        self.a, self.omega, self.mu, self.lip = a, omega, mu, lip

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: t + self.a * torch.sin(self.omega * t) for n, t in z.items()}

    def monotonicity_modulus(self) -> float | None:
        return self.mu

    def lipschitz_constant(self) -> float | None:
        return self.lip


class TurnsBackFar(mo.MirrorMap):
    """g(z) = z − 2·sign(z)·softplus-smoothed max(|z| − 10, 0): slope ≈ −1 for |z| > 10 only."""

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for n, t in z.items():
            excess = torch.nn.functional.softplus(t.abs() - 10.0, beta=20.0)
            out[n] = t - 2.0 * torch.sign(t) * excess
        return out


class OneBadConvEntry(mo.MirrorMap):
    """The identity, except g flips the sign of one conv-kernel coordinate (true μ = −1)."""

    is_linear = True

    def __init__(self, shapes: dict[str, tuple[int, ...]], name: str, index: tuple[int, ...]):
        super().__init__(shapes)
        self.name, self.index = name, index
        mask = torch.ones(self.shapes[name], dtype=DT)
        mask[index] = -1.0
        self.register_buffer("mask", mask)

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: (t * self.mask if n == self.name else t) for n, t in z.items()}

    def monotonicity_modulus(self) -> float:
        return 1.0


class DropsKey(mo.MirrorMap):
    """Forgets every tensor but the first: a KeyError inside a naive kit."""

    has_to_dual = True

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        first = next(iter(self.shapes))
        return {first: z[first]}

    def to_dual(self, phi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return dict(phi)

    def monotonicity_modulus(self) -> float:
        return 1.0


class _Claims(mo.MirrorMap):
    inner: mo.MirrorMap
    mu: float | None
    lip: float | None

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.inner.to_primal(z)

    def to_dual(self, phi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.inner.to_dual(phi)

    def canonical_dual(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.inner.canonical_dual(z)

    def monotonicity_modulus(self) -> float | None:
        return self.mu

    def lipschitz_constant(self) -> float | None:
        return self.lip


def claims(inner: mo.MirrorMap, *, mu: float | None, lip: float | None) -> mo.MirrorMap:
    """``inner`` with the same flags and maps but other stated constants (named like it)."""
    cls = type(
        type(inner).__name__,
        (_Claims,),
        {
            "has_to_dual": inner.has_to_dual,
            "is_gradient_field": inner.is_gradient_field,
            "is_linear": inner.is_linear,
        },
    )
    out = cls(inner.shapes)
    out.inner, out.mu, out.lip = inner, mu, lip
    return out
