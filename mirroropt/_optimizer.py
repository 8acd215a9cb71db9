"""``MirrorDescent``: a thin ``torch.optim.Optimizer`` shell over the functional core."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from mirroropt import functional as F
from mirroropt.functional import _check_finite, _check_one_lr
from mirroropt.maps._base import MirrorMap

__all__ = ["MirrorDescent"]


class MirrorDescent(Optimizer):
    r"""Mirror descent as a ``torch.optim`` optimizer: :math:`z \leftarrow z - \alpha\nabla L(g(z))`.

    Keeps the dual variable :math:`z` of every parameter in ``self.state[p]["z"]`` (initialized
    lazily at the first :meth:`step` as :math:`z_0 = \nabla h(\phi_0)`, or from ``z0``), and at each
    step writes :math:`\phi = g(z)` into the parameters. All math is
    :func:`mirroropt.functional.step` and :func:`~mirroropt.functional.to_primal`; with the
    :class:`~mirroropt.maps.Identity` map it is :class:`torch.optim.SGD` bit for bit.

    This shell is for ordinary (non-differentiable) training loops and updates parameters in
    place under ``torch.no_grad()``; for meta-learning through the inner loop use
    :func:`mirroropt.adapt` or the integrations.

    Args:
        params: the parameters: ``model.named_parameters()`` (names are matched to the map),
            param-group dicts whose ``"params"`` are ``(name, tensor)`` pairs, or unnamed tensors
            (``model.parameters()``) that are the very tensors the map was built from (matched
            by identity, never by position, which would swap same-shaped tensors); other unnamed
            tensors are refused. Every tensor must be floating point and require grad (a map couples
            tensors, so a frozen one would still be moved; build the map and the optimizer over
            the trainable tensors only).
        mirror_map: the inverse mirror map :math:`g`, built for exactly these parameters. It is
            held by reference (not in ``param_groups``), so its learnable parameters are never
            copied.
        lr: step size :math:`\alpha > 0` (default for groups that set none).
        z0: optional dual initialization name → tensor, required for maps without ``to_dual``;
            the parameters are set to :math:`\phi_0 = g(z_0)` at construction.
            :meth:`load_state_dict` then sets them to :math:`g(z)` of the loaded duals, so a
            resumed run is the same whether the model's weights are loaded before or after the
            optimizer is built.
        check_finite: raise on non-finite gradients instead of writing NaNs into the model.

    Raises:
        TypeError: if ``mirror_map`` is not a :class:`~mirroropt.maps.MirrorMap`, it has no
            ``to_dual`` and ``z0`` is missing, ``params`` are unnamed, or a parameter is not
            floating point.
        ValueError: if ``lr`` is not positive (or a tensor that is not a scalar), a parameter
            does not require grad, or the parameters do not fit the map (names, count or
            shapes).

    Example:
        >>> import torch
        >>> from mirroropt import MirrorDescent
        >>> from mirroropt.maps import Diagonal
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = MirrorDescent(model.named_parameters(), Diagonal(model), lr=0.1)
        >>> loss = model(torch.ones(2, 3)).pow(2).mean()
        >>> loss.backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Any],
        mirror_map: MirrorMap,
        lr: float | Tensor = 1e-3,
        *,
        z0: Mapping[str, Tensor] | None = None,
        check_finite: bool = True,
    ) -> None:
        if not isinstance(mirror_map, MirrorMap):
            raise TypeError(
                f"`mirror_map` must be a mirroropt.maps.MirrorMap, got {type(mirror_map).__name__}."
            )
        _check_one_lr(lr, "lr")
        super().__init__(params, {"lr": lr})
        self.mirror_map = mirror_map
        self.check_finite = check_finite
        self._names = self._match_names()
        if z0 is not None:
            mirror_map.check_fits(z0, argument="z0")
        elif not mirror_map.has_to_dual:
            raise TypeError(
                f"`mirror_map` ({type(mirror_map).__name__}) has no closed-form to_dual; pass a "
                f"dual initialization `z0` (dict name → tensor)."
            )
        self._z0 = None if z0 is None else {n: t.detach().clone() for n, t in z0.items()}
        if self._z0 is not None:
            self._start_from_dual(self._z0)

    @torch.no_grad()
    def _start_from_dual(self, z0: Mapping[str, Tensor]) -> None:
        """Set ``state[p]["z"] = z0`` and the parameters to φ₀ = g(z₀), so gradients start there."""
        phi0 = F.to_primal(self.mirror_map, z0)
        for p, n in self._names.items():
            self.state[p]["z"] = z0[n].to(p).clone()
            p.copy_(phi0[n])

    def _match_names(self) -> dict[Tensor, str]:
        params = [p for group in self.param_groups for p in group["params"]]
        given = [n for group in self.param_groups for n in group.get("param_names", [])]
        if not given:  # unnamed: by identity with the tensors the map was built from
            known = [self.mirror_map.source_name(p) for p in params]
            given = [n for n in known if n is not None] if None not in known else []
        if len(given) != len(params):
            raise TypeError(
                f"`params` must be named, e.g. model.named_parameters() or param groups of "
                f"(name, tensor) pairs, or be the very tensors the map was built from; got "
                f"{len(params) - len(given)} tensor(s) it cannot name. Names are matched to the "
                f"map's {list(self.mirror_map.names)}; matching by position would silently swap "
                f"same-shaped tensors."
            )
        if len(given) != len(self.mirror_map.names):
            raise ValueError(
                f"`params` has {len(params)} tensors but `mirror_map` was built for "
                f"{len(self.mirror_map.names)}: {list(self.mirror_map.names)}."
            )
        integral = [n for n, p in zip(given, params) if not p.is_floating_point()]
        if integral:
            raise TypeError(
                f"`params` must be floating point, got {params[given.index(integral[0])].dtype} "
                f"for {integral}."
            )
        self._check_trainable(zip(given, params))
        self.mirror_map.check_fits(dict(zip(given, params)), argument="params")
        return {p: n for p, n in zip(params, given)}

    @staticmethod
    def _check_trainable(named: Iterable[tuple[str, Tensor]]) -> None:
        frozen = [n for n, p in named if not p.requires_grad]
        if frozen:
            raise ValueError(
                f"`params` {frozen} do not require grad; MirrorDescent would still move them "
                f"(a map couples tensors). Build the map and the optimizer over the trainable "
                f"tensors only, e.g. [(n, p) for n, p in model.named_parameters() if "
                f"p.requires_grad]."
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        r"""Load a state saved by :meth:`state_dict`, then set every parameter to :math:`g(z)`.

        The parameters are a function of the duals, so writing :math:`\phi = g(z)` restores a
        consistent :math:`(\phi, z)` whatever the order of ``model.load_state_dict`` and the
        optimizer's construction (which, with ``z0``, wrote :math:`g(z_0)` into them).
        """
        super().load_state_dict(state_dict)
        if all("z" in self.state[p] for p in self._names):
            with torch.no_grad():
                z = {n: self.state[p]["z"] for p, n in self._names.items()}
                phi = F.to_primal(self.mirror_map, z)
                for p, n in self._names.items():
                    p.copy_(phi[n])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one mirror-descent step; ``closure`` re-evaluates the loss (as in ``torch.optim``).

        Parameters whose ``.grad`` is ``None`` get a zero gradient (their dual does not move, but
        their primal value may, for maps that couple tensors).

        Raises:
            NonFiniteError: (a ``ValueError``) if a gradient is not finite (with
                ``check_finite=True``); the parameters are left untouched.
            ValueError: if a parameter was frozen (``requires_grad=False``) after construction.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_trainable((n, p) for p, n in self._names.items())
        if any("z" not in self.state[p] for p in self._names):
            self._init_duals()
        z: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        lrs: dict[str, float | Tensor] = {}
        params: dict[str, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                name = self._names[p]
                params[name] = p
                z[name] = self.state[p]["z"]
                grads[name] = torch.zeros_like(p) if p.grad is None else p.grad
                lrs[name] = group["lr"]
        if self.check_finite:
            _check_finite(grads, "The gradient in `params`")
        z_new = F.step(self.mirror_map, z, grads, lrs)
        phi = F.to_primal(self.mirror_map, z_new)
        for name, p in params.items():
            self.state[p]["z"] = z_new[name]
            p.copy_(phi[name])
        return loss

    def _init_duals(self) -> None:
        z0 = F.init(self.mirror_map, {n: p for p, n in self._names.items()})
        for p, n in self._names.items():
            if "z" not in self.state[p]:
                self.state[p]["z"] = z0[n].to(p).clone()
