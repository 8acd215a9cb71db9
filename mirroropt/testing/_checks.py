"""Property checks for inverse mirror maps: each returns a :class:`Report` or raises."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError

from mirroropt import functional as F
from mirroropt.maps._base import MirrorMap
from mirroropt.maps._identity import Identity

__all__ = [
    "PropertyError",
    "Report",
    "check_differentiable",
    "check_gradient_field",
    "check_lipschitz",
    "check_map",
    "check_monotone",
    "check_reduces_to_gd",
    "check_round_trip",
]

Point = Mapping[str, Tensor]


@dataclass(frozen=True)
class Report:
    """The outcome of one property check, readable with ``print(report)``.

    Attributes:
        prop: the property checked, e.g. ``"strongly monotone"``.
        map: the map's class name.
        passed: whether the property held at every point checked.
        measured: the worst value measured (e.g. the smallest monotonicity ratio).
        bound: the value it was compared with (``None`` where the check has none).
        detail: one sentence on what was measured and where.
    """

    prop: str
    map: str
    passed: bool
    measured: float
    bound: float | None
    detail: str

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        bound = "" if self.bound is None else f" (bound {self.bound:.6g})"
        return f"[{verdict}] {self.map}: {self.prop}: measured {self.measured:.6g}{bound}. {self.detail}"


class PropertyError(AssertionError):
    """A map violates a property; ``.report`` holds the :class:`Report`."""

    def __init__(self, report: Report) -> None:
        super().__init__(str(report))
        self.report = report


def _finish(report: Report, raise_on_failure: bool) -> Report:
    if raise_on_failure and not report.passed:
        raise PropertyError(report)
    return report


def _flat(mirror_map: MirrorMap, params: Point) -> Tensor:
    return torch.cat([params[n].reshape(-1) for n in mirror_map.names])


def _unflat(mirror_map: MirrorMap, flat: Tensor) -> dict[str, Tensor]:
    out, start = {}, 0
    for n, shape in mirror_map.shapes.items():
        out[n] = flat[start : start + shape.numel()].reshape(shape)
        start += shape.numel()
    return out


def _distinct_pairs(mirror_map: MirrorMap, points: Sequence[Point]) -> list[tuple[Point, Point]]:
    for i, point in enumerate(points):
        mirror_map.check_fits(point, argument=f"points[{i}]")
    pairs = [
        (a, b)
        for a, b in itertools.combinations(points, 2)
        if not torch.equal(_flat(mirror_map, a), _flat(mirror_map, b))
    ]
    if not pairs:
        raise ValueError(
            f"`points` must hold at least 2 distinct dual points, got {len(points)} points and no "
            f"distinct pair."
        )
    return pairs


def check_monotone(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    modulus: float | None = None,
    local_probes: int = 2,
    rtol: float = 1e-6,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> Report:
    r"""Check (strong) monotonicity :math:`\langle z-z', g(z)-g(z')\rangle \ge \mu\|z-z'\|^2`.

    Two measurements, both reported:

    * pairwise, over every pair of ``points``: :math:`\langle\Delta z,\Delta g\rangle/\|\Delta z\|^2`
      must be ≥ μ (or strictly > 0 when no μ is given or stated);
    * local, at every point along ``local_probes`` random directions :math:`v`: the Rayleigh
      quotient :math:`v^\top J(z) v/\|v\|^2` of the Jacobian (from :func:`torch.func.vjp`) must be
      ≥ μ (or ≥ 0). Far-apart pairs can miss a region where the map turns back; the local quotient
      sees it at any point inside that region.

    Args:
        mirror_map: the map under test (differentiable if ``local_probes > 0``).
        points: at least two distinct dual points (dicts name → tensor fitting the map).
        modulus: the :math:`\mu` to check; ``None`` uses :meth:`~MirrorMap.monotonicity_modulus`.
        local_probes: random directions per point for the local quotient (0 turns it off).
        rtol: relative slack for rounding.
        seed: seed of the probe directions.
        raise_on_failure: raise :class:`PropertyError` (default) or just return the report.

    Returns:
        A :class:`Report` whose ``measured`` is the smallest quotient found (pairwise or local).

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> g = Identity({"w": torch.zeros(2)})
        >>> pts = [{"w": torch.tensor([0.0, 1.0])}, {"w": torch.tensor([2.0, -1.0])}]
        >>> check_monotone(g, pts).passed
        True
    """
    pairs = _distinct_pairs(mirror_map, points)
    bound = mirror_map.monotonicity_modulus() if modulus is None else modulus
    pair_worst, where = float("inf"), -1
    with torch.no_grad():
        for i, (a, b) in enumerate(pairs):
            dz = _flat(mirror_map, a) - _flat(mirror_map, b)
            dg = _flat(mirror_map, mirror_map.to_primal(a)) - _flat(
                mirror_map, mirror_map.to_primal(b)
            )
            ratio = float(dz.dot(dg)) / float(dz.dot(dz))
            if ratio < pair_worst:
                pair_worst, where = ratio, i
    local_worst = _local_quotient(mirror_map, points, local_probes, seed)
    slack = rtol * max(1.0, abs(bound or 0.0))
    if bound is None:
        passed, shown = pair_worst > 0.0 and local_worst >= -slack, 0.0
    else:
        passed, shown = min(pair_worst, local_worst) >= bound - slack, bound
    return _finish(
        Report(
            "strongly monotone" if bound else "strictly monotone",
            type(mirror_map).__name__,
            passed,
            min(pair_worst, local_worst),
            shown,
            f"Smallest <dz, dg>/|dz|^2 over {len(pairs)} pairs: {pair_worst:.6g} (pair {where}); "
            f"smallest v'Jv/|v|^2 over {len(points)} points x {local_probes} directions: "
            f"{local_worst:.6g}.",
        ),
        raise_on_failure,
    )


def _local_quotient(
    mirror_map: MirrorMap, points: Sequence[Point], probes: int, seed: int
) -> float:
    """Smallest Rayleigh quotient v'J(z)v/|v|² over points and random directions (inf if none)."""
    if probes < 0:
        raise ValueError(f"`local_probes` must be ≥ 0, got {probes}.")
    gen = torch.Generator().manual_seed(seed)

    def g_flat(flat: Tensor) -> Tensor:
        return _flat(mirror_map, mirror_map.to_primal(_unflat(mirror_map, flat)))

    worst = float("inf")
    for z in points if probes else ():
        flat = _flat(mirror_map, z).detach()
        pullback = torch.func.vjp(g_flat, flat)[1]
        for _ in range(probes):
            v = torch.randn(flat.shape, generator=gen, dtype=flat.dtype).to(flat.device)
            (vt_j,) = pullback(v)
            worst = min(worst, float(vt_j.detach().dot(v)) / float(v.dot(v)))
    return worst


