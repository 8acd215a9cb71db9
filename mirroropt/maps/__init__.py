"""Mirror maps: the abstract :class:`MirrorMap` and one file per concrete map.

``MAPS`` is the one registry of concrete maps by name (used by the command line and by the
invariant tests); adding a map is one line here.
"""

from __future__ import annotations

from mirroropt.maps._base import MirrorMap
from mirroropt.maps._convex_potential import ConvexPotential
from mirroropt.maps._diagonal import Diagonal
from mirroropt.maps._elementwise_convex import ElementwiseConvex
from mirroropt.maps._identity import Identity

__all__ = ["MAPS", "Diagonal", "Identity", "MirrorMap"]

#: Every concrete map by its command-line name.
MAPS: dict[str, type[MirrorMap]] = {
    "identity": Identity,
    "diagonal": Diagonal,
    "convex_potential": ConvexPotential,
    "elementwise_convex": ElementwiseConvex,
}
__all__ += ["ConvexPotential", "ElementwiseConvex"]  # zoo3 maps (added line: branches merge)
