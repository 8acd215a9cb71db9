"""The one registry of mirror maps that every invariant test runs over.

Adding a map to the invariant tests is one line in ``CASES``. Each case builds the map on the
``SHAPES`` layers in float64 *away from* its identity initialization (so the invariants are not
trivially true) and lists what the map must satisfy; flags on the map decide the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mirroropt import maps
from mirroropt.maps import Diagonal, Identity, MirrorMap

#: Layer-like tensors: a conv kernel, its bias, a linear layer and a 0-d scalar.
SHAPES: dict[str, torch.Size] = {
    "conv.weight": torch.Size((3, 2, 3, 3)),
    "conv.bias": torch.Size((3,)),
    "fc.weight": torch.Size((4, 5)),
    "fc.bias": torch.Size((4,)),
}


def perturbed(map_: MirrorMap, scale: float = 0.3, seed: int = 1) -> MirrorMap:
    """Move every learnable parameter of ``map_`` by seeded Gaussian noise (float64)."""
    gen = torch.Generator().manual_seed(seed)
    map_ = map_.double()
    with torch.no_grad():
        for p in map_.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return map_


@dataclass(frozen=True)
class MapCase:
    """One registry entry.

    Attributes:
        id: test id.
        make: builds the map (float64) at its identity initialization from a shapes dict.
        trained: builds the map away from initialization (default: ``perturbed(make(shapes))``).
        bound: dual points are drawn from ``[-bound, bound]``.
    """

    id: str
    make: Callable[[dict[str, torch.Size]], MirrorMap]
    trained: Callable[[dict[str, torch.Size]], MirrorMap] | None = None
    bound: float = 4.0

    def build_trained(self, shapes: dict[str, torch.Size]) -> MirrorMap:
        if self.trained is not None:
            return self.trained(shapes).double()
        return perturbed(self.make(shapes))


CASES: list[MapCase] = [
    MapCase("identity", Identity),
    MapCase("diagonal", Diagonal),
    MapCase("diagonal-per-tensor", lambda s: Diagonal(s, per="tensor")),
    # convex by construction for any weights: test far from identity (every weight moved by N(0, 1))
    MapCase(
        "elementwise_convex",
        maps.ElementwiseConvex,
        lambda s: perturbed(maps.ElementwiseConvex(s), 1.0),
    ),
    MapCase(
        "convex_potential", maps.ConvexPotential, lambda s: perturbed(maps.ConvexPotential(s), 1.0)
    ),
]
