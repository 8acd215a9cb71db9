"""Register :class:`mirroropt.MirrorDescent` with ``higher`` when, and only when, ``higher`` is used.

``import mirroropt`` calls :func:`install`. If ``higher`` is already imported, the registration
(importing :mod:`mirroropt.integrations.higher`) happens at once; otherwise a finder on
:data:`sys.meta_path` waits for the first ``import higher``, lets it finish, registers, and removes
itself. So ``higher.innerloop_ctx(model, mirroropt.MirrorDescent(...))`` works after a plain
``import mirroropt``, and a program that never imports ``higher`` never loads it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["install", "installed"]

_TARGET = "higher"
_INTEGRATION = "mirroropt.integrations.higher"


def _register() -> None:
    """Import the integration (it calls ``higher.register_optim``); warn instead of breaking the
    user's ``import higher`` if that fails (e.g. an incompatible ``higher`` version)."""
    try:
        importlib.import_module(_INTEGRATION)
    except Exception as error:  # pragma: no cover - depends on a broken third-party install
        warnings.warn(
            f"mirroropt could not register MirrorDescent with higher ({error!r}); import "
            f"{_INTEGRATION} to see the full error.",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps ``higher``'s own loader: runs it, then registers mirroropt's optimizer."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _uninstall()
        _register()

    def __getattr__(self, name: str) -> Any:  # resources, get_source, …: the original loader's
        return getattr(self._loader, name)


class _HigherFinder(importlib.abc.MetaPathFinder):
    """Finds ``higher`` with the other finders and wraps its loader; ignores every other name."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


_FINDER = _HigherFinder()


def _uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def installed() -> bool:
    """Whether the finder is still waiting for ``import higher``."""
    return _FINDER in sys.meta_path


def install() -> None:
    """Register now if ``higher`` is imported, else wait for its first import (idempotent)."""
    if _TARGET in sys.modules:
        _register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
