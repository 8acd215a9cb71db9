"""Mirror maps: the abstract :class:`MirrorMap` and one file per concrete map.

``MAPS`` is the one registry of concrete maps by name (used by the command line and by the
invariant tests); adding a map is one line here.
"""

from __future__ import annotations

from mirroropt.maps._base import MirrorMap
from mirroropt.maps._block_iaf import BlockIAF
from mirroropt.maps._diagonal import Diagonal
from mirroropt.maps._entropic import Entropic
from mirroropt.maps._identity import Identity
from mirroropt.maps._kronecker import Kronecker
from mirroropt.maps._pnorm import PNorm

__all__ = [
    "MAPS",
    "BlockIAF",
    "Diagonal",
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
    "entropic": Entropic,
    "pnorm": PNorm,
}
