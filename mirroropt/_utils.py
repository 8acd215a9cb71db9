"""Small internal helpers: functorch detection, shape specs and argument checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["NonFiniteError", "is_transformed", "key_of", "shapes_of"]


class NonFiniteError(ValueError):
    """A gradient, loss or parameter that must be finite is not (``nan`` or ``inf``).

    A ``ValueError``, so ``except ValueError`` keeps working; raised by :func:`mirroropt.adapt`
    (inner gradients, eager), :func:`mirroropt.map_tasks` (every path, after ``vmap`` returns),
    :class:`mirroropt.MirrorDescent` and the training workflow.
    """


def is_transformed(tensors: Iterable[Tensor]) -> bool:
    """True when any tensor is wrapped by a ``torch.func`` transform (vmap, grad, jvp…).

    Under a transform the core must not synchronize (``.item()``, data-dependent checks) and must
    not use ``torch._foreach_*`` kernels, which have no batching rule.
    """
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def key_of(name: str) -> str:
    """A parameter name as a submodule/parameter key (``nn.ParameterDict`` forbids ``.``)."""
    return name.replace(".", "-")


def shapes_of(params: Any, *, argument: str = "params") -> dict[str, torch.Size]:
    """Read ``name → shape`` from a module, a mapping or an iterable of ``(name, tensor)``."""
    if isinstance(params, torch.nn.Module):
        items: Iterable[tuple[Any, Any]] = params.named_parameters()
    elif isinstance(params, Mapping):
        items = params.items()
    elif isinstance(params, Iterable) and not isinstance(params, (str, bytes, Tensor)):
        items = list(params)
        if not all(isinstance(it, tuple) and len(it) == 2 for it in items):
            raise TypeError(
                f"`{argument}` must be an nn.Module, a mapping name → tensor/shape or an iterable "
                f"of (name, tensor) pairs such as model.named_parameters(); got an iterable with "
                f"items of type {sorted({type(it).__name__ for it in items})}."
            )
    else:
        raise TypeError(
            f"`{argument}` must be an nn.Module, a mapping name → tensor/shape or an iterable of "
            f"(name, tensor) pairs such as model.named_parameters(); got {type(params).__name__}."
        )
    shapes: dict[str, torch.Size] = {}
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"`{argument}` names must be str, got {type(name).__name__}.")
        if isinstance(value, Tensor):
            shapes[name] = value.shape
        elif isinstance(value, (torch.Size, tuple, list)) and all(
            isinstance(d, int) for d in value
        ):
            shapes[name] = torch.Size(value)
        else:
            raise TypeError(
                f"`{argument}[{name!r}]` must be a tensor or a shape, got {type(value).__name__}."
            )
    if not shapes:
        raise ValueError(f"`{argument}` must name at least one tensor, got none.")
    return shapes
