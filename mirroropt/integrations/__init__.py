"""Drop-in integrations: swap the inner loop of existing MAML code for mirror descent.

Three styles of MAML code, three small diffs (see ``docs/migration.md``):

* hand-written :mod:`torch.func` loops: :func:`mirror_update` replaces ``p - lr * g`` in one line
  (dicts, or lists of parameters and tuples of gradients; :func:`named` names a list for the
  map), :func:`mirror_step`/:func:`mirror_init` carry the dual variable explicitly;
  :func:`make_loss_fn` builds the ``loss_fn`` that :func:`mirroropt.adapt` takes;
* ``higher``: :mod:`mirroropt.integrations.higher` registers :class:`mirroropt.MirrorDescent` with
  ``higher`` (optional extra ``mirroropt[higher]``). ``import mirroropt`` arranges this to happen
  by itself on the first ``import higher``, so ``higher.innerloop_ctx(model, MirrorDescent(...))``
  needs no extra import;
* TorchOpt: :class:`mirroropt.integrations.torchopt.MetaMirrorDescent`, a ``torchopt.MetaSGD``
  counterpart (optional extra ``mirroropt[torchopt]``);
* learn2learn-style wrappers: :class:`MirrorMAML` (``clone()`` / ``adapt(loss)``) and :func:`MAML`.

Attributes are loaded lazily, so ``import mirroropt`` never imports ``higher`` or ``torchopt``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirroropt.integrations._l2l_style import MAML, MirrorLearner, MirrorMAML
    from mirroropt.integrations._torchfunc import (
        make_loss_fn,
        mirror_init,
        mirror_step,
        mirror_update,
        named,
    )

__all__ = [
    "MAML",
    "MirrorLearner",
    "MirrorMAML",
    "make_loss_fn",
    "mirror_init",
    "mirror_step",
    "mirror_update",
    "named",
]

_LAZY = {
    "MAML": "mirroropt.integrations._l2l_style",
    "MirrorLearner": "mirroropt.integrations._l2l_style",
    "MirrorMAML": "mirroropt.integrations._l2l_style",
    "make_loss_fn": "mirroropt.integrations._torchfunc",
    "mirror_init": "mirroropt.integrations._torchfunc",
    "mirror_step": "mirroropt.integrations._torchfunc",
    "mirror_update": "mirroropt.integrations._torchfunc",
    "named": "mirroropt.integrations._torchfunc",
}


#: optional-dependency submodules, imported on first attribute access
#: (``mirroropt.integrations.torchopt.MetaMirrorDescent`` after a plain ``import mirroropt``)
_SUBMODULES = ("higher", "torchopt")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"mirroropt.integrations.{name}")
    raise AttributeError(f"module 'mirroropt.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