@torch.no_grad()
def check_lipschitz(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    constant: float | None = None,
    rtol: float = 1e-6,
    raise_on_failure: bool = True,
) -> Report:
    r"""Check the Lipschitz bound :math:`\|g(z)-g(z')\| \le L\|z-z'\|`.

    Equivalently :math:`h` is :math:`1/L`-strongly convex (the paper's
    :math:`\nabla(g^{-1}) \succeq C` with :math:`C = 1/L`). ``measured`` is the largest ratio
    :math:`\|\Delta g\|/\|\Delta z\|` over all pairs of ``points``.

    Args:
        mirror_map: the map under test.
        points: at least two dual points.
        constant: the :math:`L` to check; ``None`` uses :meth:`~MirrorMap.lipschitz_constant`.
        rtol: relative slack for rounding.
        raise_on_failure: raise :class:`PropertyError` (default) or just return the report.

    Raises:
        ValueError: if no constant is given and the map states none.
    """
    pairs = _distinct_pairs(mirror_map, points)
    bound = mirror_map.lipschitz_constant() if constant is None else constant
    if bound is None:
        raise ValueError(
            f"`constant` is required: {type(mirror_map).__name__} states no Lipschitz constant."
        )
    worst, where = 0.0, -1
    for i, (a, b) in enumerate(pairs):
        dz = _flat(mirror_map, a) - _flat(mirror_map, b)
        dg = _flat(mirror_map, mirror_map.to_primal(a)) - _flat(mirror_map, mirror_map.to_primal(b))
        ratio = float(dg.norm()) / float(dz.norm())
        if ratio > worst:
            worst, where = ratio, i
    passed = worst <= bound * (1.0 + rtol)
    return _finish(
        Report(
            "Lipschitz",
            type(mirror_map).__name__,
            passed,
            worst,
            bound,
            f"Largest |dg|/|dz| over {len(pairs)} pairs, at pair {where}.",
        ),
        raise_on_failure,
    )


