r"""Meta-objectives: MetaMD's regret bound, with its Bregman divergence and dual norm.

The standard objective (MAML / MetaMiDA) is the query loss after adaptation,
:math:`L(\phi_K; \mathcal D_{val})`; it needs no helper beyond :func:`mirroropt.adapt` and lives
in :func:`mirroropt.workflow.meta_loss`. This module holds MetaMD's objective, which learns the
geometry from the support trajectory alone (no query data).

Derivation (online mirror descent, Beck & Teboulle 2003; Orabona, *A Modern Introduction to
Online Learning*, Thm. 6.8). Let :math:`h` be 1-strongly convex w.r.t. a norm
:math:`\|\cdot\|`, with dual norm :math:`\|\cdot\|_*`. Mirror descent
:math:`\nabla h(\phi_{k+1}) = \nabla h(\phi_k) - \alpha g_k`, :math:`g_k = \nabla L(\phi_k)`,
satisfies for every comparator :math:`\phi^*` the three-point identity

.. math::

    \alpha\langle g_k, \phi_k - \phi^*\rangle
      = D_h(\phi^*, \phi_k) - D_h(\phi^*, \phi_{k+1}) + D_h(\phi_k, \phi_{k+1}),
    \qquad D_h(\phi_k, \phi_{k+1}) \le \tfrac{\alpha^2}{2}\|g_k\|_*^2 ,

and summing over :math:`k = 0 \dots K-1` (the :math:`D_h(\phi^*, \cdot)` terms telescope) with
convexity :math:`L(\phi_k) - L(\phi^*) \le \langle g_k, \phi_k - \phi^*\rangle` gives the regret
bound

.. math::

    R_K = \sum_{k<K} L(\phi_k) - L(\phi^*)
      \le \frac{1}{\alpha}\Big[D_h(\phi^*, \phi_0) - D_h(\phi^*, \phi_K)
           + \sum_{k<K} D_h(\phi_k, \phi_{k+1})\Big] .

MetaMD (Gao et al.) meta-learns :math:`h` by minimizing the right-hand side averaged over tasks.
The comparator :math:`\phi^*` (a task optimum) is unknown; we replace it by the trajectory's last
iterate :math:`\phi_K` **held fixed** (``stop_gradient``), so :math:`D_h(\phi^*, \phi_K) = 0` and
the bound is *exactly* the linearized regret :math:`\sum_k\langle g_k, \phi_k - \phi_K\rangle`
(an upper bound of the realised regret for convex losses). Differentiating through
:math:`\phi_K` would reward not moving at all: as the map shrinks to zero, :math:`\phi_K \to
\phi_0` and both terms vanish. With a fixed comparator the two terms trade off; for a diagonal map
:math:`g(z) = d\odot z` the minimizer is :math:`d_i = |\phi^*_i - \phi_{0,i}| /
(\alpha\sqrt{\sum_k g_{k,i}^2})`, AdaGrad's step size.

**What is learned.** The bound trains the geometry only (the map's parameters, and a learned step
size if there is one): :math:`\phi_0` is *not* a meta-parameter of MetaMD. Its gradient w.r.t.
:math:`\phi_0` would be :math:`\approx \sum_k \nabla L_{\text{support}}(\phi_k)`, i.e. joint training
on label-permuted support sets, which ruins a few-shot initialization (measured: cosine 0.9999
between the two). :func:`mirroropt.workflow.meta_loss` therefore detaches :math:`\phi_0` under
``objective="metamd"``, and :func:`mirroropt.workflow.train` keeps it out of the meta-optimizer;
:math:`\phi_0` is the seeded initialization or another run's (``TrainConfig.init_from``, e.g. a
MAML checkpoint).

How each term is computed, from :math:`g = (\nabla h)^{-1} = \nabla h^*` alone, by Bregman duality
:math:`D_h(x, y) = D_{h^*}(\nabla h(y), \nabla h(x))`:

* :math:`D_h(\phi^*, \phi_0) = D_{h^*}(z_0, z^*)`, with :math:`z^* = \nabla h(\phi^*)`
  (``to_dual``) and :math:`z_0` the initial dual point;
* :math:`D_h(\phi_k, \phi_{k+1}) = D_{h^*}(z_{k+1}, z_k)` — the exact term. (The textbook
  :math:`\tfrac{\alpha^2}{2}\|g_k\|_*^2` with the local norm at :math:`z_k` equals it for linear
  maps but is *not* an upper bound for nonlinear ones: for the entropic map it was 1.750 where the
  exact term is 2.498.)

:func:`bregman_divergence` evaluates :math:`D_{h^*}` exactly as :math:`\tfrac12\Delta^\top P\Delta`
for a linear map :math:`g(z) = Pz`; from the map's ``potential`` (:math:`h^*`) where it has one;
otherwise as the line integral
:math:`D_{h^*}(a, b) = \int_0^1 \langle g(b + t\Delta) - g(b), \Delta\rangle\,dt`,
:math:`\Delta = a - b`, by Gauss–Legendre quadrature (exact for polynomial :math:`g` of degree
:math:`< 2\,\text{nodes}`; for the smooth maps here the error at inner-loop step sizes is at
round-off level, which the tests check against the linearized regret).

Supported maps: those that are gradient fields (``is_gradient_field``, so :math:`D_h` is a Bregman
divergence and the line integral is path-independent) **and** have ``to_dual`` (to place the fixed
comparator in the dual): identity, diagonal, and the Kronecker / entropic / p-norm / elementwise
convex maps when they declare both flags. The block inverse-autoregressive flow (not a gradient
field) and the convex-potential map (no closed-form ``to_dual``) raise :class:`TypeError`.

References:
    Gao, Gouk, Lee & Hospedales, "Meta Mirror Descent: Optimiser Learning for Fast
    Convergence", arXiv:2203.02711, 2022.
    Beck & Teboulle, "Mirror descent and nonlinear projected subgradient methods for convex
    optimization", Operations Research Letters 31(3), 2003.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from mirroropt.functional import Trajectory
from mirroropt.maps._base import MirrorMap

__all__ = ["bregman_divergence", "check_metamd_supported", "dual_norm_sq", "metamd_bound"]


def check_metamd_supported(mirror_map: MirrorMap) -> None:
    """Raise unless MetaMD's bound can be computed for ``mirror_map`` (see the module docstring).

    Raises:
        TypeError: if ``mirror_map`` is not a :class:`~mirroropt.maps.MirrorMap`, is not a
            gradient field, or has no ``to_dual``.
    """
    if not isinstance(mirror_map, MirrorMap):
        raise TypeError(
            f"`mirror_map` must be a mirroropt.maps.MirrorMap, got {type(mirror_map).__name__}."
        )
    name = type(mirror_map).__name__
    if not mirror_map.is_gradient_field:
        raise TypeError(
            f"The MetaMD objective needs a map that is a gradient field (is_gradient_field=True), "
            f"so that D_h is a Bregman divergence; {name} is not. Use the query objective."
        )
    if not mirror_map.has_to_dual:
        raise TypeError(
            f"The MetaMD objective needs a closed-form to_dual to place the fixed comparator "
            f"φ* in the dual; {name} has none (has_to_dual=False). Use the query objective."
        )


def bregman_divergence(
    mirror_map: MirrorMap,
    z0: Mapping[str, Tensor],
    z_star: Mapping[str, Tensor],
    *,
    nodes: int = 8,
) -> Tensor:
    r"""The Bregman divergence :math:`D_h(\phi^*, \phi_0) = D_{h^*}(z_0, z^*)` from the map alone.

    .. math::

        D_{h^*}(z_0, z^*) = h^*(z_0) - h^*(z^*) - \langle g(z^*), z_0 - z^*\rangle
        = \int_0^1 \langle g(z^* + t\Delta) - g(z^*), \Delta\rangle\,dt,\quad \Delta = z_0 - z^*.

    Exactly :math:`\tfrac12\langle\Delta, g(\Delta)\rangle` for a linear map; from the map's
    ``potential`` :math:`h^*` where it has one; Gauss–Legendre quadrature with ``nodes`` points
    otherwise. Differentiable w.r.t. the map, ``z0`` and
    ``z_star``; safe under ``vmap``.

    Args:
        mirror_map: a gradient-field map (``is_gradient_field``).
        z0, z_star: dual points (dicts name → tensor fitting the map).
        nodes: quadrature points for nonlinear maps (≥ 1).

    Returns:
        A scalar tensor.

    Raises:
        TypeError: if the map is not a gradient field.
        ValueError: if ``nodes`` < 1.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> g = Identity({"w": torch.zeros(2)})
        >>> bregman_divergence(g, {"w": torch.tensor([1.0, 2.0])}, {"w": torch.zeros(2)})
        tensor(2.5000)
    """
    if not isinstance(mirror_map, MirrorMap) or not mirror_map.is_gradient_field:
        raise TypeError(
            f"`mirror_map` must be a MirrorMap that is a gradient field, got "
            f"{type(mirror_map).__name__}."
        )
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"`nodes` must be a positive int, got {nodes!r}.")
    names = mirror_map.names
    delta = {n: z0[n] - z_star[n] for n in names}
    if mirror_map.is_linear:
        p_delta = mirror_map.to_primal(delta)
        return 0.5 * _inner(delta, p_delta, names)
    potential = getattr(mirror_map, "potential", None)
    if callable(potential):
        g_star = mirror_map.to_primal(dict(z_star))
        return potential(dict(z0)) - potential(dict(z_star)) - _inner(g_star, delta, names)
    x, w = np.polynomial.legendre.leggauss(nodes)
    g_star = mirror_map.to_primal(dict(z_star))
    total = None
    for t, wt in zip((x + 1.0) / 2.0, w / 2.0):
        g_t = mirror_map.to_primal({n: z_star[n] + float(t) * delta[n] for n in names})
        term = float(wt) * _inner({n: g_t[n] - g_star[n] for n in names}, delta, names)
        total = term if total is None else total + term
    assert total is not None
    return total


def dual_norm_sq(mirror_map: MirrorMap, z: Mapping[str, Tensor], g: Mapping[str, Tensor]) -> Tensor:
    r"""The squared local dual norm :math:`\|g\|_*^2 = \langle g, J_g(z)\,g\rangle` at dual point z.

    :math:`J_g(z) = \nabla^2 h^*(z)` is the Jacobian of the inverse mirror map; for a linear map
    :math:`g(z) = Pz` this is :math:`g^\top P g` at every ``z`` (computed as
    :math:`\langle g, \text{to\_primal}(g)\rangle`), otherwise one :func:`torch.func.vjp`.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> m = Identity({"w": torch.zeros(2)})
        >>> dual_norm_sq(m, {"w": torch.zeros(2)}, {"w": torch.tensor([3.0, 4.0])})
        tensor(25.)
    """
    names = mirror_map.names
    if mirror_map.is_linear:
        return _inner(g, mirror_map.to_primal(dict(g)), names)
    _, vjp_fn = torch.func.vjp(mirror_map.to_primal, dict(z))  # type: ignore[misc]
    (jt_g,) = vjp_fn(dict(g))
    return _inner(g, jt_g, names)


def metamd_bound(
    mirror_map: MirrorMap,
    trajectory: Trajectory,
    lr: float | Tensor,
    *,
    nodes: int = 8,
) -> Tensor:
    r"""MetaMD's regret bound of one inner trajectory, with :math:`\phi^* = \mathrm{sg}(\phi_K)`.

    .. math::

        B = \frac{1}{\alpha}\Big[D_{h^*}(z_0, z^*) + \sum_{k=0}^{K-1} D_{h^*}(z_{k+1}, z_k)\Big],
        \qquad z^* = \nabla h(\mathrm{sg}(\phi_K)),

    i.e. :math:`[D_h(\phi^*, \phi_0) + \sum_k D_h(\phi_k, \phi_{k+1})]/\alpha`, which equals the
    linearized regret :math:`\sum_k \langle\nabla L(\phi_k), \phi_k - \phi_K\rangle` and bounds the
    realised regret :math:`\sum_k L(\phi_k) - L(\phi_K)` of a convex loss. See the module docstring
    for the derivation, why the comparator is held fixed, why :math:`\phi_0` is not trained by it,
    and which maps are supported.

    Args:
        mirror_map: the map the trajectory was run with (see :func:`check_metamd_supported`).
        trajectory: from :func:`mirroropt.adapt_trajectory` with ``steps = K ≥ 1``.
        lr: the inner step size :math:`\alpha` (a positive number or scalar tensor).
        nodes: quadrature points for nonlinear maps without a ``potential``.

    Returns:
        A scalar tensor, differentiable w.r.t. the map (and the trajectory's start).

    Raises:
        TypeError: for unsupported maps, or ``lr`` that is not a number or scalar tensor.
        ValueError: if the trajectory has no step.

    Example:
        >>> import torch
        >>> from mirroropt import adapt_trajectory
        >>> from mirroropt.maps import Identity
        >>> m = Identity({"w": torch.zeros(1)})
        >>> t = adapt_trajectory(m, lambda p: (p["w"] ** 2).sum(), {"w": torch.ones(1)},
        ...                      lr=0.25, steps=1)
        >>> metamd_bound(m, t, 0.25)  # (0.5²/2)/0.25 + (0.5²/2)/0.25
        tensor(1.)

    References:
        Gao, Gouk, Lee & Hospedales, "Meta Mirror Descent: Optimiser Learning for Fast
        Convergence", arXiv:2203.02711, 2022.
    """
    check_metamd_supported(mirror_map)
    if isinstance(lr, bool) or not (
        isinstance(lr, numbers.Real) or (isinstance(lr, Tensor) and lr.dim() == 0)
    ):
        raise TypeError(
            f"`lr` must be a positive number or a scalar tensor for the MetaMD bound, got "
            f"{type(lr).__name__}."
        )
    if not trajectory.grads:
        raise ValueError("`trajectory` must have at least one step (steps ≥ 1), got 0.")
    phi_star = {n: t.detach() for n, t in trajectory.phi[-1].items()}
    z_star = mirror_map.to_dual(phi_star)
    terms = [bregman_divergence(mirror_map, trajectory.z[0], z_star, nodes=nodes)]
    for k in range(len(trajectory.grads)):
        terms.append(
            bregman_divergence(mirror_map, trajectory.z[k + 1], trajectory.z[k], nodes=nodes)
        )
    return torch.stack(terms).sum() / lr


def _inner(a: Mapping[str, Tensor], b: Mapping[str, Tensor], names: tuple[str, ...]) -> Tensor:
    return torch.stack([(a[n] * b[n]).sum() for n in names]).sum()
