"""Lazy imports of the optional ``workflow`` extra (tqdm, matplotlib)."""

from __future__ import annotations

from typing import Any

__all__ = ["require_matplotlib", "require_tqdm"]

_HINT = "install the optional extra with `pip install mirroropt[workflow]`"


def require_tqdm() -> Any:
    """``tqdm.tqdm``, or an ImportError telling how to install it."""
    try:
        from tqdm import tqdm
    except ImportError as err:
        raise ImportError(f"Progress bars need tqdm; {_HINT}.") from err
    return tqdm


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend, or an ImportError."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"Plots need matplotlib; {_HINT}.") from err
    return plt