@torch.no_grad()
def check_round_trip(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    raise_on_failure: bool = True,
) -> Report:
    r"""Check :math:`\nabla h(g(z)) = z`, i.e. ``to_dual(to_primal(z)) == canonical_dual(z)``.

    For maps one-to-one on the whole dual space ``canonical_dual(z)`` is ``z`` itself
    (see :meth:`MirrorMap.canonical_dual`).

    ``measured`` is the largest :math:`|\nabla h(g(z)) - z| - \text{rtol}\,|z|` entry error.

    Raises:
        ValueError: if the map has no ``to_dual`` (``has_to_dual`` is False) or no points.
    """
    if not mirror_map.has_to_dual:
        raise ValueError(
            f"`mirror_map` ({type(mirror_map).__name__}) has no to_dual, so it has no round trip."
        )
    if not points:
        raise ValueError("`points` must hold at least 1 dual point, got 0.")
    worst, err = -float("inf"), 0.0
    for z in points:
        back = _flat(mirror_map, mirror_map.to_dual(mirror_map.to_primal(z)))
        flat = _flat(mirror_map, mirror_map.canonical_dual(z))
        excess = (back - flat).abs() - rtol * flat.abs()
        worst = max(worst, float(excess.max()))
        err = max(err, float((back - flat).abs().max()))
    return _finish(
        Report(
            "round trip to_dual(to_primal(z)) == z",
            type(mirror_map).__name__,
            worst <= atol,
            err,
            atol,
            f"Largest absolute entry error over {len(points)} points (rtol {rtol}).",
        ),
        raise_on_failure,
    )


