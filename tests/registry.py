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
from mirroropt.maps import BlockIAF, Diagonal, Identity, MirrorMap

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
        identity_init: ``make`` builds the map at an identity (gradient-descent) initialization;
            classical maps that are fixed and not the identity (entropic, p-norm) set False and
            are asserted NOT to reduce to gradient descent.
    """

    id: str
    make: Callable[[dict[str, torch.Size]], MirrorMap]
    trained: Callable[[dict[str, torch.Size]], MirrorMap] | None = None
    bound: float = 4.0
    identity_init: bool = True

    def build_trained(self, shapes: dict[str, torch.Size]) -> MirrorMap:
        if self.trained is not None:
            return self.trained(shapes).double()
        return perturbed(self.make(shapes))


CASES: list[MapCase] = [
    MapCase("identity", Identity),
    MapCase("diagonal", Diagonal),
    MapCase("diagonal-per-tensor", lambda s: Diagonal(s, per="tensor")),
    # unconstrained flow: monotone only on a bounded box and for small cross-block weights (measured
    # on this box: at perturbation 0.1 its symmetrized Jacobian is already indefinite; never
    # monotone on all of R^d, see tests/maps/test_block_iaf.py)
    MapCase("block_iaf", BlockIAF, trained=lambda s: perturbed(BlockIAF(s), scale=0.05)),
    # monotone=True is strongly monotone by construction, even after a large perturbation
    MapCase(
        "block_iaf-monotone",
        lambda s: BlockIAF(s, monotone=True),
        trained=lambda s: perturbed(BlockIAF(s, monotone=True), scale=1.0),
    ),
    MapCase("kronecker", maps.Kronecker),
    MapCase("kronecker-capped", lambda s: maps.Kronecker(s, max_factor_size=3)),
    MapCase("pnorm-2", lambda s: maps.PNorm(s, p=2)),
    MapCase("pnorm-2-per-tensor", lambda s: maps.PNorm(s, p=2, per="tensor")),
    MapCase("pnorm-auto", maps.PNorm, identity_init=False),
    MapCase(
        "pnorm-1.5-per-tensor", lambda s: maps.PNorm(s, p=1.5, per="tensor"), identity_init=False
    ),
    MapCase("pnorm-3", lambda s: maps.PNorm(s, p=3.0), identity_init=False),
    MapCase("entropic-orthant", maps.Entropic, identity_init=False),
    MapCase(
        "entropic-simplex",
        lambda s: maps.Entropic(s, domain="simplex"),
        identity_init=False,
    ),
    MapCase(
        "entropic-simplex-dim0",
        lambda s: maps.Entropic(s, domain="simplex", dim=0),
        identity_init=False,
    ),
    # convex by construction for any weights: test far from identity (every weight moved by N(0, 1))
    MapCase(
        "elementwise_convex",
        maps.ElementwiseConvex,
        lambda s: perturbed(maps.ElementwiseConvex(s), 1.0),
    ),
    MapCase(
        "convex_potential", maps.ConvexPotential, lambda s: perturbed(maps.ConvexPotential(s), 1.0)
    ),
    # MetaMiDA's Remark 1 form: sigmoid-bounded weights, same values at initialization
    MapCase(
        "convex_potential-sigmoid",
        lambda s: maps.ConvexPotential(s, weights="sigmoid"),
        lambda s: perturbed(maps.ConvexPotential(s, weights="sigmoid"), 1.0),
    ),
]
