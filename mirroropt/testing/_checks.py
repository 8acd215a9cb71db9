r"""Property checks for inverse mirror maps: each returns a :class:`Report` or raises.

Monotonicity and the Lipschitz bound are *certified locally* and searched *adversarially*:

* at every point :math:`z`, the extreme eigenvalues of the symmetrized Jacobian
  :math:`S(z) = (J(z) + J(z)^\top)/2` (for the monotonicity modulus) and the top singular value
  of :math:`J(z)` (for the Lipschitz constant) by Lanczos on products :math:`Jv`, :math:`J^\top u`
  from :func:`torch.func.jvp`/:func:`torch.func.vjp` — never a dense Jacobian. Since
  :math:`\mu = \inf_z \lambda_{\min}(S(z))` and :math:`L = \sup_z \|J(z)\|_2` for a
  differentiable map, and Ritz values lie inside the spectrum, a Ritz value beyond a claimed
  bound refutes the claim, with its Ritz vector as the witness. For a linear map (verified at the
  points, not just flagged) the Jacobian is the same everywhere: one point certifies all of
  :math:`\mathbb R^d`.
* every pair of points: :math:`\langle\Delta z,\Delta g\rangle/\|\Delta z\|^2` and
  :math:`\|\Delta g\|/\|\Delta z\|`, skipping (and counting) pairs closer than the separation
  threshold, where rounding would dominate — duplicates are fine;
* a few normalized gradient steps from the worst point and the worst pair that push the
  violation further (within the box the points span), so thin bad regions are found.

Tolerances scale with the dtype and the magnitudes involved (see :func:`default_rtol`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.autograd.gradcheck import GradcheckError

from mirroropt import functional as F
from mirroropt.maps._base import MirrorMap
from mirroropt.maps._identity import Identity
from mirroropt.testing._linalg import (
    DENSE_MAX,
    Extremes,
    FlatMap,
    Local,
    MapOutputError,
    dense_extremes,
    lanczos,
    robust_norm,
)

__all__ = [
    "PropertyError",
    "Report",
    "Witness",
    "check_differentiable",
    "check_gradient_field",
    "check_lipschitz",
    "check_map",
    "check_monotone",
    "check_reduces_to_gd",
    "check_round_trip",
    "default_rtol",
]

Point = Mapping[str, Tensor]


# ------------------------------------------------------------------------------------------------
# reports


def _fmt(x: float | None) -> str:
    return "None" if x is None else f"{x:.6g}"


@dataclass(frozen=True)
class Witness:
    """Where a property fails: the point, the direction, the value against the claim, and how.

    Attributes:
        point: the dual point :math:`z` (dict name → tensor).
        direction: a unit direction :math:`v` (local witnesses) or :math:`\\Delta z = z - z'`
            (pair witnesses), as a dict name → tensor.
        other: the second point :math:`z'` of a pair witness, else ``None``.
        value: the value measured there (e.g. :math:`v^\\top J v`).
        claim: the bound it violates.
        how: how it was found, e.g. ``"Lanczos on (J + Jᵀ)/2 at points[3] (2 steps)"``.
    """

    point: dict[str, Tensor]
    direction: dict[str, Tensor]
    other: dict[str, Tensor] | None
    value: float
    claim: float
    how: str
    summary: str = ""
    quantity: str = "value"

    def __str__(self) -> str:
        return (
            f"Witness: {self.summary}: {self.quantity} = {self.value:.6g} vs claim "
            f"{self.claim:.6g}; found by {self.how}."
        )


@dataclass(frozen=True)
class Report:
    """The outcome of one property check, readable with ``print(report)``.

    The printed relation between ``measured`` and ``bound`` is the one that decided the verdict:
    ``≥``/``≤`` when it holds outright, ``≈`` when it holds only within ``tolerance``, and the
    strict opposite (``<``/``>``) on failure — a PASS never shows a violated inequality.

    Attributes:
        prop: the property checked, e.g. ``"strongly monotone"``.
        map: the map's class name.
        passed: whether the property held everywhere it was checked.
        measured: the worst value found (e.g. the smallest monotonicity quotient).
        bound: the value it was compared with (``None`` where the check has none).
        detail: what was measured, where and how.
        tolerance: the slack allowed for rounding at the worst value.
        sense: ``">="`` (measured must be at least the bound) or ``"<="``.
        witness: on failure, where it fails (:class:`Witness`), if there is a point to show.
    """

    prop: str
    map: str
    passed: bool
    measured: float
    bound: float | None
    detail: str
    tolerance: float = 0.0
    sense: str = "<="
    witness: Witness | None = field(default=None, compare=False)

    def relation(self) -> str:
        """``≥``, ``≤``, ``≈`` (within tolerance), ``<`` or ``>``, consistent with ``passed``."""
        if self.bound is None:
            return ""
        m, b = self.measured, self.bound
        outright = m >= b if self.sense == ">=" else m <= b
        if self.passed:
            return ("≥" if self.sense == ">=" else "≤") if outright else "≈"
        if math.isnan(m):
            return "is not comparable with"
        return "<" if self.sense == ">=" else ">"

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        head = f"[{verdict}] {self.map}: {self.prop}"
        if self.bound is None:
            body = f": measured {_fmt(self.measured)}" if not self.passed else ""
        else:
            rel = self.relation()
            body = f": measured {_fmt(self.measured)} {rel} bound {_fmt(self.bound)}"
            if rel == "≈":
                body += f" (within tolerance {self.tolerance:.2g})"
            elif self.tolerance:
                body += f" (tolerance {self.tolerance:.2g})"
        witness = f" {self.witness}" if self.witness is not None and not self.passed else ""
        return f"{head}{body}.{witness} {self.detail}".rstrip()


class PropertyError(AssertionError):
    """A map violates a property; ``.report`` holds the :class:`Report`."""

    def __init__(self, report: Report) -> None:
        super().__init__(str(report))
        self.report = report


def _finish(report: Report, raise_on_failure: bool) -> Report:
    if raise_on_failure and not report.passed:
        raise PropertyError(report)
    return report


def default_rtol(dtype: torch.dtype, numel: int) -> float:
    r"""The default relative tolerance: :math:`64\,\varepsilon\sqrt d` for dtype epsilon
    :math:`\varepsilon` and :math:`d` coordinates (rounding in length-:math:`d` reductions grows
    like :math:`\varepsilon\sqrt d`): 9e-14 at d = 48 and 2.6e-12 at d = 33 000 in float64,
    5e-5 and 1.4e-3 in float32. It multiplies the scale of what is compared (the claim or the
    Jacobian's norm, whichever is larger)."""
    return 64.0 * torch.finfo(dtype).eps * math.sqrt(max(numel, 1))


def _validated(mirror_map: MirrorMap, points: Sequence[Point], least: int = 1) -> FlatMap:
    if not isinstance(mirror_map, MirrorMap):
        raise TypeError(f"`mirror_map` must be a MirrorMap, got {type(mirror_map).__name__}.")
    if isinstance(points, Mapping):
        raise TypeError("`points` must be a sequence of dual points (dicts), got one dict.")
    if len(points) < least:
        raise ValueError(f"`points` must hold at least {least} dual point, got {len(points)}.")
    for i, point in enumerate(points):
        mirror_map.check_fits(point, argument=f"points[{i}]")
    return FlatMap(mirror_map)


def _structure_failure(
    mirror_map: MirrorMap, prop: str, error: MapOutputError, raise_on_failure: bool
) -> Report:
    report = Report(
        prop,
        type(mirror_map).__name__,
        False,
        math.nan,
        None,
        f"The map's output is malformed: {error}",
    )
    return _finish(report, raise_on_failure)


# ------------------------------------------------------------------------------------------------
# certification of monotonicity and of the Lipschitz bound


@dataclass
class _Finding:
    value: float
    tol: float
    where: str
    how: str
    point: Tensor
    direction: Tensor
    other: Tensor | None = None


@dataclass(frozen=True)
class _Kind:
    """Monotonicity (``value ≥ claim``) or Lipschitz (``value ≤ claim``)."""

    name: str  # "monotone" | "lipschitz"

    @property
    def lower(self) -> bool:
        return self.name == "monotone"

    def margin(self, value: float, claim: float) -> float:
        return value - claim if self.lower else claim - value

    def local_summary(self) -> str:
        return "v'Jv/|v|^2" if self.lower else "|Jv|/|v|"

    def pair_summary(self) -> str:
        return "<dz, dg>/|dz|^2" if self.lower else "|dg|/|dz|"


def _pair_value(kind: _Kind, dz: Tensor, dg: Tensor) -> float:
    """Ratio of a pair, computed without squaring tiny/huge norms (no underflow to 0/0)."""
    top = float(dz.abs().max())
    unit = dz / top
    n2 = float(unit.dot(unit))
    if kind.lower:
        return float(unit.dot(dg)) / (n2 * top)
    return robust_norm(dg) / (math.sqrt(n2) * top)


def _dict(fmap: FlatMap, flat: Tensor) -> dict[str, Tensor]:
    return {n: t.detach().clone() for n, t in fmap.unflat(flat.detach()).items()}


def _top_entries(fmap: FlatMap, v: Tensor, k: int = 3) -> str:
    unit = v / max(float(v.abs().max()), 1e-300)
    idx = torch.argsort(unit.abs(), descending=True)[: min(k, v.numel())]
    parts = [f"{fmap.where(int(i))}: {float(unit[i]):+.3g}" for i in idx]
    return "{" + ", ".join(parts) + (", …}" if v.numel() > k else "}")


def _certify(*args: Any, **kwargs: Any) -> tuple[bool, float, float, str, Witness | None]:
    with torch.no_grad():
        return _certify_impl(*args, **kwargs)


def _certify_impl(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    kind: _Kind,
    claim: float,
    *,
    local_probes: int,
    lanczos_steps: int,
    ascent_steps: int,
    rtol: float | None,
    separation: float | None,
    seed: int,
) -> tuple[bool, float, float, str, Witness | None]:
    """(passed, measured, tolerance, detail, witness) of one claim over points, pairs, ascent."""
    for number, argument in (
        (local_probes, "local_probes"),
        (lanczos_steps, "lanczos_steps"),
        (ascent_steps, "ascent_steps"),
    ):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"`{argument}` must be an int ≥ 0, got {number!r}.")
    fmap = FlatMap(mirror_map)
    flats = [fmap.flat(p).detach() for p in points]
    dtype = flats[0].dtype
    eps = torch.finfo(dtype).eps
    rtol = default_rtol(dtype, fmap.numel) if rtol is None else float(rtol)
    separation = 8.0 * math.sqrt(eps) if separation is None else float(separation)
    if not (rtol >= 0 and separation >= 0):
        raise ValueError(f"`rtol` and `separation` must be ≥ 0, got {rtol} and {separation}.")
    gen = torch.Generator().manual_seed(seed)
    box = max(float(f.abs().max()) if f.numel() else 0.0 for f in flats)
    findings: list[_Finding] = []
    notes: list[str] = []

    with torch.no_grad():
        values = [fmap(f).detach() for f in flats]
    for i, gz in enumerate(values):
        if not bool(torch.isfinite(gz).all()):
            notes.append(f"to_primal is not finite at points[{i}]")
            findings.append(
                _Finding(math.nan, 0.0, f"points[{i}]", "evaluating g", flats[i], flats[i])
            )

    # -------- local certification
    scale_local = 0.0
    locals_: list[tuple[int, Local, Any]] = []
    linear_ok = False
    op_name = "(J + J')/2" if kind.lower else "J'J"

    inverse = FlatMap(mirror_map, "to_dual") if kind.lower and mirror_map.has_to_dual else None
    # a map one-to-one only on a subspace (``canonical_dual``, e.g. the entropic simplex map,
    # flat along shifts) is certified on that subspace: (J + Jᵀ)/2 restricted to it
    probe = torch.randn(flats[0].shape, generator=gen, dtype=dtype).to(flats[0])
    projected = fmap.flat(mirror_map.canonical_dual(fmap.unflat(probe)))
    proj: Callable[[Tensor], Tensor] | None = None
    if kind.lower and not torch.equal(projected, probe):

        def proj(x: Tensor) -> Tensor:
            return fmap.flat(mirror_map.canonical_dual(fmap.unflat(x)))

    def inverse_start(z: Tensor) -> Tensor | None:
        """Top Ritz vector of the inverse map's symmetrized Jacobian at g(z): for a symmetric
        J it is the bottom eigenvector of J, which Lanczos on S finds slowly when J is ill
        conditioned. Only a start vector: the verdict uses J itself."""
        if inverse is None:
            return None
        try:
            inv = Local(inverse, fmap(z).detach())
            s = torch.randn(z.shape, generator=gen, dtype=dtype).to(z)
            ext = lanczos(inv.sym, s, steps=lanczos_steps, tol=eps**0.25)
        except (RuntimeError, NotImplementedError, MapOutputError):
            return None
        return ext.high_vec if math.isfinite(ext.high) else None

    def certify_at(
        i: int, z: Tensor, start: Tensor | None = None, steps: int = 0, hinted: bool = False
    ) -> Any:
        local = Local(fmap, z)
        if fmap.numel <= DENSE_MAX:
            jac = local.dense()
            if proj is None:
                return local, dense_extremes(0.5 * (jac + jac.T) if kind.lower else jac.T @ jac)
            eye = torch.eye(fmap.numel, dtype=jac.dtype, device=jac.device)
            pmat = torch.stack([proj(e) for e in eye], dim=1)
            pvals, pvecs = torch.linalg.eigh(0.5 * (pmat + pmat.T))
            basis = pvecs[:, pvals > 0.5]
            sub = dense_extremes(basis.T @ (0.5 * (jac + jac.T)) @ basis)
            return local, Extremes(
                sub.low, sub.high, basis @ sub.low_vec, basis @ sub.high_vec, sub.steps, 0.0, True
            )
        op = local.sym if kind.lower else local.gram
        if proj is not None:
            base_op = op

            def op(v: Tensor) -> Tensor:
                return proj(base_op(proj(v)))

        best = None
        hint = inverse_start(z) if start is None and hinted else None
        for r in range(max(local_probes, 1) if start is None else 1):
            s = start if start is not None else torch.randn(z.shape, generator=gen, dtype=dtype)
            if hint is not None and r == 0:
                s = hint + 1e-3 * s / max(robust_norm(s), 1e-300)
            if proj is not None:
                s = proj(s.to(z))
            ext = lanczos(op, s.to(z), steps=steps or lanczos_steps, tol=eps**0.25)
            if best is None or (ext.low < best.low if kind.lower else ext.high > best.high):
                best = ext
        return local, best

    def local_value(ext: Any) -> float:
        return ext.low if kind.lower else math.sqrt(max(ext.high, 0.0))

    if local_probes > 0 and fmap.numel > 0:
        order = range(len(flats))
        if mirror_map.is_linear:
            local, ext = certify_at(0, flats[0], hinted=True)
            locals_.append((0, local, ext))
            # verify the flag: g(z_i) = J z_i for the Jacobian J at points[0]
            jscale = max(abs(ext.low), abs(ext.high)) if kind.lower else math.sqrt(ext.high)
            worst_lin = 0.0
            for i, z in enumerate(flats):
                jz = local.j(z)
                err = robust_norm(values[i] - jz)
                ref = max(robust_norm(values[i]), jscale * robust_norm(z), 1e-300)
                worst_lin = max(worst_lin, err / ref)
            linear_ok = worst_lin <= max(rtol, 1e3 * eps)
            if linear_ok:
                order = range(0)
            else:
                notes.append(
                    f"is_linear=True but g(z) ≠ J z at the points (relative defect "
                    f"{worst_lin:.3g}), so every point is certified"
                )
                order = range(1, len(flats))
        for i in order:
            local, ext = certify_at(i, flats[i])
            locals_.append((i, local, ext))
        if inverse is not None and not linear_ok and locals_ and fmap.numel > DENSE_MAX:
            # refine the worst point with a start vector from the inverse map's Jacobian
            k = min(range(len(locals_)), key=lambda j: locals_[j][2].low)
            i = locals_[k][0]
            local, ext = certify_at(i, flats[i], hinted=True)
            if ext.low < locals_[k][2].low:
                locals_[k] = (i, local, ext)
        for i, _, ext in locals_:
            if not (math.isfinite(ext.low) and math.isfinite(ext.high)):
                findings.append(
                    _Finding(math.nan, 0.0, f"points[{i}]", "Lanczos", flats[i], ext.low_vec)
                )
                notes.append(f"the Jacobian is not finite at points[{i}]")
                continue
            scale_local = max(
                scale_local,
                max(abs(ext.low), abs(ext.high)) if kind.lower else math.sqrt(max(ext.high, 0)),
            )
    scale = max(abs(claim), scale_local)
    if scale == 0.0:  # no local information: the pairs' own ratios set the scale
        for a in range(len(flats)):
            for b in range(a + 1, len(flats)):
                dz = flats[a] - flats[b]
                if robust_norm(dz) > math.sqrt(eps) * (
                    robust_norm(flats[a]) + robust_norm(flats[b])
                ):
                    scale = max(scale, robust_norm(values[a] - values[b]) / robust_norm(dz))
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    tol = rtol * scale

    for i, _, ext in locals_:
        vec = ext.low_vec if kind.lower else ext.high_vec
        if fmap.numel <= DENSE_MAX:
            how = f"eigh of the dense {op_name} at points[{i}] (exact)"
        else:
            exact = "exhausted: exact" if ext.exhausted else f"residual {ext.residual:.1g}"
            how = f"Lanczos on {op_name} at points[{i}] ({ext.steps} steps, {exact})"
        if linear_ok:
            how += "; linear map, so this holds at every z"
        findings.append(_Finding(local_value(ext), tol, f"points[{i}]", how, flats[i], vec))

    # -------- pairs
    compared = close = duplicates = 0
    pair_list: list[tuple[int, int, float]] = []
    norms = [robust_norm(f) for f in flats]
    gnorms = [robust_norm(v) for v in values]
    for a in range(len(flats)):
        for b in range(a + 1, len(flats)):
            dz = flats[a] - flats[b]
            if not bool((dz != 0).any()):
                duplicates += 1
                continue
            ndz = robust_norm(dz)
            reach = (gnorms[a] + gnorms[b]) / scale + norms[a] + norms[b]
            if ndz < separation * reach:
                close += 1
                continue
            compared += 1
            value = _pair_value(kind, dz, values[a] - values[b])
            noise = 8.0 * eps * scale * reach / ndz
            findings.append(
                _Finding(
                    value,
                    tol + noise,
                    f"pair (points[{a}], points[{b}])",
                    f"the pair (points[{a}], points[{b}])",
                    flats[a],
                    dz,
                    flats[b],
                )
            )
            pair_list.append((a, b, kind.margin(value, claim) + tol + noise))

    # -------- adversarial ascent (non-linear maps)
    ascent_notes: list[str] = []
    if ascent_steps > 0 and local_probes > 0 and not linear_ok and box > 0:
        local_found = [f for f in findings if f.other is None and math.isfinite(f.value)]
        if local_found and locals_:
            start = min(local_found, key=lambda f: kind.margin(f.value, claim))
            found = _ascend_local(
                fmap, kind, start, claim, box, ascent_steps, certify_at, local_value, tol
            )
            if found is not None:
                findings.append(found)
                ascent_notes.append(f"local ascent from {start.where} reached {found.value:.6g}")
        if pair_list:
            a, b, _ = min(pair_list, key=lambda t: t[2])
            found = _ascend_pair(
                fmap,
                kind,
                flats[a],
                flats[b],
                (a, b),
                claim,
                box,
                ascent_steps,
                tol,
                separation,
                scale,
                eps,
            )
            if found is not None:
                findings.append(found)
                ascent_notes.append(
                    f"pair ascent from (points[{a}], points[{b}]) reached {found.value:.6g}"
                )

    # -------- secant confirmation of local violations
    # autograd's Jacobian can be wrong where g is not differentiable (e.g. |z|^a at z = 0, where
    # a derivative convention replaces an infinite slope by 0): a local violation only counts
    # once a secant pair (z, z + t v) shows it too; the first t that does is in the witness.
    counted: list[_Finding] = []
    for f in findings:
        if f.other is not None or math.isnan(f.value) or kind.margin(f.value, claim) + f.tol >= 0:
            counted.append(f)
            continue
        confirmed = _confirm_by_secant(fmap, kind, f, claim, tol, separation, scale, eps, box)
        if confirmed is None:
            notes.append(
                f"the local quotient {f.value:.6g} at {f.where} is not confirmed by any secant "
                f"pair (z, z + t v): g is not differentiable there or its autograd derivative "
                f"is wrong, so it is not counted"
            )
        else:
            counted.append(confirmed)
    findings = counted

    # -------- verdict
    def badness(f: _Finding) -> float:
        if math.isnan(f.value):
            return math.inf
        return -(kind.margin(f.value, claim) + f.tol) / scale

    if not findings:
        raise ValueError(
            "Nothing to check: local certification is off (`local_probes=0`) and no pair of "
            f"points is separated ({duplicates} duplicate and {close} too-close pairs skipped); "
            f"pass distinct points or turn local certification on."
        )
    worst = max(findings, key=badness)
    passed = badness(worst) <= 0.0
    pool = findings
    if kind.lower and claim == 0.0:
        # strict monotonicity is a property of pairs: a local quotient within rounding of 0
        # (a flat direction of a strictly monotone map) is not a violation and not the measure
        strict = [
            f for f in findings if f.other is not None or math.isnan(f.value) or f.value + f.tol < 0
        ]
        pool = strict or findings
    if kind.lower:
        measured = min((f.value for f in pool), default=math.nan)
    else:
        measured = max((f.value for f in findings), default=math.nan)
    if any(math.isnan(f.value) for f in findings):
        measured = math.nan
    extreme = min(
        findings,
        key=lambda f: kind.margin(f.value, claim) if not math.isnan(f.value) else -math.inf,
    )

    loc = [f for f in findings if f.other is None and "ascent" not in f.how]
    parts = []
    if loc:
        certified = min(f.value for f in loc) if kind.lower else max(f.value for f in loc)
        all_exact = all(e.exhausted for _, _, e in locals_)
        dense = fmap.numel <= DENSE_MAX
        method = "eigh of the dense Jacobian" if dense else "Lanczos"
        exactness = ", exact" if dense else ", exact (Krylov space exhausted)"
        scope = (
            "one point (linear: verified at all points, so it holds on all of R^d)"
            if linear_ok
            else f"{len(loc)} points"
        )
        parts.append(
            f"Local: {'min eigenvalue of (J+J^T)/2' if kind.lower else 'top singular value of J'}"
            f" {certified:.6g} by {method} at {scope}"
            f"{exactness if all_exact else ''}."
        )
    elif local_probes == 0:
        parts.append("Local certification off.")
    parts.append(
        f"Pairs: {compared} compared, {close} closer than the separation threshold and "
        f"{duplicates} duplicates skipped."
    )
    if ascent_notes:
        parts.append("Ascent: " + "; ".join(ascent_notes) + ".")
    if notes:
        parts.append("Note: " + "; ".join(notes) + ".")
    parts.append(f"Worst at {extreme.where}.")
    witness = None
    if not passed:
        is_pair = worst.other is not None
        direction = worst.direction
        if not is_pair:
            direction = direction / max(robust_norm(direction), 1e-300)
        where = worst.where
        summary = (
            f"the {where}, z - z' mostly {_top_entries(fmap, direction)}"
            if is_pair
            else f"at z = {where} along v mostly {_top_entries(fmap, direction)}"
        )
        summary += f" (|z|inf = {float(worst.point.abs().max()):.3g})"
        witness = Witness(
            _dict(fmap, worst.point),
            _dict(fmap, direction),
            None if worst.other is None else _dict(fmap, worst.other),
            worst.value,
            claim,
            worst.how,
            summary,
            kind.pair_summary() if is_pair else kind.local_summary(),
        )
    return passed, measured, worst.tol if not passed else extreme.tol, " ".join(parts), witness


