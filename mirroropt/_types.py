"""Type aliases shared by the functional core, the maps and the shells."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

import torch
from torch import Tensor

__all__ = ["LR", "Params", "ShapeSpec"]

#: A dict name → tensor, as :func:`torch.func.functional_call` takes (φ, z or gradients).
Params = dict[str, Tensor]

#: An inner step size α: one number, one (possibly learnable) tensor, or one per tensor by name.
LR = float | Tensor | Mapping[str, float | Tensor]

#: What a map is built from: a module, a mapping name → tensor/shape, or ``named_parameters()``.
ShapeSpec = Union[
    torch.nn.Module,
    Mapping[str, Tensor | torch.Size | tuple[int, ...]],
    "list[tuple[str, Tensor]]",
]
