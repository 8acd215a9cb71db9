"""Mirror maps: the abstract :class:`MirrorMap` and one file per concrete map.

``MAPS`` is the one registry of concrete maps by name (used by the command line and by the
invariant tests); adding a map is one line here.

| map | geometry | paper |
| --- | --- | --- |
| ``Identity`` | gradient descent | MAML (Finn et al., 2017) |
| ``Diagonal`` | positive per-coordinate scale | Meta-SGD (Li et al., 2017) |
| ``Kronecker`` | SPD Kronecker factors per layer | Meta-Curvature (Park & Oliva, 2019) |
| ``BlockIAF`` | block inverse-autoregressive flow | MetaMiDA (Zhang et al., ICASSP 2024) |
| ``ConvexPotential`` | gradient of an input-convex h* | MetaMiDA (Zhang et al., 2025) |
| ``ElementwiseConvex`` | coordinate-wise strongly convex ψ′ | MetaMiDA, O(d) special case |
| ``Entropic`` | exponentiated gradient / multiplicative weights | Beck & Teboulle (2003) |
| ``PNorm`` | ½‖φ‖²_p potential | Gentile (2003) |
"""

from __future__ import annotations

from mirroropt.maps._base import MirrorMap
from mirroropt.maps._block_iaf import BlockIAF
from mirroropt.maps._convex_potential import ConvexPotential
from mirroropt.maps._diagonal import Diagonal
from mirroropt.maps._elementwise_convex import ElementwiseConvex
from mirroropt.maps._entropic import Entropic
from mirroropt.maps._identity import Identity
from mirroropt.maps._kronecker import Kronecker
from mirroropt.maps._pnorm import PNorm

__all__ = [
    "MAPS",
    "BlockIAF",
    "ConvexPotential",
    "Diagonal",
    "ElementwiseConvex",
    "Entropic",
    "Identity",
    "Kronecker",
    "MirrorMap",
    "PNorm",
]

#: Every concrete map by its command-line name.
MAPS: dict[str, type[MirrorMap]] = {
    "identity": Identity,
    "diagonal": Diagonal,
    "kronecker": Kronecker,
    "block_iaf": BlockIAF,
    "convex_potential": ConvexPotential,
    "elementwise_convex": ElementwiseConvex,
    "entropic": Entropic,
    "pnorm": PNorm,
}
