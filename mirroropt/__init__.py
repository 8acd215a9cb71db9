"""mirroropt: learned mirror descent for meta-learning.

A differentiable mirror-descent inner optimizer (:mod:`mirroropt.functional`, :class:`MirrorDescent`)
with learnable mirror maps (:mod:`mirroropt.maps`) and a property-test kit
(:mod:`mirroropt.testing`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from mirroropt import functional, maps
from mirroropt._batching import map_tasks, uses_batch_statistics
from mirroropt._optimizer import MirrorDescent
from mirroropt._utils import NonFiniteError
from mirroropt.functional import Trajectory, adapt, adapt_trajectory, init, step, to_primal
from mirroropt.integrations import _autoregister
from mirroropt.maps import MirrorMap

try:
    __version__ = version("mirroropt")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# MirrorDescent works in higher.innerloop_ctx without importing higher here: registered on its import.
_autoregister.install()

__all__ = [
    "MirrorDescent",
    "MirrorMap",
    "NonFiniteError",
    "Trajectory",
    "__version__",
    "adapt",
    "adapt_trajectory",
    "functional",
    "init",
    "map_tasks",
    "maps",
    "step",
    "to_primal",
    "uses_batch_statistics",
]
