"""Seeded dual points of realistic shapes and magnitudes (no hypothesis needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mirroropt._utils import shapes_of
from mirroropt.maps._base import MirrorMap

__all__ = ["STYLES", "dtype_of", "make_tensor", "sample_points", "separate", "shapes_for"]

#: How one tensor's entries are drawn: Gaussian, magnitudes log-uniform per entry, mostly zero
#: with a few large entries, one repeated value, all zeros.
STYLES = ("gaussian", "log-uniform", "sparse", "constant", "zeros")


def shapes_for(model_or_map: Any) -> dict[str, torch.Size]:
    """Names and shapes of a map (its ``shapes``), a module (``named_parameters``) or a mapping."""
    if isinstance(model_or_map, MirrorMap):
        return dict(model_or_map.shapes)
    return shapes_of(model_or_map, argument="model_or_map")


def dtype_of(model_or_map: Any, default: torch.dtype = torch.float64) -> torch.dtype:
    """The floating dtype of a module's first floating parameter/buffer (else ``default``)."""
    if isinstance(model_or_map, torch.nn.Module):
        for t in (*model_or_map.parameters(), *model_or_map.buffers()):
            if t.is_floating_point():
                return t.dtype
    if isinstance(model_or_map, Mapping):
        for t in model_or_map.values():
            if isinstance(t, Tensor) and t.is_floating_point():
                return t.dtype
    return default


def _check_domain(bound: float, smallest: float) -> None:
    if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
        raise ValueError(f"`bound` must be a positive finite number, got {bound!r}.")
    if not (isinstance(smallest, (int, float)) and 0 < smallest <= bound):
        raise ValueError(f"`smallest` must be in (0, bound={bound:g}], got {smallest!r}.")


def make_tensor(
    shape: torch.Size | tuple[int, ...],
    style: str,
    magnitude: float,
    *,
    smallest: float,
    seed: int,
    dtype: torch.dtype,
) -> Tensor:
    """One tensor of ``style`` whose largest entry is about ``magnitude`` (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    shape = torch.Size(shape)
    if style == "zeros":
        out = torch.zeros(shape, dtype=torch.float64)
    elif style == "constant":
        sign = 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0
        out = torch.full(shape, sign * magnitude, dtype=torch.float64)
    elif style == "gaussian":
        out = torch.randn(shape, generator=gen, dtype=torch.float64)
        out = magnitude * out / max(float(out.abs().max()), 1e-300) if out.numel() else out
    elif style == "log-uniform":
        lo, hi = math.log(smallest), math.log(max(magnitude, smallest))
        logs = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
        signs = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        out = signs.to(torch.float64) * logs.exp()
    elif style == "sparse":
        out = torch.zeros(shape, dtype=torch.float64).reshape(-1)
        k = max(1, out.numel() // 50)
        idx = torch.randperm(out.numel(), generator=gen)[:k]
        out[idx] = magnitude * (2 * torch.rand(k, generator=gen, dtype=torch.float64) - 1)
        out = out.reshape(shape)
    else:
        raise ValueError(f"`style` must be one of {STYLES}, got {style!r}.")
    return out.to(dtype)


def separate(
    points: list[dict[str, Tensor]], *, bound: float, smallest: float, seed: int
) -> list[dict[str, Tensor]]:
    """Make every pair of ``points`` distinct by a clear margin (seeded offsets), within ``bound``.

    A point closer than ``1e-3·max(‖z‖∞, ‖z'‖∞, smallest)`` (max-norm) to an earlier one gets a
    Gaussian offset of about ``0.1·max(‖z‖∞, smallest)``; clamped to ``[-bound, bound]``.
    """
    gen = torch.Generator().manual_seed(seed + 7919)
    out: list[dict[str, Tensor]] = []
    for point in points:
        for _ in range(20):
            flat = torch.cat([t.reshape(-1) for t in point.values()])
            scale = max(float(flat.abs().max()) if flat.numel() else 0.0, smallest)
            close = False
            for other in out:
                oflat = torch.cat([t.reshape(-1) for t in other.values()])
                gap = float((flat - oflat).abs().max())
                if gap <= 1e-3 * max(scale, float(oflat.abs().max())):
                    close = True
                    break
            if not close:
                break
            point = {
                n: (
                    t + 0.1 * scale * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)
                ).clamp(-bound, bound)
                for n, t in point.items()
            }
        out.append(point)
    return out


def sample_points(
    model_or_map: Any,
    n: int = 4,
    *,
    seed: int = 0,
    bound: float = 1e3,
    smallest: float = 1e-3,
    dtype: torch.dtype | None = None,
) -> list[dict[str, Tensor]]:
    r"""``n`` distinct dual points fitting a map or a model, spread over magnitudes (seeded).

    Each tensor of each point gets a style (Gaussian, log-uniform entries, sparse, constant or
    zeros) and a largest magnitude drawn log-uniformly from ``[smallest, bound]``, so points cover
    many orders of magnitude, as trained weights and dual variables do. Points are pairwise
    distinct by construction (see :func:`separate`). For a map, points are projected with its
    :meth:`~mirroropt.maps.MirrorMap.canonical_dual` (where the map is one-to-one).

    Args:
        model_or_map: a :class:`~mirroropt.maps.MirrorMap`, an ``nn.Module`` or a mapping name →
            tensor/shape.
        n: number of points (≥ 1).
        seed: seed of everything drawn.
        bound: the domain: every entry lies in ``[-bound, bound]``.
        smallest: the smallest magnitude drawn (log-uniform between it and ``bound``).
        dtype: default the model's/map's floating dtype, else float64.

    Raises:
        ValueError: if ``n < 1`` or the domain is not ``0 < smallest <= bound < inf``.

    Example:
        >>> from mirroropt.testing import sample_points
        >>> pts = sample_points({"w": (3, 2, 3, 3), "b": (3,)}, n=3, bound=10.0)
        >>> len(pts), tuple(pts[0]["w"].shape), bool(max(p["w"].abs().max() for p in pts) <= 10)
        (3, (3, 2, 3, 3), True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")
    _check_domain(bound, smallest)
    shapes = shapes_for(model_or_map)
    dtype = dtype or dtype_of(model_or_map)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(smallest), math.log(bound)
    points = []
    for _ in range(n):
        point = {}
        for name, shape in shapes.items():
            style = STYLES[int(torch.randint(0, len(STYLES) - 1, (1,), generator=gen))]
            magnitude = math.exp(lo + (hi - lo) * float(torch.rand((), generator=gen)))
            sub = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            point[name] = make_tensor(
                shape, style, magnitude, smallest=smallest, seed=sub, dtype=dtype
            )
        points.append(point)
    points = separate(points, bound=bound, smallest=smallest, seed=seed)
    if isinstance(model_or_map, MirrorMap):
        points = [model_or_map.canonical_dual(z) for z in points]
    return points
