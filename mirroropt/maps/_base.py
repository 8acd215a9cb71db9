"""The abstract inverse mirror map that every map in mirroropt subclasses."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from mirroropt._types import Params
from mirroropt._utils import shapes_of

__all__ = ["MirrorMap"]


class MirrorMap(nn.Module, abc.ABC):
    r"""Abstract inverse mirror map :math:`g = (\nabla h)^{-1} = \nabla h^*` on a dict of tensors.

    Mirror descent with a distance-generating function :math:`h` keeps a dual variable
    :math:`z = \nabla h(\phi)` and steps it with the task gradient taken at the primal point:

    .. math::

        z_{k+1} = z_k - \alpha \nabla L(g(z_k)), \qquad \phi_K = g(z_K).

    A subclass parameterizes :math:`g` (:meth:`to_primal`, also the module's ``forward``) and, where
    it has a closed form, the mirror map :math:`\nabla h` (:meth:`to_dual`). Maps are built from a
    model's named parameters, so they may act per tensor, per layer or on all tensors jointly; they
    always take and return a dict ``name → tensor`` with exactly the names and shapes they were
    built for.

    Capability flags (class attributes) decide which invariants apply to a map:

    * ``has_to_dual`` — :meth:`to_dual` exists in closed form (round trip ``to_dual∘to_primal = id``);
    * ``is_gradient_field`` — :math:`g = \nabla h^*` for a convex :math:`h^*` (symmetric Jacobian),
      so :math:`D_h` is a true Bregman divergence;
    * ``is_linear`` — :math:`g(z) = P z` for a fixed (learnable) positive-definite :math:`P`.

    Subclasses must be identity (or reduce to gradient descent) at their default initialization,
    so meta-training starts as MAML. Every map is checked by :mod:`mirroropt.testing`.

    Args:
        params: what the map acts on: an ``nn.Module`` (its ``named_parameters()``), a mapping
            name → tensor or shape, or an iterable of ``(name, tensor)`` pairs.

    Raises:
        TypeError: if ``params`` is none of the above.
        ValueError: if ``params`` names no tensor.

    References:
        Nemirovski & Yudin, *Problem Complexity and Method Efficiency in Optimization*, 1983.
        Beck & Teboulle, "Mirror descent and nonlinear projected subgradient methods for convex
        optimization", Operations Research Letters, 2003.
    """

    has_to_dual: ClassVar[bool] = False
    is_gradient_field: ClassVar[bool] = True
    is_linear: ClassVar[bool] = False

    shapes: dict[str, torch.Size]

    def __init__(self, params: Any) -> None:
        super().__init__()
        if not isinstance(params, (nn.Module, Mapping, Tensor, str, bytes)):
            params = list(params) if isinstance(params, Iterable) else params
        self.shapes = shapes_of(params)
        # the tensors the map was built from, by identity (weakly), so an optimizer given unnamed
        # tensors (net.parameters()) can name them; not pickled or copied (see __getstate__)
        self.__dict__["_source_names"] = _source_names(params)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in dict(state).items() if k != "_source_names"}

    def source_name(self, tensor: Tensor) -> str | None:
        """The name of ``tensor`` if the map was built from it (by identity), else ``None``."""
        names = self.__dict__.get("_source_names")
        return None if names is None else names.get(tensor)

    @property
    def names(self) -> tuple[str, ...]:
        """The parameter names this map acts on, in the order it was built with."""
        return tuple(self.shapes)

    @abc.abstractmethod
    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        r"""The inverse mirror map :math:`\phi = g(z) = \nabla h^*(z)`."""

    def to_dual(self, phi: Mapping[str, Tensor]) -> Params:
        r"""The mirror map :math:`z = \nabla h(\phi) = g^{-1}(\phi)`.

        Raises:
            NotImplementedError: for maps without a closed-form inverse (``has_to_dual`` is
                False); start those from a dual initialization ``z`` instead.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form `to_dual` (has_to_dual=False); start mirror "
            f"descent from a dual initialization `z` instead of primal parameters `phi`."
        )

    def prepared(self) -> Callable[[Mapping[str, Tensor]], Params]:
        """:meth:`to_primal` with everything that does not depend on ``z`` computed once.

        :func:`mirroropt.adapt` calls this once per inner loop and then applies the returned
        function at every step, so maps can hoist work out of the K-step loop (e.g. ``exp`` of
        log-scales, SPD factors from their parameterization). The result must equal
        :meth:`to_primal` exactly and stay differentiable w.r.t. the map's parameters. The
        default returns :meth:`to_primal` itself.
        """
        return self.to_primal

    def canonical_dual(self, z: Mapping[str, Tensor]) -> Params:
        """The representative of ``z`` that ``to_dual(to_primal(z))`` returns.

        The identity for maps that are one-to-one on the whole dual space (the default). Maps that
        are one-to-one only up to a subspace (the entropic simplex map ignores shifts along its
        axis) override it with the projection onto the subspace where they are; the property-test
        kit compares round trips against it and draws points on it.
        """
        return dict(z)

    def forward(self, z: Mapping[str, Tensor]) -> Params:
        """Same as :meth:`to_primal`, so a map can be called like any module."""
        return self.to_primal(z)

    def monotonicity_modulus(self) -> float | None:
        r"""A lower bound :math:`\mu` with :math:`\langle z-z', g(z)-g(z')\rangle \ge \mu\|z-z'\|^2`.

        ``None`` when the map states no bound. Eager only (reads parameter values).
        """
        return None

    def lipschitz_constant(self) -> float | None:
        r"""An upper bound :math:`L` with :math:`\|g(z)-g(z')\| \le L\|z-z'\|`, or ``None``."""
        return None

    def extra_repr(self) -> str:
        return f"tensors={len(self.shapes)}, numel={sum(s.numel() for s in self.shapes.values())}"

    def check_fits(self, params: Mapping[str, Tensor], *, argument: str = "z") -> None:
        """Raise a clear error unless ``params`` has this map's names, shapes, dtype and device.

        Only static properties are read (names, shapes, dtypes, devices), so this is safe under
        ``torch.func.vmap`` (where shapes are per task) and ``torch.func.grad``.

        Raises:
            TypeError: if ``params`` is not a mapping of tensors.
            ValueError: on missing or unexpected names, a wrong shape, mixed dtypes or devices, or a
                dtype/device different from the map's own parameters.
        """
        if not isinstance(params, Mapping):
            raise TypeError(
                f"`{argument}` must be a dict name → tensor, got {type(params).__name__}."
            )
        missing = [n for n in self.shapes if n not in params]
        unexpected = [n for n in params if n not in self.shapes]
        if missing or unexpected:
            raise ValueError(
                f"`{argument}` does not fit {type(self).__name__}: it must have exactly the names "
                f"the map was built for; missing {missing}, unexpected {unexpected}."
            )
        reference: Tensor | None = None
        for name, expected in self.shapes.items():
            value = params[name]
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"`{argument}[{name!r}]` must be a tensor, got {type(value).__name__}."
                )
            if value.shape != expected:
                raise ValueError(
                    f"`{argument}[{name!r}]` has shape {tuple(value.shape)}, but "
                    f"{type(self).__name__} was built for shape {tuple(expected)}."
                )
            if reference is None:
                reference = value
            elif value.dtype != reference.dtype or value.device != reference.device:
                raise ValueError(
                    f"`{argument}` mixes dtypes/devices: {name!r} is {value.dtype} on "
                    f"{value.device}, the first tensor is {reference.dtype} on {reference.device}."
                )
        own: Tensor | None = next(iter(self.parameters()), None)
        if own is None:
            own = next(iter(self.buffers()), None)
        if own is not None and reference is not None and own.is_floating_point():
            if own.dtype != reference.dtype or own.device != reference.device:
                raise ValueError(
                    f"`{argument}` is {reference.dtype} on {reference.device}, but "
                    f"{type(self).__name__}'s parameters are {own.dtype} on {own.device}; move the "
                    f"map with `mirror_map.to(...)` to match."
                )


def _source_names(params: Any) -> WeakIdKeyDictionary:
    """``tensor → name`` (weak, by identity) for the tensors among ``params``."""
    if isinstance(params, nn.Module):
        items: Iterable[Any] = params.named_parameters()
    elif isinstance(params, Mapping):
        items = params.items()
    else:
        items = params if isinstance(params, list) else []
    out = WeakIdKeyDictionary()
    for item in items:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor):
            out[item[1]] = item[0]
    return out
