"""hypothesis strategies for property-testing mirror maps, bounded to avoid false failures.

Requires ``hypothesis`` (``pip install mirroropt[test]``). Values are drawn from a bounded box
(default ±8) with no NaN/inf/subnormals, so failures reflect the map, not float overflow.

Profiles: :func:`register_profiles` registers ``"ci"`` (derandomized, fixed example count, no
deadline) and ``"dev"`` (random, more examples); load one with
``hypothesis.settings.load_profile("ci")``.
"""

from __future__ import annotations

from collections.abc import Mapping

try:
    import numpy as np
    from hypothesis import settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mirroropt.testing.strategies needs hypothesis: pip install 'mirroropt[test]'."
    ) from error

import torch
from torch import Tensor

__all__ = ["dual_points", "param_dicts", "register_profiles", "shape_dicts"]


def register_profiles() -> None:
    """Register the ``"ci"`` (derandomized) and ``"dev"`` hypothesis profiles."""
    settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None)
    settings.register_profile("dev", max_examples=100, deadline=None)


def _tensor(shape: tuple[int, ...], bound: float, dtype: torch.dtype) -> st.SearchStrategy[Tensor]:
    elements = st.floats(
        -bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False
    )
    return arrays(np.float64, shape, elements=elements).map(
        lambda a: torch.from_numpy(a.copy()).to(dtype)
    )


def dual_points(
    shapes: Mapping[str, torch.Size | tuple[int, ...]],
    *,
    bound: float = 8.0,
    dtype: torch.dtype = torch.float64,
) -> st.SearchStrategy[dict[str, Tensor]]:
    """Dicts name → tensor with the given shapes and entries in ``[-bound, bound]``.

    Example:
        >>> from hypothesis import given
        >>> @given(dual_points({"w": (2, 3)}))
        ... def test(z):
        ...     assert z["w"].shape == (2, 3)
    """
    if not bound > 0:
        raise ValueError(f"`bound` must be positive, got {bound}.")
    return st.fixed_dictionaries(
        {name: _tensor(tuple(shape), bound, dtype) for name, shape in shapes.items()}
    )


def shape_dicts(
    *, max_tensors: int = 3, max_dims: int = 3, max_side: int = 4
) -> st.SearchStrategy[dict[str, tuple[int, ...]]]:
    """Dicts of layer-like names (``"l0.weight"``…) → small shapes (0-d to ``max_dims``-d)."""
    shape = st.lists(st.integers(1, max_side), min_size=0, max_size=max_dims).map(tuple)
    return st.lists(shape, min_size=1, max_size=max_tensors).map(
        lambda shapes: {f"l{i}.weight": s for i, s in enumerate(shapes)}
    )


@st.composite
def param_dicts(
    draw: st.DrawFn,
    *,
    max_tensors: int = 3,
    bound: float = 8.0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """Parameter dicts of random small shapes and bounded values (shapes from :func:`shape_dicts`)."""
    shapes = draw(shape_dicts(max_tensors=max_tensors))
    return draw(dual_points(shapes, bound=bound, dtype=dtype))
