r"""learn2learn-style module wrappers: ``learner = maml.clone(); learner.adapt(loss)``.

Unlike learn2learn (which this replaces, without depending on it), nothing here mutates
``module._parameters`` or hangs attributes on tensors: a :class:`MirrorLearner` holds an explicit
state :math:`(\phi, z)` and runs the shared model with :func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, final

import torch
from torch import Tensor, nn

from mirroropt import functional as F
from mirroropt._types import Params
from mirroropt.maps._base import MirrorMap
from mirroropt.maps._identity import Identity

__all__ = ["MAML", "MirrorLearner", "MirrorMAML"]


@final
class MirrorMAML(nn.Module):
    r"""Meta-learner wrapper: mirror-descent inner loop behind a learn2learn-like interface.

    ``maml.clone()`` returns a :class:`MirrorLearner` at :math:`\phi_0` = the model's parameters
    (:math:`z_0 = \nabla h(\phi_0)`), or at a dual initialization ``z``; each
    ``learner.adapt(loss)`` takes one step

    .. math::

        z_{k+1} = z_k - \alpha\,\nabla L(\phi_k), \qquad \phi_{k+1} = g(z_{k+1}),

    through :func:`mirroropt.functional.step`/:func:`~mirroropt.functional.to_primal`, so a query
    loss computed with ``learner(x)`` back-propagates (second order unless ``first_order``) to the
    model's parameters, the map's parameters and a learnable ``lr``. ``maml.parameters()`` holds
    all three: give them to the meta-optimizer. With the :class:`~mirroropt.maps.Identity` map this
    is MAML (see :func:`MAML`), bit for bit the hand-written ``p - lr * g`` update.

    Args:
        model: the task model :math:`f_\phi`; its parameters are :math:`\phi_0`.
        mirror_map: the inverse mirror map :math:`g`, built for ``model.named_parameters()``.
        lr: inner step size :math:`\alpha > 0`; a number, or a tensor (an ``nn.Parameter`` is
            registered and meta-learned).
        first_order: treat inner gradients as constants (first-order MAML); the meta-gradient
            still reaches the map's parameters through :math:`\phi_K = g(z_K)`.
        check_finite: raise if an inner gradient is not finite (one device sync per step; turn
            off for speed once a setup is known to be stable).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``mirror_map`` not a
            :class:`~mirroropt.maps.MirrorMap`, or on a wrong ``lr`` type.
        ValueError: if ``lr`` is not positive, or the map does not fit the model's parameters.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Diagonal
        >>> model = torch.nn.Linear(2, 1)
        >>> maml = MirrorMAML(model, Diagonal(model), lr=0.1)
        >>> learner = maml.clone()
        >>> x, y = torch.randn(4, 2), torch.randn(4, 1)
        >>> learner.adapt(torch.nn.functional.mse_loss(learner(x), y))
        >>> torch.nn.functional.mse_loss(learner(x), y).backward()
        >>> all(p.grad is not None for p in maml.parameters())
        True

    References:
        Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017, arXiv:1703.03400.
        Zhang, Li & Giannakis, "Meta-learning with learned mirror descent (MetaMiDA)",
        arXiv:2509.02418.
    """

    def __init__(
        self,
        model: nn.Module,
        mirror_map: MirrorMap,
        lr: float | Tensor,
        *,
        first_order: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
        F._check_map(mirror_map)
        F._check_one_lr(lr, "lr")
        mirror_map.check_fits(dict(model.named_parameters()), argument="model.named_parameters()")
        self.module = model
        self.mirror_map = mirror_map
        self.lr = lr
        self.first_order = bool(first_order)
        self.check_finite = bool(check_finite)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model at its own (meta) parameters :math:`\\phi_0`."""
        return self.module(*args, **kwargs)

    def clone(
        self, *, z: Mapping[str, Tensor] | None = None, first_order: bool | None = None
    ) -> MirrorLearner:
        r"""A learner at :math:`\phi_0` (the model's parameters) or at the dual point ``z``.

        Args:
            z: optional dual initialization :math:`z_0` (e.g. a learned one, MetaMiDA's
                :math:`\theta_z`; required for maps without ``to_dual``); then
                :math:`\phi_0 = g(z_0)`.
            first_order: overrides the wrapper's ``first_order`` for this learner.

        Raises:
            TypeError: if the map has no ``to_dual`` and ``z`` is not given.
            ValueError: if ``z`` does not fit the map, or a tensor ``lr`` is not positive and
                finite now (read once per learner, not at every step).
        """
        phi: Params
        z0: Params | None
        if z is None:
            phi = dict(self.module.named_parameters())
            F._check_primal_start(self.mirror_map, phi)
            # a linear map steps in the primal and never needs z₀ = ∇h(φ₀) (F._steps_in_primal)
            primal = F._steps_in_primal(self.mirror_map, self.lr)
            z0 = None if primal else self.mirror_map.to_dual(phi)
        else:
            z0 = dict(z)
            self.mirror_map.check_fits(z0, argument="z")
            phi = _cached_primal(self.mirror_map, None)[0](z0)
        return MirrorLearner(
            self.module,
            self.mirror_map,
            self.lr,
            phi=phi,
            z=z0,
            first_order=self.first_order if first_order is None else bool(first_order),
            check_finite=self.check_finite,
        )