def _confirm_by_secant(
    fmap: FlatMap,
    kind: _Kind,
    found: _Finding,
    claim: float,
    tol: float,
    separation: float,
    scale: float,
    eps: float,
    box: float,
) -> _Finding | None:
    """The local finding, confirmed by the first secant pair (z, z + t v) that also violates."""
    z = found.point
    v = found.direction / max(float(found.direction.abs().max()), 1e-300)
    base = max(float(z.abs().max()), 1e-3 * box, 1e-300)
    gz = fmap(z)
    for k in range(1, 9):
        t = base * 10.0 ** (-k)
        other = z + t * v
        dz = other - z
        if not bool((dz != 0).any()):
            break
        go = fmap(other)
        if not bool(torch.isfinite(go).all()):
            continue
        reach = (robust_norm(gz) + robust_norm(go)) / scale + robust_norm(z) + robust_norm(other)
        ndz = robust_norm(dz)
        if ndz < separation * reach:
            break
        value = _pair_value(kind, dz, go - gz)
        noise = 8.0 * eps * scale * reach / ndz
        if kind.margin(value, claim) + tol + noise < 0:
            return _Finding(
                found.value,
                found.tol,
                found.where,
                f"{found.how}; confirmed by the secant pair (z, z + t v) with t = {t:.3g}, "
                f"{kind.pair_summary()} = {value:.6g}",
                found.point,
                found.direction,
            )
    return None


