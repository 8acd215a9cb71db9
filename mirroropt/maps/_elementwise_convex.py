"""Elementwise convex map: a learned scalar strongly convex potential applied coordinate-wise."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirroropt._types import Params
from mirroropt._utils import is_transformed, key_of
from mirroropt.maps._base import MirrorMap

__all__ = ["ElementwiseConvex"]

#: Softplus switches to the identity above this argument. At 40 the switch is exact in float64
#: and float32 (log1p(e^40) rounds to 40 and sigmoid(40) to 1), and e^40 does not overflow float32.
SOFTPLUS_THRESHOLD = 40.0


@final
class ElementwiseConvex(MirrorMap):
    r"""Coordinate-wise :math:`g = \psi'` of a learned scalar strongly convex potential, per tensor.

    For each tensor :math:`t` the map learns a scalar potential (:math:`J` softplus terms)

    .. math::

        \psi_t(z) = \tfrac{\mu_t}{2} z^2 + \sum_{j=1}^{J} a_{tj}\,
        \operatorname{softplus}(w_{tj} z + b_{tj}), \qquad
        \mu_t = e^{\nu_t} > 0,\ a_{tj} = \operatorname{softplus}(\rho_{tj}) > 0,

    and applies its derivative to every coordinate of the tensor, in closed form (no autograd):

    .. math::

        h^*(z) = \sum_t \sum_i \psi_t(z_{t,i}), \qquad
        g(z)_{t,i} = \psi_t'(z_{t,i}) = \mu_t z_{t,i}
            + \sum_j a_{tj} w_{tj}\, \sigma(w_{tj} z_{t,i} + b_{tj}).

    Since :math:`\psi_t'' = \mu_t + \sum_j a_{tj} w_{tj}^2 \sigma'(\cdot)` and
    :math:`0 < \sigma' \le \tfrac14`, every coordinate map is strictly increasing with slope in
    :math:`[\mu_t,\ L_t]`, :math:`L_t = \mu_t + \tfrac14\sum_j a_{tj} w_{tj}^2`. So :math:`g` is
    strongly monotone with modulus :math:`\min_t \mu_t`, Lipschitz with :math:`\max_t L_t`, and a
    gradient field (the gradient of the separable convex :math:`h^*`; its Jacobian is diagonal).
    A mirror-descent step is :math:`z \leftarrow z - \alpha\nabla L(g(z))`: per coordinate, a
    nonlinear, learned, per-tensor reshaping of the step (Meta-SGD per layer when :math:`J = 0`
    or all :math:`w = 0`). Cost and memory are :math:`O(dJ)`; parameters :math:`3J + 1` per tensor.

    :meth:`to_dual` inverts :math:`g` coordinate-wise, :math:`z = (\psi_t')^{-1}(\phi)`, by a fixed
    number of vectorized safeguarded Newton steps on a bracket that provably holds the root,
    followed by two differentiable Newton steps that make the result differentiable by the
    implicit function theorem (:math:`\partial z/\partial\phi = 1/\psi_t''(z)`; derivatives exact
    to third order). No data-dependent control flow, so it runs under ``torch.func.vmap``/``grad``.

    Initialization and a note on the paper: the map is exactly the identity at initialization
    (:math:`\nu = 0`, :math:`w = 0`, so :math:`g(z) = 1\cdot z + \sum_j a_j\cdot 0`), so
    meta-training starts as MAML. The brief suggested zero-initializing the scales :math:`a_j`
    instead; but a smooth parametrization :math:`a = f(\rho) \ge 0` that reaches :math:`a = 0`
    has :math:`f'=0` there, and a clamp is dead once pushed below 0. In fact *any* smooth convex
    parametrization that is exactly the identity has zero first-order change of the curvature
    :math:`\psi''` at initialization (:math:`a_j w_j^2 = 0` for every term, and
    :math:`\psi''-\mu` is quadratic in :math:`w`); here the first-order meta-gradient moves
    :math:`\mu_t` (per-tensor step size) and :math:`w` (through the offset
    :math:`\sum_j a_j w_j\sigma(b_j)`), after which the nonlinear terms become active.

    Args:
        params: the tensors it acts on (a module, a mapping name → tensor/shape, or
            ``named_parameters()``).
        terms: number :math:`J \ge 1` of softplus terms per tensor.

    Raises:
        TypeError: if ``terms`` is not an int.
        ValueError: if ``terms`` < 1.

    Example:
        >>> import torch
        >>> from mirroropt.maps import ElementwiseConvex
        >>> g = ElementwiseConvex({"w": torch.zeros(3)}, terms=2).double()
        >>> z = {"w": torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)}
        >>> g.to_primal(z)["w"].detach()  # identity at initialization
        tensor([-1.,  0.,  2.], dtype=torch.float64)
        >>> with torch.no_grad():
        ...     _ = g.slope["w"].copy_(torch.tensor([1.5, -2.0]))
        >>> back = g.to_dual(g.to_primal(z))["w"]
        >>> bool(torch.allclose(back, z["w"], atol=1e-12, rtol=0))
        True

    References:
        Zhang, Li & Giannakis, "Learnable Loss Geometries with Mirror Descent for Scalable and
        Convergent Meta-Learning" (MetaMiDA), arXiv:2509.02418, 2025.
        Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
        arXiv:1707.09835, 2017.
    """

    has_to_dual: ClassVar[bool] = True
    is_gradient_field: ClassVar[bool] = True
    is_linear: ClassVar[bool] = False

    def __init__(self, params: Any, *, terms: int = 8) -> None:
        super().__init__(params)
        if isinstance(terms, bool) or not isinstance(terms, int):
            raise TypeError(f"`terms` must be an int, got {type(terms).__name__}.")
        if terms < 1:
            raise ValueError(f"`terms` must be at least 1, got {terms}.")
        self.terms = terms
        keys = [key_of(n) for n in self.shapes]
        # a_j = softplus(ρ_j) = 1/J at initialization; shifts b_j spread over [-2, 2] so that the
        # terms differ as soon as the slopes w_j leave zero.
        rho = math.log(math.expm1(1.0 / terms))
        self.log_mu = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in keys})
        self.raw_coef = nn.ParameterDict({k: nn.Parameter(torch.full((terms,), rho)) for k in keys})
        self.slope = nn.ParameterDict({k: nn.Parameter(torch.zeros(terms)) for k in keys})
        self.shift = nn.ParameterDict(
            {k: nn.Parameter(torch.linspace(-2.0, 2.0, terms)) for k in keys}
        )

    # ---------------------------------------------------------------------------------------------
    # per-tensor pieces

    def _coefficients(self, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(μ, a, w, b) of one tensor's potential."""
        key = key_of(name)
        return (
            self.log_mu[key].exp(),
            F.softplus(self.raw_coef[key]),
            self.slope[key],
            self.shift[key],
        )

    @staticmethod
    def _derivative(z: Tensor, mu: Tensor, a: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """ψ'(z) = μz + Σ_j a_j w_j σ(w_j z + b_j), vectorized over coordinates and terms."""
        s = z.unsqueeze(-1) * w + b
        return mu * z + torch.sigmoid(s) @ (a * w)

    @staticmethod
    def _curvature(z: Tensor, mu: Tensor, a: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """ψ''(z) = μ + Σ_j a_j w_j² σ'(w_j z + b_j) ≥ μ."""
        sig = torch.sigmoid(z.unsqueeze(-1) * w + b)
        return mu + (sig * (1 - sig)) @ (a * w * w)

    # ---------------------------------------------------------------------------------------------
    # public API

    def potential(self, z: Mapping[str, Tensor]) -> Tensor:
        r"""The convex potential :math:`h^*(z) = \sum_t\sum_i \psi_t(z_{t,i})`, a scalar.

        :meth:`to_primal` is its gradient, computed in closed form.
        """
        total = []
        for name in self.shapes:
            mu, a, w, b = self._coefficients(name)
            zt = z[name]
            s = zt.unsqueeze(-1) * w + b
            terms = F.softplus(s, threshold=SOFTPLUS_THRESHOLD) @ a
            total.append((0.5 * mu * zt * zt + terms).sum())
        return torch.stack(total).sum()

    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        return {name: self._derivative(z[name], *self._coefficients(name)) for name in self.shapes}

    def curvature(self, z: Mapping[str, Tensor]) -> Params:
        r"""The diagonal of the Jacobian of :math:`g`, :math:`\psi_t''(z_{t,i}) \in [\mu_t, L_t]`."""
        return {name: self._curvature(z[name], *self._coefficients(name)) for name in self.shapes}

    def to_dual(self, phi: Mapping[str, Tensor], *, steps: int = 40) -> Params:
        r"""Invert :math:`g` coordinate-wise: :math:`z = (\psi_t')^{-1}(\phi)`.

        The root lies in the bracket :math:`[r/L_t, r/\mu_t]` (ordered), :math:`r = \phi -
        \psi_t'(0)`, because :math:`\psi_t'' \in [\mu_t, L_t]`. ``steps`` safeguarded Newton steps
        (Newton where it stays in the shrinking bracket and at least halves the step, bisection
        otherwise) run on detached values; then two Newton steps run with autograd on, so the
        result carries the implicit-function derivatives :math:`\partial z/\partial\phi =
        1/\psi''(z)`, :math:`\partial z/\partial\theta = -(\partial\psi'/\partial\theta)/\psi''`
        (exact to third order). Eagerly it stops early once every coordinate has converged.
        Accuracy of ``to_dual(to_primal(z))`` for :math:`|z| \le 8` with the default 40 steps
        (measured): float64 ≤ 3e-14 absolute for :math:`L/\mu \le 500`, ≤ 5e-12 at
        :math:`L/\mu \approx 2\cdot10^5` (the root's own conditioning); float32 ≈ 1e-6.

        Args:
            phi: primal parameters, a dict name → tensor with the map's names and shapes.
            steps: safeguarded Newton steps (exactly this many under ``torch.func`` transforms;
                eagerly, fewer once all coordinates have converged).

        Raises:
            ValueError: if ``steps`` is not a positive int.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`steps` must be a positive int, got {steps!r}.")
        out = {}
        for name in self.shapes:
            coefs = self._coefficients(name)
            target = phi[name]
            with torch.no_grad():
                mu, a, w, b = (c.detach() for c in coefs)
                z = _safeguarded_newton(target.detach(), mu, a, w, b, steps)
            for _ in range(2):  # differentiable polish: implicit-function derivatives
                residual = self._derivative(z, *coefs) - target
                z = z - residual / self._curvature(z, *coefs)
            out[name] = z
        return out

    def monotonicity_modulus(self) -> float:
        with torch.no_grad():
            return min(float(self._coefficients(n)[0]) for n in self.shapes)

    def lipschitz_constant(self) -> float:
        with torch.no_grad():
            bounds = []
            for name in self.shapes:
                mu, a, w, _ = self._coefficients(name)
                bounds.append(float(mu + 0.25 * (a * w * w).sum()))
            return max(bounds)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, terms={self.terms}"


def _safeguarded_newton(
    phi: Tensor, mu: Tensor, a: Tensor, w: Tensor, b: Tensor, steps: int
) -> Tensor:
    """Solve ψ'(z) = φ elementwise (no autograd), Newton safeguarded by bisection (rtsafe).

    Under a ``torch.func`` transform it runs exactly ``steps`` iterations; eagerly it stops early
    once every coordinate has converged (converged coordinates no longer move, so the result is
    the same).
    """
    aw, aww = a * w, a * w * w
    lip = mu + 0.25 * aww.sum()
    r = phi - torch.sigmoid(b) @ aw  # φ - ψ'(0)
    lo = torch.minimum(r / mu, r / lip)
    hi = torch.maximum(r / mu, r / lip)
    z = 2 * r / (mu + lip)
    dx = dx_old = hi - lo  # the last two steps taken (Numerical Recipes' rtsafe)
    tiny = 16 * torch.finfo(phi.dtype).eps
    eager = not is_transformed([phi])
    for k in range(steps):
        sig = torch.sigmoid(z.unsqueeze(-1) * w + b)
        f = mu * z + sig @ aw - phi
        c = mu + (sig * (1 - sig)) @ aww
        hi = torch.where(f > 0, z, hi)
        lo = torch.where(f < 0, z, lo)
        newton_dx = f / c
        newton = z - newton_dx
        # Newton if it stays in the bracket and is less than half the step before last, or once
        # converged (a step at rounding level, where bisecting would throw the root away).
        converged = newton_dx.abs() <= tiny * (1 + z.abs())
        small = (2 * newton_dx.abs() <= dx_old.abs()) | converged
        ok = (newton >= lo) & (newton <= hi) & small
        mid = 0.5 * (lo + hi)
        dx_old, dx = dx, torch.where(ok, newton_dx, z - mid)
        z = torch.where(ok, newton, mid)
        if eager and k % 4 == 3 and bool((ok & converged).all()):
            break
    return z