def check_gradient_field(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    probes: int = 4,
    rtol: float = 1e-6,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> Report:
    r"""Check that the Jacobian of :math:`g` is symmetric (:math:`g = \nabla h^*`, a true Bregman).

    For random probe pairs :math:`u, v` it compares :math:`u^\top J v` and :math:`v^\top J u`, both
    from vector-Jacobian products (:func:`torch.func.vjp`, never a dense Jacobian). ``measured`` is the largest
    relative asymmetry :math:`|u^\top Jv - v^\top Ju| / (|u^\top Jv| + |v^\top Ju|)`.

    A map that is *not* a gradient field (e.g. the block inverse-autoregressive flow) fails this
    check at generic points: tests assert that too.
    """
    if not points:
        raise ValueError("`points` must hold at least 1 dual point, got 0.")
    gen = torch.Generator().manual_seed(seed)

    def g_flat(flat: Tensor) -> Tensor:
        return _flat(mirror_map, mirror_map.to_primal(_unflat(mirror_map, flat)))

    worst = 0.0
    for z in points:
        flat = _flat(mirror_map, z).detach()
        for _ in range(probes):
            u = torch.randn(flat.shape, generator=gen, dtype=flat.dtype).to(flat.device)
            v = torch.randn(flat.shape, generator=gen, dtype=flat.dtype).to(flat.device)
            pullback = torch.func.vjp(g_flat, flat)[1]
            (ut_j,) = pullback(u)
            (vt_j,) = pullback(v)
            a, b = float(ut_j.detach().dot(v)), float(vt_j.detach().dot(u))
            scale = abs(a) + abs(b)
            if scale > 0:
                worst = max(worst, abs(a - b) / scale)
    return _finish(
        Report(
            "gradient field (symmetric Jacobian)",
            type(mirror_map).__name__,
            worst <= rtol,
            worst,
            rtol,
            f"Largest relative |u'Jv - v'Ju| over {len(points)} points x {probes} probes.",
        ),
        raise_on_failure,
    )


def check_reduces_to_gd(
    mirror_map: MirrorMap,
    loss_fn: Callable[[dict[str, Tensor]], Tensor],
    phi: Point,
    *,
    lr: float = 0.1,
    steps: int = 3,
    atol: float = 1e-6,
    raise_on_failure: bool = True,
) -> Report:
    r"""Check that mirror descent with ``mirror_map`` equals gradient descent (``Identity``).

    Meant for a map at its identity initialization: runs :func:`mirroropt.adapt` with the map and
    with :class:`~mirroropt.maps.Identity` from the same start (``phi`` as primal initialization
    if the map has ``to_dual``, else as dual initialization) and compares :math:`\phi_K`.
    """
    if mirror_map.has_to_dual:
        mirror = F.adapt(mirror_map, loss_fn, phi, lr=lr, steps=steps)
    else:
        mirror = F.adapt(mirror_map, loss_fn, z=phi, lr=lr, steps=steps)
    plain = F.adapt(Identity(mirror_map.shapes), loss_fn, phi, lr=lr, steps=steps)
    with torch.no_grad():
        err = max(float((mirror[n] - plain[n]).abs().max()) for n in mirror_map.names)
    return _finish(
        Report(
            "reduces to gradient descent",
            type(mirror_map).__name__,
            err <= atol,
            err,
            atol,
            f"Largest |phi_K(map) - phi_K(GD)| after {steps} steps at lr={lr}.",
        ),
        raise_on_failure,
    )


class _Shell(torch.nn.Module):
    """Runs ``fn(map, *args)`` so ``torch.func.functional_call`` can swap in the map's weights."""

    def __init__(self, mirror_map: MirrorMap, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.m = mirror_map
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.m, *args)


def check_differentiable(
    mirror_map: MirrorMap,
    loss_fn: Callable[[dict[str, Tensor]], Tensor],
    phi: Point | None = None,
    *,
    z: Point | None = None,
    lr: float = 0.1,
    steps: int = 2,
    eps: float = 1e-6,
    atol: float = 1e-5,
    raise_on_failure: bool = True,
) -> Report:
    r"""``torch.autograd.gradcheck`` of :math:`\phi_K` through ``steps`` unrolled inner steps.

    Checks the derivatives of :math:`\phi_K = ` :func:`mirroropt.adapt` (``mirror_map``,
    ``loss_fn``, from ``phi`` or ``z``, ``steps`` steps at ``lr``) with respect to every learnable
    parameter of the map, every entry of the initialization and ``lr`` itself, against central
    finite differences — the second-order meta-gradient path MAML-style training relies on.
    Needs float64 (map, initialization and whatever ``loss_fn`` closes over); keep the problem
    small, since finite differences cost two inner loops per scalar input.

    Returns:
        A :class:`Report` (``measured`` is 0 when the check passes, 1 when it fails; ``detail``
        has gradcheck's own message on failure).

    Raises:
        ValueError: if the map or the initialization is not float64, or not exactly one of
            ``phi``/``z`` is given.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Diagonal
        >>> g = Diagonal({"w": (2,)}).double()
        >>> loss = lambda p: (p["w"] ** 4).sum()
        >>> check_differentiable(g, loss, {"w": torch.tensor([0.5, -1.0], dtype=torch.float64)}).passed
        True
    """
    if (phi is None) == (z is None):
        raise ValueError("Give exactly one of `phi` and `z` (the initialization to check from).")
    start = dict(phi if phi is not None else z)  # type: ignore[arg-type]
    tensors = [*mirror_map.parameters(), *start.values()]
    if any(t.dtype != torch.float64 for t in tensors):
        raise ValueError(
            "check_differentiable needs float64 (finite differences): call mirror_map.double() "
            "and pass a float64 initialization."
        )
    names = [n for n, _ in mirror_map.named_parameters()]
    keys = list(mirror_map.names)
    kind = "phi" if phi is not None else "z"

    def run(m: MirrorMap, init: dict[str, Tensor], step_size: Tensor) -> dict[str, Tensor]:
        return F.adapt(m, loss_fn, lr=step_size, steps=steps, **{kind: init})  # type: ignore[arg-type]

    shell = _Shell(mirror_map, run)

    def f(*leaves: Tensor) -> Tensor:
        k = len(names)
        weights = {f"m.{n}": t for n, t in zip(names, leaves[:k])}
        init = dict(zip(keys, leaves[k : k + len(keys)]))
        out = torch.func.functional_call(shell, weights, (init, leaves[-1]))
        return torch.cat([out[n].reshape(-1) for n in keys])

    leaves = [*mirror_map.parameters(), *(start[n] for n in keys)]
    inputs = (
        *(t.detach().clone().requires_grad_() for t in leaves),
        torch.tensor(lr, dtype=torch.float64, requires_grad=True),
    )
    try:
        passed = torch.autograd.gradcheck(f, inputs, eps=eps, atol=atol)
        detail = ""
    except GradcheckError as error:
        passed, detail = False, " " + str(error).strip().splitlines()[0]
    return _finish(
        Report(
            "differentiable (gradcheck through the inner loop)",
            type(mirror_map).__name__,
            passed,
            0.0 if passed else 1.0,
            None,
            f"gradcheck of phi_K after {steps} steps w.r.t. {len(names)} map parameter tensors, "
            f"the {kind} initialization and lr.{detail}",
        ),
        raise_on_failure,
    )


def check_map(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    raise_on_failure: bool = True,
) -> list[Report]:
    """Run every invariant that the map's capability flags say applies, and return the reports.

    Always: monotonicity (against the map's stated modulus, else strict) and, if the map states a
    Lipschitz constant, the Lipschitz bound. ``has_to_dual``: the round trip.
    ``is_gradient_field``: the symmetric Jacobian. Raises on the first failure unless
    ``raise_on_failure=False``.
    """
    reports = [check_monotone(mirror_map, points, raise_on_failure=raise_on_failure)]
    if mirror_map.lipschitz_constant() is not None:
        reports.append(check_lipschitz(mirror_map, points, raise_on_failure=raise_on_failure))
    if mirror_map.has_to_dual:
        reports.append(check_round_trip(mirror_map, points, raise_on_failure=raise_on_failure))
    if mirror_map.is_gradient_field:
        reports.append(check_gradient_field(mirror_map, points, raise_on_failure=raise_on_failure))
    return reports
