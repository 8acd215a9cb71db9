"""p-norm map: the p-norm algorithms (h = ½‖φ‖_p²) as mirror descent."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, final

import torch
from torch import Tensor

from mirroropt._types import Params
from mirroropt.maps._base import MirrorMap

__all__ = ["PNorm"]


def _signed_pow(x: Tensor, a: float) -> Tensor:
    r""":math:`\operatorname{sign}(x)|x|^a`, with value and derivatives 0 at :math:`x = 0`.

    The "double where" keeps ``pow`` away from 0, so no ``0 * inf = nan`` reaches autograd. At
    :math:`x = 0` the true derivative :math:`a|x|^{a-1}` is 0 for :math:`a > 1` (returned exactly)
    and infinite for :math:`a < 1` (returned as 0, a convention). :math:`a = 1` is ``x`` itself.
    """
    if a == 1.0:
        return x
    nonzero = x != 0
    safe = torch.where(nonzero, x, torch.ones_like(x))
    return torch.where(nonzero, torch.sign(safe) * safe.abs().pow(a), torch.zeros_like(x))


def _half_sq_norm_grad(x: Tensor, r: float) -> Tensor:
    r""":math:`\nabla\tfrac12\|x\|_r^2 = \operatorname{sign}(x)|x|^{r-1}/\|x\|_r^{r-2}` of a vector.

    Computed as :math:`\|x\|_r\,\operatorname{sign}(u)|u|^{r-1}` with :math:`u = x/\|x\|_r` and
    :math:`\|x\|_r = c\,\|x/c\|_r`, :math:`c = \max_i|x_i|` (detached: the identity holds for any
    :math:`c > 0`), so no power of a raw entry is formed: no overflow or underflow for large
    :math:`r` (e.g. :math:`r = 15` at :math:`p = 1 + 1/\ln 10^6`). At :math:`x = 0` it returns 0
    with the identity as derivative (see :class:`PNorm`).
    """
    if r == 2.0 or x.numel() == 0:  # an empty group: nothing to normalize
        return x
    c = x.detach().abs().amax()
    c = torch.where(c > 0, c, torch.ones_like(c))
    v = x / c
    s = (v * _signed_pow(v, r - 1)).sum()  # Σ|v_i|^r ∈ [1, d], or 0 exactly when x = 0
    nonzero = s > 0
    norm_v = torch.where(nonzero, s, torch.ones_like(s)).pow(1.0 / r)
    # c last: c * norm_v alone overflows float32 for |x| near its max (1e38 · d^{1/r} > 3.4e38)
    # even where the result fits, and inf · 0 was nan at zero coordinates
    out = c * (norm_v * _signed_pow(v / norm_v, r - 1))
    return torch.where(nonzero, out, x)


def _auto_p(d: int) -> float:
    """The classic p = 1 + 1/ln d (Gentile 2003; Shalev-Shwartz 2012), capped at p = 2 for d ≤ e."""
    return 1.0 + 1.0 / max(1.0, math.log(d)) if d > 0 else 2.0


@final
class PNorm(MirrorMap):
    r"""p-norm map: :math:`h(\phi) = \tfrac12\|\phi\|_p^2`, :math:`g = \nabla h^* = \nabla\tfrac12\|\cdot\|_q^2`.

    With the dual exponent :math:`q = p/(p-1)` (:math:`1/p + 1/q = 1`), per coordinate:

    .. math::

        \nabla h(\phi)_i = \frac{\operatorname{sign}(\phi_i)\,|\phi_i|^{p-1}}{\|\phi\|_p^{p-2}},
        \qquad
        g(z)_i = \nabla h^*(z)_i = \frac{\operatorname{sign}(z_i)\,|z_i|^{q-1}}{\|z\|_q^{q-2}},
        \qquad h^*(z) = \tfrac12\|z\|_q^2,

    and the dual step :math:`z_{k+1} = z_k - \alpha\nabla L(\phi_k)`,
    :math:`\phi_{k+1} = g(z_{k+1})` is the p-norm algorithm of Grove, Littlestone & Schuurmans
    (with their roles of :math:`p` and :math:`q` swapped: our :math:`p` is the *primal* norm). The
    norm is taken over all tensors jointly (``per="all"``, the classic algorithm on the flattened
    parameter vector) or over each tensor separately (``per="tensor"``, a sum of potentials).
    :math:`1 < p < 2` (so :math:`q > 2`) gives the sparse, :math:`\ell_1`-like geometry;
    ``p="auto"`` picks the classic :math:`p = 1 + 1/\ln d` for :math:`d` coordinates (capped at
    2 for :math:`d \le e`), which makes :math:`h` strongly convex w.r.t. :math:`\|\cdot\|_1` up to
    a constant for large :math:`d`; :math:`p > 2` is also supported. :math:`p = 2` is the identity
    (gradient descent, returned exactly); otherwise the map is not the identity at
    initialization. It is classical and fixed: no learnable parameters.

    Properties (Euclidean norm, as the property kit measures). A gradient field with a closed-form
    ``to_dual``; positively homogeneous of degree 1, not linear unless :math:`p = 2`; strictly
    monotone for every :math:`1 < p < \infty` (:math:`h^*` is strictly convex).

    * :math:`1 < p \le 2`: :math:`h` is :math:`(p-1)`-strongly convex w.r.t. :math:`\|\cdot\|_p
      \ge \|\cdot\|_2`, so :math:`g` is Lipschitz with :math:`L = 1/(p-1) = q-1` (a
      dimension-free upper bound, not tight: the largest Jacobian eigenvalue measured for
      :math:`q = 3` is about 1.587); not strongly
      monotone for :math:`p < 2` (:math:`h^*` is flat to second order along :math:`e_2` at
      :math:`e_1`): :math:`\mu` is ``None``.
    * :math:`p \ge 2`: :math:`h^* = \tfrac12\|\cdot\|_q^2` is :math:`(q-1)`-strongly convex w.r.t.
      :math:`\|\cdot\|_q \ge \|\cdot\|_2`, so :math:`\mu = q - 1 = 1/(p-1)`; not Lipschitz for
      :math:`p > 2` (:math:`\partial g_i/\partial z_i \propto |z_i|^{q-2} \to \infty` as
      :math:`z_i \to 0`): :math:`L` is ``None``.

    With ``per="tensor"`` the bounds are the worst over tensors (``None`` if any is ``None``).

    Differentiability. ``to_primal`` (exponent :math:`q - 1`) and ``to_dual`` (:math:`p - 1`) are
    continuous everywhere with :math:`g(0) = 0`, and smooth where no coordinate is 0. On a
    coordinate hyperplane :math:`x_i = 0` (``x`` the argument), the derivative exists and is
    returned exactly when the exponent is :math:`\ge 1` (first derivative 0 for exponent > 1;
    second derivative 0 for exponent > 2); where it is infinite (exponent < 1, i.e. ``to_dual`` for
    :math:`p < 2` at :math:`\phi_i = 0`, ``to_primal`` for :math:`p > 2` at :math:`z_i = 0`) it is
    returned as 0. At the origin of a norm group (all of ``z`` with ``per="all"``, a whole tensor
    with ``per="tensor"``, e.g. a zero-initialized bias), the map is not differentiable unless
    :math:`p = 2`; the derivative returned there is the identity (that of :math:`p = 2`), so
    meta-gradients keep flowing. No path produces ``nan``, and values are finite wherever the
    result is representable (also in float32 at :math:`|z| \approx 10^{38}`, where the scaling
    by the largest entry is applied last); derivatives at entries within a factor of about the
    dimension of the largest float may overflow to ``inf`` in float32.

    Args:
        params: the tensors it acts on (a module, a mapping name → tensor/shape, or
            ``named_parameters()``).
        p: the primal exponent, a number in :math:`(1, \infty)`, or ``"auto"`` for
            :math:`1 + 1/\ln d` (:math:`d` the number of coordinates of each norm group).
        per: ``"all"`` (one norm over all tensors) or ``"tensor"`` (one per tensor).

    Raises:
        TypeError: if ``p`` is neither a number nor ``"auto"``.
        ValueError: if ``p`` is not in :math:`(1, \infty)`, or ``per`` is unknown.

    Example:
        >>> import torch
        >>> from mirroropt.maps import PNorm
        >>> g = PNorm({"w": torch.zeros(2)}, p=1.5)  # q = 3
        >>> g.to_primal({"w": torch.tensor([3.0, -4.0])})["w"]  # sign|z|^2 / ‖z‖_3
        tensor([ 2.0009, -3.5572])
        >>> g.to_dual(g.to_primal({"w": torch.tensor([3.0, -4.0])}))["w"]
        tensor([ 3.0000, -4.0000])
        >>> g.lipschitz_constant(), g.monotonicity_modulus()
        (2.0, None)
        >>> PNorm({"w": torch.zeros(100)}).exponents["w"]  # "auto": 1 + 1/ln 100
        1.217147240951626

    References:
        Grove, Littlestone & Schuurmans, "General convergence results for linear discriminant
        updates", Machine Learning 43(3), 2001 (COLT 1997; no arXiv id).
        Gentile & Littlestone, "The robustness of the p-norm algorithms", COLT 1999; Gentile,
        Machine Learning 53(3), 2003 (no arXiv id).
        Shalev-Shwartz, "Online Learning and Online Convex Optimization", Foundations and Trends
        in Machine Learning 4(2), 2012 (no arXiv id).
    """

    has_to_dual: ClassVar[bool] = True
    is_gradient_field: ClassVar[bool] = True
    is_linear: ClassVar[bool] = False

    def __init__(
        self,
        params: Any,
        *,
        p: float | Literal["auto"] = "auto",
        per: Literal["all", "tensor"] = "all",
    ) -> None:
        super().__init__(params)
        if per not in ("all", "tensor"):
            raise ValueError(f"`per` must be 'all' or 'tensor', got {per!r}.")
        if isinstance(p, str):
            if p != "auto":
                raise ValueError(f"`p` must be a number in (1, inf) or 'auto', got {p!r}.")
        elif isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"`p` must be a number or 'auto', got {type(p).__name__}.")
        elif not (math.isfinite(p) and p > 1):
            raise ValueError(f"`p` must be a number in (1, inf) or 'auto', got {p}.")
        self.p = p
        self.per = per
        sizes = {n: s.numel() for n, s in self.shapes.items()}
        total = sum(sizes.values())
        if p == "auto":
            self.exponents = {n: _auto_p(total if per == "all" else sizes[n]) for n in sizes}
        else:
            self.exponents = dict.fromkeys(sizes, float(p))

    @staticmethod
    def _conjugate(p: float) -> float:
        return 2.0 if p == 2.0 else p / (p - 1.0)

    def _map(self, x: Mapping[str, Tensor], dual_side: bool) -> Params:
        """∇½‖·‖_r² per norm group, with r = q (``to_primal``) or r = p (``to_dual``)."""
        r = {n: self._conjugate(p) if dual_side else p for n, p in self.exponents.items()}
        if self.per == "tensor":
            return {
                n: _half_sq_norm_grad(x[n].reshape(-1), r[n]).reshape(s)
                for n, s in self.shapes.items()
            }
        (exponent,) = set(r.values())
        if exponent == 2.0:
            return {n: x[n] for n in self.shapes}
        flat = torch.cat([x[n].reshape(-1) for n in self.shapes])
        parts = torch.split(
            _half_sq_norm_grad(flat, exponent), [s.numel() for s in self.shapes.values()]
        )
        return {n: t.reshape(s) for (n, s), t in zip(self.shapes.items(), parts)}

    def potential(self, z: Mapping[str, Tensor]) -> Tensor:
        r"""The potential :math:`h^*(z) = \tfrac12\|z\|_q^2` (a sum over tensors with
        ``per="tensor"``), a scalar tensor; :meth:`to_primal` is its gradient.

        Example:
            >>> import torch
            >>> PNorm({"w": torch.zeros(2)}, p=2).potential({"w": torch.tensor([3.0, 4.0])})
            tensor(12.5000)
        """
        q = {n: self._conjugate(p) for n, p in self.exponents.items()}
        if self.per == "tensor":
            groups = [(z[n].reshape(-1), q[n]) for n in self.shapes]
        else:
            (exponent,) = set(q.values())
            groups = [(torch.cat([z[n].reshape(-1) for n in self.shapes]), exponent)]
        return torch.stack(
            [0.5 * torch.linalg.vector_norm(flat, ord=r) ** 2 for flat, r in groups]
        ).sum()

    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        return self._map(z, dual_side=True)

    def to_dual(self, phi: Mapping[str, Tensor]) -> Params:
        return self._map(phi, dual_side=False)

    def monotonicity_modulus(self) -> float | None:
        ps = self.exponents.values()
        return None if any(p < 2.0 for p in ps) else min(1.0 / (p - 1.0) for p in ps)

    def lipschitz_constant(self) -> float | None:
        ps = self.exponents.values()
        return None if any(p > 2.0 for p in ps) else max(1.0 / (p - 1.0) for p in ps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p!r}, per={self.per!r}"
