"""Helpers shared by the map tests: a functional-call shell and a tiny float64 regression task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Params = dict[str, torch.Tensor]


class MapCall(torch.nn.Module):
    """Runs ``fn(map, *args)``, so ``torch.func.functional_call`` can swap the map's weights."""

    def __init__(self, mirror_map: torch.nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.map = mirror_map
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.map, *args)


def tiny_problem(seed: int = 0) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """A start ``{"w": (3, 2), "b": (3,)}`` and a 6-point regression set ``(x, y)``, float64."""
    gen = torch.Generator().manual_seed(seed)
    start = {
        "w": 0.5 * torch.randn(3, 2, generator=gen, dtype=torch.float64),
        "b": 0.5 * torch.randn(3, generator=gen, dtype=torch.float64),
    }
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    return start, x, y