@final
class MirrorLearner:
    r"""One task's learner: explicit state :math:`(\phi_k, z_k)` over a shared model and map.

    Made by :meth:`MirrorMAML.clone`. Calling it runs
    ``torch.func.functional_call(model, phi, args, kwargs)`` (buffers are the model's own);
    :meth:`adapt` replaces ``phi`` and ``z`` by new tensors (no in-place update, no change to the
    model). Eager only: :meth:`adapt` differentiates a loss tensor with
    :func:`torch.autograd.grad`; for ``vmap`` over tasks use :func:`mirroropt.adapt`.

    Attributes:
        phi: the current primal parameters :math:`\phi_k` (dict name → tensor).
        z: the current dual variable :math:`z_k` (read-only). A linear map started at
            :math:`\phi_0` steps in the primal, :math:`\phi_{k+1} = \phi_k - \alpha\,
            g(\nabla L)` (the same iterates, without a ``to_dual`` per task), and computes
            :math:`z_k = \nabla h(\phi_k)` when it is read.
    """

    def __init__(
        self,
        module: nn.Module,
        mirror_map: MirrorMap,
        lr: float | Tensor,
        *,
        phi: Params,
        z: Params | None,
        first_order: bool,
        check_finite: bool = True,
    ) -> None:
        F._check_one_lr(lr, "lr")  # a tensor's value read once per learner, not per step
        self.module = module
        self.mirror_map = mirror_map
        self.lr = lr
        self.first_order = first_order
        self.check_finite = check_finite
        self.phi = phi
        self._z = z  # None: a primal loop (linear map from φ₀), z read through ∇h(φ_k)
        # mirror_map.prepared() (z-independent work: factor exponentials, scales), computed once
        # per learner and reused by every adapt step while the map's parameters are unchanged
        self._prepared: _Prepared | None = None

    @property
    def z(self) -> Params:
        r"""The dual variable :math:`z_k` (for a primal loop, :math:`\nabla h(\phi_k)` now)."""
        return self.mirror_map.to_dual(self.phi) if self._z is None else self._z

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.module, self.phi, args, kwargs)

    def adapt(self, loss: Tensor, *, first_order: bool | None = None) -> None:
        r"""One mirror-descent step on ``loss`` (a scalar computed with this learner).

        Args:
            loss: the support loss :math:`L(\phi_k)`, a scalar tensor depending on ``self.phi``.
            first_order: overrides the learner's ``first_order`` for this step.

        Raises:
            TypeError: if ``loss`` is not a tensor.
            ValueError: if ``loss`` is not a scalar or does not depend on the learner's
                parameters, or a gradient is not finite.
        """
        if not isinstance(loss, Tensor):
            raise TypeError(f"`loss` must be a scalar tensor, got {type(loss).__name__}.")
        if loss.dim() != 0:
            raise ValueError(f"`loss` must be a scalar tensor, got shape {tuple(loss.shape)}.")
        if not loss.requires_grad:
            raise ValueError(
                "`loss` does not depend on the learner's parameters (it has no grad_fn); compute "
                "it from `learner(x)`, not from the wrapped model."
            )
        first = self.first_order if first_order is None else bool(first_order)
        names = [n for n, p in self.phi.items() if p.requires_grad]
        computed = torch.autograd.grad(
            loss, [self.phi[n] for n in names], create_graph=not first, allow_unused=True
        )
        by_name = dict(zip(names, computed))
        grads = {
            n: torch.zeros_like(p) if by_name.get(n) is None else by_name[n]
            for n, p in self.phi.items()
        }
        if self.check_finite:
            F._check_finite(grads, "The gradient of `loss`")
        self._prepared = _cached_primal(self.mirror_map, self._prepared)
        g = self._prepared[0]
        order = self.mirror_map.names
        # z - lr * g as a hand-written loop rounds it; lr was checked once, by the constructor
        if self._z is None:  # g(z_k − α∇L) = φ_k − α g(∇L) for a linear map
            self.phi = F._step(order, self.phi, g(grads), self.lr, fused=False)
        else:
            self._z = F._step(order, self._z, grads, self.lr, fused=False)
            self.phi = g(self._z)


#: ``(mirror_map.prepared(), key)``: key = grad mode and the map parameters' version counters.
_Prepared = tuple[Callable[[Mapping[str, Tensor]], Params], tuple[Any, ...]]


def _cached_primal(mirror_map: MirrorMap, cached: _Prepared | None) -> _Prepared:
    """``cached`` if the map is unchanged since it was prepared, else a fresh ``prepared()``.

    In-place updates of the map's parameters (a meta-optimizer step) bump their version
    counters, so a stale preparation is never reused.
    """
    key = (torch.is_grad_enabled(), *(p._version for p in mirror_map.parameters()))
    if cached is not None and cached[1] == key:
        return cached
    return mirror_map.prepared(), key


def MAML(model: nn.Module, lr: float | Tensor, *, first_order: bool = False) -> MirrorMAML:
    r"""Plain MAML (gradient descent inner loop) behind the same interface: the identity map.

    ``MAML(model, lr)`` is ``MirrorMAML(model, Identity(model), lr)``, so
    ``learner.adapt(loss)`` is :math:`\phi \leftarrow \phi - \alpha\nabla L(\phi)`, computed as
    ``p - lr * g``. Switching to mirror descent is replacing this call by
    ``MirrorMAML(model, mirror_map, lr)``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> learner = MAML(model, lr=0.5).clone()
        >>> learner.adapt(learner(torch.ones(1, 1)).sum())
        >>> torch.equal(learner.phi["weight"], model.weight - 0.5)
        True

    References:
        Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017, arXiv:1703.03400.
    """
    return MirrorMAML(model, Identity(model), lr, first_order=first_order)
