"""A small nonlinear, tensor-coupling test map, until the nonlinear maps land on main.

``CoupledShift`` is block inverse-autoregressive over the parameter tensors in order:

    g(z)_0 = d_0 ⊙ z_0,    g(z)_i = d_i ⊙ z_i + c · w_i · tanh(mean(z_{i-1}))   (i ≥ 1),

with d_i = exp(ρ_i) > 0, learnable ρ_i and w_i (shaped like tensor i), and c = 0.1. Its inverse is
explicit (solve block by block), its Jacobian is block lower-triangular (not a gradient field) and
for small c·|w| it is strongly monotone. Identity at initialization (ρ = 0, w = 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from mirroropt._utils import key_of
from mirroropt.maps import MirrorMap

__all__ = ["CoupledShift"]


@final
class CoupledShift(MirrorMap):
    """Nonlinear test map coupling each tensor to the previous one (see the module docstring)."""

    has_to_dual: ClassVar[bool] = True
    is_gradient_field: ClassVar[bool] = False
    is_linear: ClassVar[bool] = False
    coupling: ClassVar[float] = 0.1

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.log_scale = nn.ParameterDict(
            {key_of(n): nn.Parameter(torch.zeros(s)) for n, s in self.shapes.items()}
        )
        self.weight = nn.ParameterDict(  # the first tensor has nothing before it
            {key_of(n): nn.Parameter(torch.zeros(s)) for n, s in list(self.shapes.items())[1:]}
        )

    def _shift(self, name: str, previous: Tensor) -> Tensor:
        return self.coupling * self.weight[key_of(name)] * torch.tanh(previous.mean())

    def to_primal(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        previous: Tensor | None = None
        for name in self.shapes:
            phi = z[name] * self.log_scale[key_of(name)].exp()
            if previous is not None:
                phi = phi + self._shift(name, previous)
            out[name] = phi
            previous = z[name]
        return out

    def to_dual(self, phi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        previous: Tensor | None = None
        for name in self.shapes:
            value = phi[name]
            if previous is not None:
                value = value - self._shift(name, previous)
            out[name] = value / self.log_scale[key_of(name)].exp()
            previous = out[name]
        return out
