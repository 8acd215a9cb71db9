r"""TorchOpt integration: :class:`MetaMirrorDescent`, the mirror-descent ``torchopt.MetaSGD``.

TorchOpt's MAML code adapts the model in place with a ``MetaOptimizer`` and resets it per task
with ``extract_state_dict``/``recover_state_dict``. :class:`MetaMirrorDescent` takes the place of
``torchopt.MetaSGD`` and nothing else in that loop changes:

.. code-block:: python

    from mirroropt.integrations.torchopt import MetaMirrorDescent
    inner_opt = MetaMirrorDescent(net, mirror_map, lr=0.1)         # was torchopt.MetaSGD(net, lr=0.1)
    net_state = torchopt.extract_state_dict(net, by="reference", detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner_opt, by="reference")
    for _ in range(steps):
        inner_opt.step(loss_fn(net(x_spt), y_spt))
    loss_fn(net(x_qry), y_qry).backward()                         # reaches net AND the map
    torchopt.recover_state_dict(net, net_state)
    torchopt.recover_state_dict(inner_opt, opt_state)             # resets the dual variable

Needs the optional extra: ``pip install 'mirroropt[torchopt]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

try:
    import torchopt as _torchopt
    from torchopt.base import UninitializedState as _UninitializedState
except ImportError as error:
    raise ImportError(
        "mirroropt.integrations.torchopt needs the optional dependency `torchopt`: "
        "pip install 'mirroropt[torchopt]'."
    ) from error

import torch
from torch import Tensor, nn

from mirroropt import functional as F
from mirroropt.integrations._l2l_style import _cached_primal, _Prepared
from mirroropt.maps._base import MirrorMap

__all__ = ["MetaMirrorDescent", "MirrorState"]


class MirrorState(NamedTuple):
    """The optimizer state of :class:`MetaMirrorDescent`: the dual variable, in name order.

    Attributes:
        z: :math:`z_k` for every parameter, ordered as ``MetaMirrorDescent.names``; it keeps its
            graph, so meta-gradients flow through all inner steps.
    """

    z: tuple[Tensor, ...]


class _PrimalLoop(NamedTuple):
    r"""The internal state of an inner loop that steps in the primal (a linear map, scalar lr):
    the iterates are the module's parameters; :meth:`MetaMirrorDescent.state_dict` reports
    :math:`z_k = \nabla h(\phi_k)` when it is read."""


class MetaMirrorDescent(_torchopt.MetaOptimizer):  # type: ignore[misc]
    r"""Differentiable mirror descent as a TorchOpt meta-optimizer over a module's parameters.

    ``step(loss)`` differentiates ``loss`` w.r.t. the module's current parameters
    :math:`\phi_k` (keeping the graph, like ``torchopt.MetaSGD``) and replaces them by

    .. math::

        z_{k+1} = z_k - \alpha\,\nabla L(\phi_k), \qquad \phi_{k+1} = g(z_{k+1}),

    computed by :func:`mirroropt.functional.step` and :func:`~mirroropt.functional.to_primal`,
    with :math:`z_0 = \nabla h(\phi_0)` taken at the first step from the parameters the module
    has then. Parameter names come from ``module.named_parameters()`` and are matched to the map.
    The map's z-independent work (:meth:`~mirroropt.maps.MirrorMap.prepared`: Kronecker's factor
    exponentials, a convex potential's folded weights) is done once per inner loop, at its first
    step, and again only if the map's parameters change in place mid-loop. A linear map steps in
    the primal, :math:`\phi_{k+1} = \phi_k - \alpha\, g(\nabla L(\phi_k))` (the same iterates,
    without a ``to_dual`` per task). The dual variable is the optimizer state,
    ``state_dict() == (MirrorState(z),)`` (for a primal loop :math:`z_k = \nabla h(\phi_k)`,
    computed when read), or ``(UninitializedState(),)`` before the first step; so
    ``torchopt.extract_state_dict(opt)``/``recover_state_dict(opt, ...)`` save and reset it
    exactly as they do MetaSGD's state, and a task that starts from a recovered state starts from
    :math:`z_0 = \nabla h(\phi_0)` again. The map is held by reference: the meta-gradient of a
    query loss reaches the module's initial parameters, the map's parameters and a tensor ``lr``.

    A number ``lr`` is applied as ``z - lr * g`` (a scalar operand, no device tensor): with the
    :class:`~mirroropt.maps.Identity` map the parameters and meta-gradients equal those of
    ``torchopt.MetaSGD(module, lr)`` bit for bit.

    Args:
        module: the task model; its parameters are adapted in place (TorchOpt's convention: the
            entries of each submodule's ``_parameters`` are replaced by non-leaf tensors).
        mirror_map: the inverse mirror map :math:`g`, built for ``module.named_parameters()``;
            it must have a closed-form ``to_dual`` (``has_to_dual``).
        lr: inner step size :math:`\alpha > 0`: a number or a (learnable) scalar tensor.
        check_finite: raise if an inner gradient is not finite.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``, ``mirror_map`` not a
            :class:`~mirroropt.maps.MirrorMap` or a map without ``to_dual``, or ``lr`` has a
            wrong type.
        ValueError: if ``lr`` is not positive, the map does not fit the module's parameters, or
            the module shares (ties) a parameter under two names.

    Example:
        >>> import torch, torchopt
        >>> from mirroropt.maps import Diagonal
        >>> net = torch.nn.Linear(2, 1)
        >>> mirror_map = Diagonal(net)
        >>> inner_opt = MetaMirrorDescent(net, mirror_map, lr=0.1)
        >>> start = torchopt.extract_state_dict(inner_opt)
        >>> x, y = torch.randn(4, 2), torch.randn(4, 1)
        >>> inner_opt.step(torch.nn.functional.mse_loss(net(x), y))
        >>> torch.nn.functional.mse_loss(net(x), y).backward()
        >>> all(p.grad is not None for p in mirror_map.parameters())
        True
        >>> torchopt.recover_state_dict(inner_opt, start)
        >>> inner_opt.state_dict()
        (UninitializedState(),)

    References:
        Ren et al., "TorchOpt: An Efficient Library for Differentiable Optimization", JMLR 2023,
        arXiv:2211.06934.
        Zhang, Li & Giannakis, "Meta-learning with learned mirror descent (MetaMiDA)",
        arXiv:2509.02418.
    """

    def __init__(
        self,
        module: nn.Module,
        mirror_map: MirrorMap,
        lr: float | Tensor,
        *,
        check_finite: bool = True,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
        F._check_map(mirror_map)
        F._check_one_lr(lr, "lr")
        if not mirror_map.has_to_dual:
            raise TypeError(
                f"`mirror_map` ({type(mirror_map).__name__}) has no closed-form to_dual, so the "
                f"inner loop cannot start from the module's parameters; use "
                f"mirroropt.integrations.MirrorMAML(...).clone(z=z0) or mirroropt.adapt(..., z=z0) "
                f"for a (learned) dual initialization."
            )
        named = list(module.named_parameters())
        if len(list(module.named_parameters(remove_duplicate=False))) != len(named):
            raise ValueError(
                "`module` shares a parameter under two names (tied weights); the mirror map "
                "needs one name per tensor."
            )
        mirror_map.check_fits(dict(named), argument="module.named_parameters()")
        self.module = module
        self.mirror_map = mirror_map
        self.lr = lr
        self.check_finite = bool(check_finite)
        #: parameter names in state order, and where each one lives (submodule, attribute)
        self.names: tuple[str, ...] = tuple(n for n, _ in named)
        self._slots: list[tuple[nn.Module, str]] = []
        for name in self.names:
            prefix, _, attr = name.rpartition(".")
            self._slots.append((module.get_submodule(prefix), attr))
        # TorchOpt's MetaOptimizer attributes (extract/recover_state_dict use state_dict()).
        self.impl = None  # type: ignore[assignment]
        self.param_containers_groups = []
        self.state_groups: list[Any] = [_UninitializedState()]
        # mirror_map.prepared() for the current inner loop (made at its first step: one optimizer
        # serves every task, and each task's backward() frees the previous preparation's graph)
        self._prepared: _Prepared | None = None

    def add_param_group(self, module: nn.Module) -> None:
        """Not supported: one :class:`MetaMirrorDescent` adapts one module with one map.

        Raises:
            TypeError: always.
        """
        raise TypeError(
            "MetaMirrorDescent adapts exactly the module it was built with (its map is built for "
            "those parameters); build a second MetaMirrorDescent for another module."
        )

    def _params(self) -> dict[str, Tensor]:
        params: dict[str, Tensor] = {}
        for name, (owner, attr) in zip(self.names, self._slots):
            value = owner._parameters[attr]
            if not isinstance(value, Tensor):
                raise ValueError(f"The module's parameter {name!r} was removed or set to None.")
            params[name] = value
        return params

    def step(self, loss: Tensor) -> None:
        r"""One differentiable mirror-descent step on ``loss`` (computed with the module).

        Args:
            loss: the support loss :math:`L(\phi_k)`, a scalar tensor.

        Raises:
            TypeError: if ``loss`` is not a tensor.
            ValueError: if ``loss`` is not a scalar or a gradient is not finite.
        """
        if not isinstance(loss, Tensor):
            raise TypeError(f"`loss` must be a scalar tensor, got {type(loss).__name__}.")
        if loss.dim() != 0:
            raise ValueError(f"`loss` must be a scalar tensor, got shape {tuple(loss.shape)}.")
        phi = self._params()
        computed = torch.autograd.grad(
            loss, [phi[n] for n in self.names], create_graph=True, allow_unused=True
        )
        grads = {
            n: torch.zeros_like(phi[n]) if g is None else g for n, g in zip(self.names, computed)
        }
        if self.check_finite:
            F._check_finite(grads, "The gradient of `loss`")
        state = self.state_groups[0]
        started = not isinstance(state, _UninitializedState)
        # a tensor lr's value (a device read) is checked at an inner loop's first step; z - lr * g
        # as MetaSGD rounds it, without a device tensor per step for a number lr
        F._check_lr(self.lr, self.mirror_map.shapes, values=not started)
        self._prepared = _cached_primal(self.mirror_map, self._prepared if started else None)
        g = self._prepared[0]
        names = self.mirror_map.names
        if isinstance(state, MirrorState):
            z: dict[str, Tensor] | None = dict(zip(self.names, state.z))
        elif F._steps_in_primal(self.mirror_map, self.lr):  # g(z_k − α∇L) = φ_k − α g(∇L)
            z = None
        else:
            z = F.init(self.mirror_map, phi)
        if z is None:
            phi_new = F._step(names, phi, g(grads), self.lr, fused=False)
            self.state_groups[0] = _PrimalLoop()
        else:
            z_new = F._step(names, z, grads, self.lr, fused=False)
            phi_new = g(z_new)
            self.state_groups[0] = MirrorState(tuple(z_new[n] for n in self.names))
        for name, (owner, attr) in zip(self.names, self._slots):
            owner._parameters[attr] = phi_new[name]  # type: ignore[assignment]

    def state_dict(self) -> tuple[Any, ...]:
        r"""The state, by reference: ``(MirrorState(z),)``, or ``(UninitializedState(),)`` before
        the first step (then :math:`z_0 = \nabla h(\phi_0)` is taken at the next step). A loop
        that steps in the primal reports :math:`z_k = \nabla h(\phi_k)`, computed now (loading
        it continues the loop in the dual, with the same iterates)."""
        if isinstance(self.state_groups[0], _PrimalLoop):
            z = self.mirror_map.to_dual(self._params())
            return (MirrorState(tuple(z[n] for n in self.names)),)
        return tuple(self.state_groups)

    def load_state_dict(self, state_dict: Sequence[Any]) -> None:
        """Load a state from :meth:`state_dict` (what ``torchopt.recover_state_dict`` calls).

        Raises:
            ValueError: if ``state_dict`` is not one ``MirrorState`` with a tensor per parameter
                or one ``UninitializedState``.
        """
        states = list(state_dict)
        ok = len(states) == 1 and (
            isinstance(states[0], _UninitializedState)
            or (
                isinstance(states[0], MirrorState)
                and len(states[0].z) == len(self.names)
                and all(isinstance(t, Tensor) for t in states[0].z)
            )
        )
        if not ok:
            raise ValueError(
                f"`state_dict` must be (MirrorState(z),) with {len(self.names)} tensors or "
                f"(UninitializedState(),), got {states!r:.200}."
            )
        self.state_groups[:] = states
        self._prepared = None  # a new (part of an) inner loop: prepared afresh at its next step
