r"""``higher`` integration: ``higher.innerloop_ctx(model, MirrorDescent(...))`` just works.

Importing this module registers :class:`DifferentiableMirrorDescent` with ``higher`` as the
differentiable counterpart of :class:`mirroropt.MirrorDescent`, so a MAML script written for
``higher`` switches from gradient descent to mirror descent by changing the optimizer it builds:

.. code-block:: python

    from mirroropt.integrations.higher import MirrorDescent  # registers with higher
    inner_opt = MirrorDescent(model.named_parameters(), Diagonal(model), lr=0.4)
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(loss_fn(fmodel(x_spt), y_spt))
        loss_fn(fmodel(x_qry), y_qry).backward()  # reaches the model AND the map's parameters

Needs the optional extra: ``pip install 'mirroropt[higher]'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    import higher as _higher
    from higher.optim import DifferentiableOptimizer as _DifferentiableOptimizer
except ImportError as error:
    raise ImportError(
        "mirroropt.integrations.higher needs the optional dependency `higher`: "
        "pip install 'mirroropt[higher]'."
    ) from error

import torch
from torch import Tensor, nn

from mirroropt import functional as F
from mirroropt._optimizer import MirrorDescent
from mirroropt.functional import _check_finite
from mirroropt.integrations._l2l_style import _cached_primal, _Prepared
from mirroropt.maps._base import MirrorMap

__all__ = ["DifferentiableMirrorDescent", "MirrorDescent"]


class DifferentiableMirrorDescent(_DifferentiableOptimizer):  # type: ignore[misc]
    r"""Differentiable mirror descent for ``higher``: the unrolled twin of :class:`MirrorDescent`.

    Built by ``higher.innerloop_ctx(model, opt)`` / ``higher.optim.get_diff_optim(opt, ...)`` from
    a :class:`mirroropt.MirrorDescent` ``opt``. At the first ``diffopt.step(loss)`` it sets
    :math:`z_0 = \nabla h(\phi_0)` from the fast weights :math:`\phi_0`; every step then does

    .. math::

        z_{k+1} = z_k - \alpha\,\nabla L(\phi_k), \qquad \phi_{k+1} = g(z_{k+1}),

    with :func:`mirroropt.functional.step` and :func:`~mirroropt.functional.to_primal`. The dual
    :math:`z_k` lives in ``self.state[group][i]["z"]`` *with its graph* (not detached), so the
    meta-gradient of a query loss flows through all steps to :math:`\phi_0` (the model's weights
    with ``copy_initial_weights=False``), to a tensor ``lr`` passed via ``override``, and to the
    map's own parameters. A linear map (:class:`~mirroropt.maps.Identity`,
    :class:`~mirroropt.maps.Diagonal`, :class:`~mirroropt.maps.Kronecker`, …) with scalar step
    sizes steps in the primal instead, :math:`\phi_{k+1} = \phi_k - \alpha\, g(\nabla L)`: the
    same iterates without :math:`z_0 = \nabla h(\phi_0)` and its backward per task, and no
    ``"z"`` in the state (it is :math:`\nabla h(\phi_k)`, ``mirror_map.to_dual`` of the fast
    weights). The map is read by reference from ``opt.mirror_map`` (``higher``
    deep-copies ``param_groups`` and detaches optimizer state, so a map stored there would lose its
    meta-gradients; a module found in a param group is refused).

    A number ``lr`` is applied as ``z - lr * g``: with the :class:`~mirroropt.maps.Identity` map the
    fast weights and meta-gradients equal ``higher``'s own differentiable SGD bit for bit.
    With ``track_higher_grads=False`` ("test mode") the dual is detached after each step, like the
    fast weights.

    Args:
        other: the :class:`mirroropt.MirrorDescent` to unroll.
        reference_params: the model's parameters (``model.parameters()``).
        **kwargs: passed to ``higher.optim.DifferentiableOptimizer`` (``fmodel``, ``device``,
            ``override``, ``track_higher_grads``, ``grad_callback``).

    Raises:
        TypeError: if ``other`` is not a :class:`mirroropt.MirrorDescent`, if a param group holds
            an ``nn.Module``, or if ``other`` was built with a dual initialization ``z0`` (the
            unrolled loop starts from the fast weights; use
            :class:`~mirroropt.integrations.MirrorMAML` or :func:`mirroropt.adapt` with ``z=``).
        ValueError: if a gradient is not finite (when ``other.check_finite``).

    Example:
        >>> import higher, torch
        >>> from mirroropt.integrations.higher import MirrorDescent
        >>> from mirroropt.maps import Diagonal
        >>> model = torch.nn.Linear(2, 1)
        >>> mirror_map = Diagonal(model)
        >>> opt = MirrorDescent(model.named_parameters(), mirror_map, lr=0.1)
        >>> x, y = torch.randn(4, 2), torch.randn(4, 1)
        >>> with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        ...     _ = diffopt.step(torch.nn.functional.mse_loss(fmodel(x), y))
        ...     torch.nn.functional.mse_loss(fmodel(x), y).backward()
        >>> all(p.grad is not None for p in mirror_map.parameters())
        True

    References:
        Grefenstette et al., "Generalized Inner Loop Meta-Learning", arXiv:1910.01727, 2019.
        Zhang, Li & Giannakis, "Meta-learning with learned mirror descent (MetaMiDA)",
        arXiv:2509.02418.
    """

    mirror_map: MirrorMap

    def __init__(
        self, other: MirrorDescent, reference_params: Iterable[Tensor], **kwargs: Any
    ) -> None:
        if not isinstance(other, MirrorDescent):
            raise TypeError(
                f"`other` must be a mirroropt.MirrorDescent, got {type(other).__name__}."
            )
        for index, group in enumerate(other.param_groups):
            for key, value in group.items():
                if isinstance(value, nn.Module):
                    raise TypeError(
                        f"Param group {index} of the MirrorDescent optimizer holds an nn.Module "
                        f"under {key!r} ({type(value).__name__}); higher deep-copies param_groups, "
                        f"so that copy would silently lose its meta-gradients. Pass the map as "
                        f"`MirrorDescent(params, mirror_map, ...)` (held by reference) and keep "
                        f"only numbers or tensors in param groups."
                    )
        if other._z0 is not None:
            raise TypeError(
                "The MirrorDescent optimizer was built with a dual initialization `z0`, but a "
                "higher inner loop starts from the fast weights φ0 with z0 = to_dual(φ0). Use "
                "mirroropt.integrations.MirrorMAML(...).clone(z=z0) or mirroropt.adapt(..., z=z0) "
                "for a (learned) dual initialization."
            )
        super().__init__(other, reference_params, **kwargs)
        self.mirror_map = other.mirror_map  # by reference: its parameters get meta-gradients
        self.check_finite = other.check_finite
        names = other._names
        self._group_names: list[list[str]] = [
            [names[p] for p in group["params"]] for group in other.param_groups
        ]
        self._started = False
        self._primal = False
        self._prepared: _Prepared | None = None

    def _update(self, grouped_grads: list[list[Tensor | None]], **kwargs: Any) -> None:
        phi: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        lr: dict[str, Any] = {}  # name → its group's step size
        for group, group_grads, group_names in zip(
            self.param_groups, grouped_grads, self._group_names
        ):
            for p, g, name in zip(group["params"], group_grads, group_names):
                phi[name] = p
                grads[name] = torch.zeros_like(p) if g is None else g
                lr[name] = group["lr"]
        if self.check_finite:
            _check_finite(grads, "The gradient of the inner loss")
        # numbers checked at every step, tensors' values (a device read) once per inner loop
        F._check_lr(lr, self.mirror_map.shapes, values=not self._started)
        # mirror_map.prepared() once per inner loop (per innerloop_ctx), not once per step
        self._prepared = _cached_primal(self.mirror_map, self._prepared)
        to_primal = self._prepared[0]
        names = self.mirror_map.names
        # a linear map with scalar step sizes steps in the primal: g(z_k − α∇L) = φ_k − α g(∇L),
        # the same iterates without z₀ = ∇h(φ₀) (F._steps_in_primal); a param group's lr set per
        # coordinate mid-loop continues in the dual from z = ∇h(φ_k)
        primal = F._steps_in_primal(self.mirror_map, lr)
        if not self._started or (self._primal and not primal):
            self._started, self._primal = True, primal
            z = None if primal else F.init(self.mirror_map, phi)
        elif self._primal:
            z = None
        else:
            z = {
                name: self.state[gi][pi]["z"]
                for gi, group_names in enumerate(self._group_names)
                for pi, name in enumerate(group_names)
            }
        # z - lr * g as higher's SGD rounds it, without a device tensor per step for a number lr
        if z is None:
            phi_new = F._step(names, phi, to_primal(grads), lr, fused=False)
        else:
            z_new = F._step(names, z, grads, lr, fused=False)
            phi_new = to_primal(z_new)
        for gi, (group, group_names) in enumerate(zip(self.param_groups, self._group_names)):
            for pi, name in enumerate(group_names):
                if z is not None:
                    z_k = z_new[name]
                    self.state[gi][pi]["z"] = z_k if self._track_higher_grads else z_k.detach()
                group["params"][pi] = phi_new[name]


_higher.register_optim(MirrorDescent, DifferentiableMirrorDescent)