def _ascend_local(
    fmap: FlatMap,
    kind: _Kind,
    start: _Finding,
    claim: float,
    box: float,
    steps: int,
    certify_at: Callable[..., Any],
    local_value: Callable[[Any], float],
    tol: float,
) -> _Finding | None:
    """Normalized gradient steps on z for the Rayleigh quotient along the current Ritz vector."""
    z, v = start.point.clone(), start.direction / max(robust_norm(start.direction), 1e-300)
    best_value, taken = start.value, 0
    step = 0.1 * max(float(z.abs().max()), 1e-3 * box)

    def objective(x: Tensor, u: Tensor, w: Tensor, with_grad: bool) -> tuple[float, Tensor | None]:
        """``wᵀ J(x) u`` (``w = u`` for monotonicity: vᵀJv; for Lipschitz ``w = Jv/|Jv|`` makes
        it |Jv| to first order), by reverse over reverse — second derivatives only."""
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(with_grad)
            if not with_grad:
                return float(Local(fmap, x).jt(w).dot(u)), None
            out = fmap(leaf)
            (jt_w,) = torch.autograd.grad(out, leaf, w, create_graph=True)
            value = jt_w.dot(u)
            (grad,) = torch.autograd.grad(value, leaf, allow_unused=True)
        g = torch.zeros_like(x) if grad is None else grad.detach()
        return float(value), (g if kind.lower else -g)

    def partner(x: Tensor, u: Tensor) -> Tensor:
        if kind.lower:
            return u
        jv = Local(fmap, x).j(u)
        return jv / max(robust_norm(jv), 1e-300)

    best: _Finding | None = None
    for _ in range(steps):
        # up to 3 gradient steps along the current direction v, then Lanczos at the new z
        cand, moved = z, False
        for _ in range(3):
            try:
                w = partner(cand, v)
                f0, grad = objective(cand, v, w, True)
                f0 = f0 if kind.lower else -f0
            except (RuntimeError, NotImplementedError):
                return best  # no second derivatives here: the local certificate stands alone
            assert grad is not None
            gmax = float(grad.abs().max())
            if not math.isfinite(gmax) or gmax == 0.0:
                break
            inner = False
            for _ in range(6):
                trial = (cand - step * grad / gmax).clamp(-box, box)
                f1 = objective(trial, v, w, False)[0]
                f1 = f1 if kind.lower else -f1
                if f1 < f0:
                    inner = True
                    break
                step *= 0.5
            if not inner:
                break
            cand, moved = trial, True
        if not moved:
            break
        _, ext = certify_at(-1, cand, start=v, steps=6)
        value = local_value(ext)
        if not math.isfinite(value):
            break
        if kind.margin(value, claim) < kind.margin(best_value, claim):
            taken += 1
            best_value, z = value, cand
            v = ext.low_vec if kind.lower else ext.high_vec
            best = _Finding(
                value,
                tol,
                f"{start.where} + ascent",
                f"the local certificate at {start.where}, then {taken} gradient-ascent steps on "
                f"the local quotient (re-certified at each new z)",
                z.clone(),
                v.clone(),
            )
        else:
            z = cand
    return best


