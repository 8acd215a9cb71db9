"""hypothesis strategies for property-testing mirror maps: realistic shapes and magnitudes.

Requires ``hypothesis`` (``pip install mirroropt[test]``). Tensors are not drawn entry by entry
(thousands of coordinates would exhaust hypothesis' buffer and shrink to zeros): hypothesis
draws each tensor's *style* (Gaussian, log-uniform entries, sparse, constant, zeros), its
largest magnitude (log-uniform over ``[smallest, bound]``, default up to 1e3) and a seed, and
torch fills the tensor. So draws cover many orders of magnitude and shrink towards simple ones.

* :func:`dual_points` — one point; ``st.lists(dual_points(...), min_size=2)`` may repeat points,
  which the checks skip and count (never divide by);
* :func:`point_lists` and :func:`points_for` — lists of points that are pairwise distinct by
  construction; ``points_for(model_or_map)`` draws from a model's (or a map's) own shapes;
* :func:`shape_dicts`, :func:`param_dicts` — layer-like shapes: conv kernels
  ``(C_out, C_in, k, k)``, linear weights up to 1024 wide (above ``Kronecker``'s dense-factor
  limit of 512), biases, norm vectors and 0-d scalars.

Profiles: :func:`register_profiles` registers ``"ci"`` (derandomized, fixed example count, no
deadline) and ``"dev"`` (random, more examples); load one with
``hypothesis.settings.load_profile("ci")``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

try:
    from hypothesis import settings
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mirroropt.testing.strategies needs hypothesis: pip install 'mirroropt[test]'."
    ) from error

import torch
from torch import Tensor

from mirroropt.maps._base import MirrorMap
from mirroropt.testing._sampling import (
    STYLES,
    _check_domain,
    dtype_of,
    make_tensor,
    separate,
    shapes_for,
)

__all__ = [
    "dual_points",
    "param_dicts",
    "point_lists",
    "points_for",
    "register_profiles",
    "shape_dicts",
]


def register_profiles() -> None:
    """Register the ``"ci"`` (derandomized) and ``"dev"`` hypothesis profiles."""
    settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None)
    settings.register_profile("dev", max_examples=100, deadline=None)


def _smallest(bound: float, smallest: float | None) -> float:
    return min(1e-3, bound) if smallest is None else smallest


@st.composite
def _tensor(
    draw: st.DrawFn,
    shape: torch.Size,
    bound: float,
    smallest: float,
    dtype: torch.dtype,
) -> Tensor:
    style = draw(st.sampled_from(STYLES))
    log_magnitude = draw(st.floats(math.log(smallest), math.log(bound)))
    seed = draw(st.integers(0, 2**31 - 1))
    magnitude = min(math.exp(log_magnitude), bound)
    return make_tensor(shape, style, magnitude, smallest=smallest, seed=seed, dtype=dtype).clamp(
        -bound, bound
    )


def dual_points(
    shapes: Mapping[str, torch.Size | tuple[int, ...]],
    *,
    bound: float = 1e3,
    smallest: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> st.SearchStrategy[dict[str, Tensor]]:
    """Dicts name → tensor with the given shapes, entries in ``[-bound, bound]``.

    Each tensor's largest magnitude is log-uniform in ``[smallest, bound]`` (default
    ``smallest = min(1e-3, bound)``), its style one of Gaussian, log-uniform entries, sparse,
    constant or zeros.

    Raises:
        ValueError: unless ``0 < smallest <= bound < inf``.

    Example:
        >>> from hypothesis import given
        >>> @given(dual_points({"w": (2, 3)}))
        ... def test(z):
        ...     assert z["w"].shape == (2, 3)
    """
    smallest = _smallest(bound, smallest)
    _check_domain(bound, smallest)
    return st.fixed_dictionaries(
        {
            name: _tensor(torch.Size(tuple(shape)), bound, smallest, dtype)
            for name, shape in shapes.items()
        }
    )


def point_lists(
    shapes: Mapping[str, torch.Size | tuple[int, ...]],
    *,
    min_size: int = 2,
    max_size: int = 4,
    bound: float = 1e3,
    smallest: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> st.SearchStrategy[list[dict[str, Tensor]]]:
    """Lists of ``min_size``…``max_size`` dual points, pairwise distinct by construction.

    A point that comes out within ``1e-3`` (relative, max-norm) of an earlier one gets a seeded
    offset of about a tenth of its magnitude (:func:`mirroropt.testing._sampling.separate`).
    """
    smallest = _smallest(bound, smallest)
    if not 1 <= min_size <= max_size:
        raise ValueError(
            f"`min_size` and `max_size` must satisfy 1 <= min_size <= max_size, got {min_size} "
            f"and {max_size}."
        )
    one = dual_points(shapes, bound=bound, smallest=smallest, dtype=dtype)
    return st.tuples(st.lists(one, min_size=min_size, max_size=max_size), st.integers(0, 999)).map(
        lambda drawn: separate(drawn[0], bound=bound, smallest=smallest, seed=drawn[1])
    )


def points_for(
    model_or_map: Any,
    *,
    min_size: int = 2,
    max_size: int = 4,
    bound: float = 1e3,
    smallest: float | None = None,
    dtype: torch.dtype | None = None,
) -> st.SearchStrategy[list[dict[str, Tensor]]]:
    """Distinct dual points with a model's (or a map's) own names, shapes and dtype.

    For a :class:`~mirroropt.maps.MirrorMap` the points are projected with its
    :meth:`~mirroropt.maps.MirrorMap.canonical_dual` (where the map is one-to-one).

    Args:
        model_or_map: an ``nn.Module`` (its ``named_parameters()``), a map, or a mapping
            name → tensor/shape.
        min_size, max_size: how many points per list.
        bound, smallest: the domain (see :func:`dual_points`).
        dtype: default the module's floating dtype, else float64.

    Example:
        >>> from torch import nn
        >>> from hypothesis import given
        >>> @given(points_for(nn.Conv2d(2, 3, 3).double()))
        ... def test(points):
        ...     assert points[0]["weight"].shape == (3, 2, 3, 3)
    """
    shapes = shapes_for(model_or_map)
    lists = point_lists(
        shapes,
        min_size=min_size,
        max_size=max_size,
        bound=bound,
        smallest=smallest,
        dtype=dtype or dtype_of(model_or_map),
    )
    if isinstance(model_or_map, MirrorMap):
        return lists.map(lambda pts: [model_or_map.canonical_dual(z) for z in pts])
    return lists


@st.composite
def shape_dicts(
    draw: st.DrawFn, *, max_layers: int = 3, max_numel: int = 4096
) -> dict[str, tuple[int, ...]]:
    """Layer-like shapes: ``conv`` (kernel ``(C_out, C_in, k, k)`` and bias), ``linear`` (weight
    ``(out, in)`` with ``in`` up to 1024, and bias), ``norm`` (weight and bias vectors) and
    ``scalar`` (a 0-d tensor), named ``l{i}.weight``/``l{i}.bias``; at most ``max_numel``
    coordinates in all (sides are shrunk to fit)."""
    if max_layers < 1 or max_numel < 1:
        raise ValueError(
            f"`max_layers` and `max_numel` must be positive, got {max_layers} and {max_numel}."
        )
    kinds = draw(
        st.lists(
            st.sampled_from(("conv", "linear", "norm", "scalar")), min_size=1, max_size=max_layers
        )
    )
    budget = max(1, max_numel // len(kinds))
    out: dict[str, tuple[int, ...]] = {}
    for i, kind in enumerate(kinds):
        if kind == "scalar":
            out[f"l{i}.scale"] = ()
        elif kind == "norm":
            n = draw(st.integers(1, min(256, max(1, budget // 2))))
            out[f"l{i}.weight"], out[f"l{i}.bias"] = (n,), (n,)
        elif kind == "linear":
            o = draw(st.integers(1, 64))
            width = draw(st.integers(1, 1024))
            o = min(o, max(1, budget // (width + 1)))
            width = min(width, max(1, budget // o - 1))
            out[f"l{i}.weight"], out[f"l{i}.bias"] = (o, width), (o,)
        else:
            k = draw(st.sampled_from((1, 3, 5)))
            c_out, c_in = draw(st.integers(1, 64)), draw(st.integers(1, 64))
            while c_out * (c_in * k * k + 1) > budget and (c_out > 1 or c_in > 1 or k > 1):
                if c_in > 1:
                    c_in = max(1, c_in // 2)
                elif c_out > 1:
                    c_out = max(1, c_out // 2)
                else:
                    k = 1
            out[f"l{i}.weight"], out[f"l{i}.bias"] = (c_out, c_in, k, k), (c_out,)
    return out


@st.composite
def param_dicts(
    draw: st.DrawFn,
    *,
    max_tensors: int = 3,
    max_numel: int = 4096,
    bound: float = 1e3,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """Parameter dicts of layer-like shapes (from :func:`shape_dicts`, ``max_tensors`` layers)
    and values from :func:`dual_points`."""
    shapes = draw(shape_dicts(max_layers=max_tensors, max_numel=max_numel))
    return draw(dual_points(shapes, bound=bound, dtype=dtype))
