"""Drop-in integrations: swap the inner loop of existing MAML code for mirror descent.

Three styles of MAML code, three small diffs (see ``docs/migration.md``):

* hand-written :mod:`torch.func` loops: :func:`mirror_step` replaces ``p - lr * g``;
  :func:`make_loss_fn` builds the ``loss_fn`` that :func:`mirroropt.adapt` takes;
* ``higher``: :mod:`mirroropt.integrations.higher` registers :class:`mirroropt.MirrorDescent` with
  ``higher`` (optional extra ``mirroropt[higher]``; imported only when that module is);
* learn2learn-style wrappers: :class:`MirrorMAML` (``clone()`` / ``adapt(loss)``) and :func:`MAML`.

Attributes are loaded lazily, so ``import mirroropt`` never imports ``higher``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirroropt.integrations._learner import MAML, MirrorLearner, MirrorMAML
    from mirroropt.integrations._torchfunc import make_loss_fn, mirror_step

__all__ = ["MAML", "MirrorLearner", "MirrorMAML", "make_loss_fn", "mirror_step"]

_LAZY = {
    "MAML": "mirroropt.integrations._learner",
    "MirrorLearner": "mirroropt.integrations._learner",
    "MirrorMAML": "mirroropt.integrations._learner",
    "make_loss_fn": "mirroropt.integrations._torchfunc",
    "mirror_step": "mirroropt.integrations._torchfunc",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mirroropt.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