def _ascend_pair(
    fmap: FlatMap,
    kind: _Kind,
    za: Tensor,
    zb: Tensor,
    ab: tuple[int, int],
    claim: float,
    box: float,
    steps: int,
    tol: float,
    separation: float,
    scale: float,
    eps: float,
) -> _Finding | None:
    """Normalized gradient steps on (z, z') for the pair ratio; the pair stays separated."""

    def ratio(x: Tensor, y: Tensor) -> Tensor:
        dz, dg = x - y, fmap(x) - fmap(y)
        r = dz.dot(dg) / dz.dot(dz) if kind.lower else (dg.dot(dg) / dz.dot(dz)).sqrt()
        return r if kind.lower else -r

    best: _Finding | None = None
    x, y = za.clone(), zb.clone()
    with torch.no_grad():
        f0 = float(ratio(x, y))
    if not math.isfinite(f0):
        return None
    step = 0.25 * float((x - y).abs().max())
    taken = 0
    for _ in range(steps):
        try:
            with torch.enable_grad():
                lx, ly = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
                gx, gy = torch.autograd.grad(ratio(lx, ly), (lx, ly), allow_unused=True)
            gx = torch.zeros_like(x) if gx is None else gx.detach()
            gy = torch.zeros_like(y) if gy is None else gy.detach()
        except (RuntimeError, NotImplementedError):
            return best
        gmax = max(float(gx.abs().max()), float(gy.abs().max()))
        if not math.isfinite(gmax) or gmax == 0.0:
            break
        moved = False
        for _ in range(6):
            cx = (x - step * gx / gmax).clamp(-box, box)
            cy = (y - step * gy / gmax).clamp(-box, box)
            dz = cx - cy
            with torch.no_grad():
                gcx, gcy = fmap(cx), fmap(cy)
            reach = (
                (robust_norm(gcx) + robust_norm(gcy)) / scale + robust_norm(cx) + robust_norm(cy)
            )
            ndz = robust_norm(dz)
            if bool((dz != 0).any()) and ndz >= separation * reach:
                f1 = (
                    -_pair_value(kind, dz, gcx - gcy)
                    if not kind.lower
                    else _pair_value(kind, dz, gcx - gcy)
                )
                if f1 < f0:
                    moved = True
                    break
            step *= 0.5
        if not moved:
            break
        x, y, f0, taken = cx, cy, f1, taken + 1
        value = f1 if kind.lower else -f1
        noise = 8.0 * eps * scale * reach / ndz
        a, b = ab
        best = _Finding(
            value,
            tol + noise,
            f"pair (points[{a}], points[{b}]) + ascent",
            f"{taken} gradient-ascent steps on the pair ratio from (points[{a}], points[{b}])",
            x.clone(),
            (x - y).clone(),
            y.clone(),
        )
    return best


def check_monotone(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    modulus: float | None = None,
    local_probes: int = 1,
    lanczos_steps: int = 24,
    ascent_steps: int = 2,
    rtol: float | None = None,
    separation: float | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> Report:
    r"""Certify (strong) monotonicity :math:`\langle z-z', g(z)-g(z')\rangle \ge \mu\|z-z'\|^2`.

    For a differentiable map this holds exactly when :math:`\lambda_{\min}(S(z)) \ge \mu` for all
    :math:`z`, with :math:`S = (J+J^\top)/2`. Three measurements (see the module docstring):
    Lanczos on :math:`S(z)` at every point (one point for a verified linear map), the ratio
    :math:`\langle\Delta z,\Delta g\rangle/\|\Delta z\|^2` over every separated pair, and a few
    gradient steps that push the worst of both further. With no modulus given or stated, the
    check requires monotonicity to within rounding (:math:`\ge -\text{tol}`): strictness itself
    cannot be decided in floating point. ``measured`` is then the smallest pair ratio (local
    quotients within rounding of 0 are flat directions, not violations), or the worst local
    quotient if one violates.

    Args:
        mirror_map: the map under test (differentiable, for the local certificate).
        points: dual points (dicts name → tensor fitting the map); duplicates and near-duplicates
            are fine (skipped and counted). One point suffices when local certification is on.
        modulus: the :math:`\mu` to check; ``None`` uses :meth:`~MirrorMap.monotonicity_modulus`.
        local_probes: Lanczos runs (random starts) per point; 0 turns local certification and
            the ascent off (the given pairs only).
        lanczos_steps: the most Lanczos steps per run (it stops once the extremes converge).
        ascent_steps: gradient steps of the adversarial search (0: none).
        rtol: relative tolerance; default :func:`default_rtol` of the dtype and size. The
            absolute slack is ``rtol`` times the larger of :math:`|\mu|` and the Jacobian scale,
            plus, for a pair, the rounding in :math:`g(z)-g(z')` relative to :math:`\|\Delta z\|`.
        separation: pairs with :math:`\|\Delta z\| <` ``separation`` ×
            (:math:`\|z\|+\|z'\|+(\|g(z)\|+\|g(z')\|)/\text{scale}`) are skipped and counted;
            default :math:`8\sqrt\varepsilon`.
        seed: seed of the Lanczos start vectors.
        raise_on_failure: raise :class:`PropertyError` (default) or just return the report.

    Returns:
        A :class:`Report`; ``measured`` is the smallest quotient found (local or pair),
        ``witness`` the point and direction of a failure.

    Raises:
        ValueError: on no points, or points that do not fit the map.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> g = Identity({"w": torch.zeros(2)})
        >>> pts = [{"w": torch.tensor([0.0, 1.0])}, {"w": torch.tensor([2.0, -1.0])}]
        >>> check_monotone(g, pts).passed
        True
    """
    _validated(mirror_map, points)
    stated = mirror_map.monotonicity_modulus() if modulus is None else modulus
    prop = "strongly monotone" if stated else "strictly monotone (to rounding)"
    claim = float(stated) if stated else 0.0
    try:
        passed, measured, tol, detail, witness = _certify(
            mirror_map,
            points,
            _Kind("monotone"),
            claim,
            local_probes=local_probes,
            lanczos_steps=lanczos_steps,
            ascent_steps=ascent_steps,
            rtol=rtol,
            separation=separation,
            seed=seed,
        )
    except MapOutputError as error:
        return _structure_failure(mirror_map, prop, error, raise_on_failure)
    source = "given" if modulus is not None else "stated"
    return _finish(
        Report(
            prop,
            type(mirror_map).__name__,
            passed,
            measured,
            claim,
            (f"Claim: mu = {claim:.6g} ({source}). " if stated else "") + detail,
            tol,
            ">=",
            witness,
        ),
        raise_on_failure,
    )


def check_lipschitz(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    constant: float | None = None,
    local_probes: int = 1,
    lanczos_steps: int = 24,
    ascent_steps: int = 2,
    rtol: float | None = None,
    separation: float | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> Report:
    r"""Certify the Lipschitz bound :math:`\|g(z)-g(z')\| \le L\|z-z'\|`.

    Equivalently :math:`h` is :math:`1/L`-strongly convex (the paper's
    :math:`\nabla(g^{-1}) \succeq C` with :math:`C = 1/L`). For a differentiable map the best
    :math:`L` is :math:`\sup_z \|J(z)\|_2`: the check runs Lanczos on :math:`J^\top J` at every
    point (one point for a verified linear map), compares :math:`\|\Delta g\|/\|\Delta z\|` over
    separated pairs, and ascends the worst of both. Arguments as :func:`check_monotone`.

    Returns:
        A :class:`Report`; ``measured`` is the largest quotient found.

    Raises:
        ValueError: if no constant is given and the map states none; on no points or points
            that do not fit the map.
    """
    _validated(mirror_map, points)
    stated = mirror_map.lipschitz_constant() if constant is None else constant
    if stated is None:
        raise ValueError(
            f"`constant` is required: {type(mirror_map).__name__} states no Lipschitz constant."
        )
    try:
        passed, measured, tol, detail, witness = _certify(
            mirror_map,
            points,
            _Kind("lipschitz"),
            float(stated),
            local_probes=local_probes,
            lanczos_steps=lanczos_steps,
            ascent_steps=ascent_steps,
            rtol=rtol,
            separation=separation,
            seed=seed,
        )
    except MapOutputError as error:
        return _structure_failure(mirror_map, "Lipschitz", error, raise_on_failure)
    source = "given" if constant is not None else "stated"
    return _finish(
        Report(
            "Lipschitz",
            type(mirror_map).__name__,
            passed,
            measured,
            float(stated),
            f"Claim: L = {float(stated):.6g} ({source}). " + detail,
            tol,
            "<=",
            witness,
        ),
        raise_on_failure,
    )


# ------------------------------------------------------------------------------------------------
# round trip, gradient field


def check_round_trip(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    atol: float | None = None,
    rtol: float | None = None,
    raise_on_failure: bool = True,
) -> Report:
    r"""Check :math:`\nabla h(g(z)) = z`, i.e. ``to_dual(to_primal(z)) == canonical_dual(z)``.

    For maps one-to-one on the whole dual space ``canonical_dual(z)`` is ``z`` itself
    (see :meth:`MirrorMap.canonical_dual`). Each entry may be off by
    ``atol + rtol · max|z|`` (the point's own scale: rounding in a map that mixes coordinates is
    relative to the largest of them). ``measured`` is the error of the entry closest to (or
    furthest beyond) its allowance and ``bound`` that entry's allowance, so ``measured ≤ bound``
    exactly when the check passes.

    Args:
        atol: absolute slack; default ``rtol`` (magnitudes below 1 count as 1).
        rtol: relative slack; default :math:`8\sqrt\varepsilon` (1.2e-7 in float64).

    Raises:
        ValueError: if the map has no ``to_dual`` (``has_to_dual`` is False) or no points.
    """
    if not mirror_map.has_to_dual:
        raise ValueError(
            f"`mirror_map` ({type(mirror_map).__name__}) has no to_dual, so it has no round trip."
        )
    fmap = _validated(mirror_map, points)
    prop = "round trip to_dual(to_primal(z)) == z"
    worst_ratio, worst_err, worst_allowed, where = -math.inf, 0.0, 0.0, ""
    with torch.no_grad():
        for i, z in enumerate(points):
            try:
                phi = fmap.unflat(fmap(fmap.flat(z)))
                back_dict = mirror_map.to_dual(phi)
                if not isinstance(back_dict, Mapping) or any(
                    n not in back_dict for n in fmap.names
                ):
                    missing = [n for n in fmap.names if n not in back_dict]
                    raise MapOutputError(
                        f"{type(mirror_map).__name__}.to_dual must return exactly the names the "
                        f"map was built for; it returned a dict missing {missing}."
                    )
            except MapOutputError as error:
                return _structure_failure(mirror_map, prop, error, raise_on_failure)
            back = fmap.flat(back_dict)
            flat = fmap.flat(mirror_map.canonical_dual(z))
            eps = torch.finfo(flat.dtype).eps
            r = 8.0 * math.sqrt(eps) if rtol is None else rtol
            a = r if atol is None else atol
            allowed = a + r * (float(flat.abs().max()) if flat.numel() else 0.0)
            err = (back - flat).abs()
            k = int(err.argmax()) if err.numel() else 0
            e = float(err[k]) if err.numel() else 0.0
            ratio = e / allowed if allowed > 0 else (math.inf if e > 0 else 0.0)
            if not math.isfinite(e):
                ratio = math.inf
            if ratio > worst_ratio:
                worst_ratio, worst_err, worst_allowed = ratio, e, allowed
                where = f"points[{i}] at {fmap.where(k)}" if err.numel() else f"points[{i}]"
    return _finish(
        Report(
            prop,
            type(mirror_map).__name__,
            worst_ratio <= 1.0,
            worst_err,
            worst_allowed,
            f"Largest entry error over {len(points)} points, relative to its allowance "
            f"atol + rtol·max|z|, at {where}.",
            0.0,
            "<=",
        ),
        raise_on_failure,
    )


def check_gradient_field(
    mirror_map: MirrorMap,
    points: Sequence[Point],
    *,
    probes: int = 1,
    lanczos_steps: int = 6,
    rtol: float | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> Report:
    r"""Check that the Jacobian of :math:`g` is symmetric (:math:`g = \nabla h^*`, a true Bregman).

    At every point, Lanczos on :math:`A^\top A` for the antisymmetric part
    :math:`A = (J - J^\top)/2` gives :math:`\|A\|_2` and Lanczos on :math:`J^\top J` gives
    :math:`\|J\|_2` (products from :func:`torch.func.jvp`/:func:`torch.func.vjp`, never a dense
    Jacobian). ``measured`` is the largest relative asymmetry :math:`\|A\|_2/\|J\|_2 \in [0, 1]`,
    compared with ``rtol`` (default :func:`default_rtol`). Unlike random probe pairs, which see an
    asymmetry confined to a few of :math:`d` coordinates only with weight :math:`\sim 1/d`, the
    Krylov iteration finds it.

    A map that is *not* a gradient field (e.g. the block inverse-autoregressive flow) fails this
    check at generic points: tests assert that too.
    """
    fmap = _validated(mirror_map, points)
    prop = "gradient field (symmetric Jacobian)"
    gen = torch.Generator().manual_seed(seed)
    worst, where, witness_data = 0.0, "points[0]", None
    tol, linear = 0.0, False
    try:
        with torch.no_grad():
            flats = [fmap.flat(z).detach() for z in points]
            for i, flat in enumerate(flats):
                if linear:
                    break
                tol = default_rtol(flat.dtype, fmap.numel) if rtol is None else rtol
                local = Local(fmap, flat)
                conv = torch.finfo(flat.dtype).eps ** 0.25
                if fmap.numel <= DENSE_MAX:
                    jac = local.dense()
                    skew_m = 0.5 * (jac - jac.T)
                    norm_j = float(torch.linalg.matrix_norm(jac, ord=2))
                    sk = dense_extremes(skew_m.T @ skew_m)
                    value = math.sqrt(max(sk.high, 0.0)) / norm_j if norm_j > 0 else 0.0
                    if not math.isfinite(value) or value > worst:
                        worst, where = value, f"points[{i}]"
                        witness_data = (flat, sk.high_vec, value)
                    continue
                for _ in range(max(probes, 1)):
                    start = torch.randn(flat.shape, generator=gen, dtype=flat.dtype).to(flat)
                    skew = lanczos(local.skew_gram, start, steps=lanczos_steps, tol=conv)
                    full = lanczos(local.gram, start, steps=6, tol=conv)
                    norm_j = math.sqrt(max(full.high, 0.0))
                    value = math.sqrt(max(skew.high, 0.0)) / norm_j if norm_j > 0 else 0.0
                    if not math.isfinite(value) or value > worst:
                        worst, where = value, f"points[{i}]"
                        witness_data = (flat, skew.high_vec, value)
                if i == 0 and mirror_map.is_linear:
                    # a linear map has one Jacobian: verify g(z) = J z at the points, then stop
                    defect = max(
                        robust_norm(fmap(f) - local.j(f))
                        / max(robust_norm(fmap(f)), norm_j * robust_norm(f), 1e-300)
                        for f in flats
                    )
                    linear = defect <= max(tol, 1e3 * torch.finfo(flat.dtype).eps)
    except MapOutputError as error:
        return _structure_failure(mirror_map, prop, error, raise_on_failure)
    passed = worst <= tol
    witness = None
    if not passed and witness_data is not None:
        flat, vec, value = witness_data
        witness = Witness(
            _dict(fmap, flat),
            _dict(fmap, vec / max(robust_norm(vec), 1e-300)),
            None,
            value,
            tol,
            f"Lanczos on A'A, A = (J - J')/2, at {where}",
            f"at z = {where} along v mostly {_top_entries(fmap, vec)}",
            "|(J - J')v/2| / |J|",
        )
    return _finish(
        Report(
            prop,
            type(mirror_map).__name__,
            passed,
            worst,
            tol,
            f"Largest relative asymmetry |(J - J')/2| / |J| over "
            f"{'one point (linear, verified)' if linear else f'{len(points)} points'} "
            f"(Lanczos), at {where}.",
            0.0,
            "<=",
            witness,
        ),
        raise_on_failure,
    )


# ------------------------------------------------------------------------------------------------
# reduces to GD, differentiable


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
            0.0,
            "<=",
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
    **options: Any,
) -> list[Report]:
    """Run every invariant that the map's capability flags say applies, and return the reports.

    Always: monotonicity (against the map's stated modulus, else to rounding) and, if the map
    states a Lipschitz constant, the Lipschitz bound — both certified locally and searched
    adversarially, so a wrong stated constant fails. ``has_to_dual``: the round trip.
    ``is_gradient_field``: the symmetric Jacobian. Raises on the first failure unless
    ``raise_on_failure=False``. ``options`` (``lanczos_steps``, ``ascent_steps``, ``rtol``,
    ``separation``, ``seed``, ``local_probes``) go to :func:`check_monotone` and
    :func:`check_lipschitz`.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Diagonal
        >>> from mirroropt.testing import sample_points
        >>> g = Diagonal({"w": (3, 2, 3, 3), "b": (3,)}).double()
        >>> [r.passed for r in check_map(g, sample_points(g, n=3))]
        [True, True, True, True]
    """
    reports = [check_monotone(mirror_map, points, raise_on_failure=raise_on_failure, **options)]
    if mirror_map.lipschitz_constant() is not None:
        reports.append(
            check_lipschitz(mirror_map, points, raise_on_failure=raise_on_failure, **options)
        )
    if mirror_map.has_to_dual:
        reports.append(check_round_trip(mirror_map, points, raise_on_failure=raise_on_failure))
    if mirror_map.is_gradient_field:
        reports.append(check_gradient_field(mirror_map, points, raise_on_failure=raise_on_failure))
    return reports
