"""Matrix-free linear algebra for the property kit: a map on flat vectors, its local Jacobian
operators (from ``torch.func.jvp``/``vjp``, never a dense Jacobian) and Lanczos extremes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from mirroropt.maps._base import MirrorMap

__all__ = [
    "DENSE_MAX",
    "FlatMap",
    "Local",
    "MapOutputError",
    "dense_extremes",
    "lanczos",
    "robust_norm",
]

#: At or below this many coordinates the Jacobian is formed (one batched backward pass) and its
#: extremes come from ``eigh``: exact, and cheaper than Lanczos at this size.
DENSE_MAX = 256


class MapOutputError(Exception):
    """``to_primal`` returned something that is not a dict with the map's names and shapes."""


def robust_norm(x: Tensor) -> float:
    """Euclidean norm that neither underflows (entries of 1e-200) nor overflows (scaled by max)."""
    top = float(x.detach().abs().max()) if x.numel() else 0.0
    if top == 0.0 or not math.isfinite(top):
        return top
    return top * float(torch.linalg.vector_norm(x.detach() / top))


class FlatMap:
    """A mirror map as a function of one flat vector (names in the map's order)."""

    def __init__(self, mirror_map: MirrorMap, method: str = "to_primal") -> None:
        self.map = mirror_map
        self.method = method
        self.names = tuple(mirror_map.shapes)
        self.shapes = dict(mirror_map.shapes)
        self.sizes = [s.numel() for s in self.shapes.values()]
        self.numel = sum(self.sizes)

    def flat(self, point: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([point[n].reshape(-1) for n in self.names])

    def unflat(self, flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, self.sizes)
        return {n: t.reshape(self.shapes[n]) for n, t in zip(self.names, parts)}

    def where(self, index: int) -> str:
        """``name[i, j, …]`` of flat coordinate ``index``."""
        for name, size in zip(self.names, self.sizes):
            if index < size:
                shape = self.shapes[name]
                if len(shape) == 0:
                    return f"{name!r}"
                idx = []
                for dim in reversed(shape):
                    idx.append(index % dim)
                    index //= dim
                return f"{name!r}[{', '.join(str(i) for i in reversed(idx))}]"
            index -= size
        raise IndexError(index)

    def __call__(self, flat: Tensor) -> Tensor:
        out = getattr(self.map, self.method)(self.unflat(flat))
        label = f"{type(self.map).__name__}.{self.method}"
        if not isinstance(out, Mapping):
            raise MapOutputError(
                f"{label} must return a dict name → tensor, got {type(out).__name__}."
            )
        missing = [n for n in self.names if n not in out]
        unexpected = [n for n in out if n not in self.shapes]
        if missing or unexpected:
            raise MapOutputError(
                f"{label} must return exactly the names the map was built for "
                f"({list(self.names)}); it returned a dict missing {missing} and with unexpected "
                f"{unexpected}."
            )
        for name in self.names:
            value = out[name]
            if not isinstance(value, Tensor) or value.shape != self.shapes[name]:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise MapOutputError(
                    f"{label} returned {name!r} with shape {got}, but the map was built for "
                    f"shape {tuple(self.shapes[name])}."
                )
        return torch.cat([out[n].reshape(-1) for n in self.names])


class Local:
    """The Jacobian J of a flat map at one point, as products ``J v`` and ``Jᵀ u``.

    One autograd graph of ``g`` at ``z`` serves every product: ``Jᵀu`` is a backward pass and
    ``J v`` the double-backward of ``u ↦ Jᵀu`` (linear in ``u``), so nothing re-runs the map.
    Where that graph cannot be built twice-differentiably, ``torch.func.jvp``/``vjp`` are used.
    """

    def __init__(self, fmap: FlatMap, z: Tensor) -> None:
        self.fmap = fmap
        self.z = z.detach()
        self._graph = False
        try:
            with torch.enable_grad():
                leaf = self.z.clone().requires_grad_(True)
                out = fmap(leaf)
                dummy = torch.zeros_like(out, requires_grad=True)
                (back,) = torch.autograd.grad(
                    out, leaf, dummy, create_graph=True, allow_unused=True
                )
            if back is None or not back.requires_grad:
                raise RuntimeError("no graph")
            self._leaf, self._out, self._dummy, self._back = leaf, out, dummy, back
            self.value = out.detach()
            self._graph = True
        except (RuntimeError, NotImplementedError):
            result = torch.func.vjp(fmap, self.z)
            self.value, self._pullback = result[0].detach(), result[1]

    def jt(self, u: Tensor) -> Tensor:
        if self._graph:
            with torch.enable_grad():
                (out,) = torch.autograd.grad(
                    self._out, self._leaf, u, retain_graph=True, allow_unused=True
                )
            return torch.zeros_like(self.z) if out is None else out.detach()
        return self._pullback(u)[0].detach()

    def j(self, v: Tensor) -> Tensor:
        if self._graph:
            with torch.enable_grad():
                (out,) = torch.autograd.grad(
                    self._back, self._dummy, v, retain_graph=True, allow_unused=True
                )
            return torch.zeros_like(self.value) if out is None else out.detach()
        return torch.func.jvp(self.fmap, (self.z,), (v,))[1].detach()

    def dense(self) -> Tensor:
        """The full Jacobian ``J`` (rows = outputs), from one batched backward pass where the
        map allows it (``is_grads_batched``), else one backward pass per output coordinate."""
        n = self.value.numel()
        eye = torch.eye(n, dtype=self.value.dtype, device=self.value.device)
        if self._graph:
            try:
                with torch.enable_grad():
                    (rows,) = torch.autograd.grad(
                        self._out,
                        self._leaf,
                        eye,
                        retain_graph=True,
                        is_grads_batched=True,
                        allow_unused=True,
                    )
                if rows is not None:
                    return rows.detach()
            except (RuntimeError, NotImplementedError):
                pass
        return torch.stack([self.jt(e) for e in eye])

    def sym(self, v: Tensor) -> Tensor:
        """``(J + Jᵀ) v / 2``."""
        return 0.5 * (self.j(v) + self.jt(v))

    def gram(self, v: Tensor) -> Tensor:
        """``Jᵀ J v``."""
        return self.jt(self.j(v))

    def skew_gram(self, v: Tensor) -> Tensor:
        """``AᵀA v`` for the antisymmetric part ``A = (J − Jᵀ)/2`` (so ``‖A‖² = λ_max``)."""
        a = 0.5 * (self.j(v) - self.jt(v))
        return 0.5 * (self.jt(a) - self.j(a))


@dataclass(frozen=True)
class Extremes:
    """Extreme Ritz pairs of a symmetric operator from Lanczos.

    Ritz values always lie inside ``[λ_min, λ_max]``: ``low ≥ λ_min`` and ``high ≤ λ_max``, so a
    Ritz value below a claimed lower bound (or above a claimed upper bound) refutes the claim, and
    its Ritz vector is the witness.
    """

    low: float
    high: float
    low_vec: Tensor
    high_vec: Tensor
    steps: int
    residual: float
    exhausted: bool


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    *,
    steps: int,
    tol: float,
) -> Extremes:
    """Lanczos with full reorthogonalization; stops when both extreme Ritz pairs converge.

    ``residual`` is the larger of the two extreme Ritz residuals ``‖S y − θ y‖`` relative to the
    largest Ritz value's magnitude. ``exhausted`` means the Krylov space became invariant: the
    Ritz values are then eigenvalues (all distinct ones that the start vector sees, which for a
    random start is all of them with probability one).
    """
    n = start.numel()
    q = start / torch.linalg.vector_norm(start)
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    evals = torch.zeros(1, dtype=torch.float64)
    evecs = torch.ones(1, 1, dtype=torch.float64)
    residual, exhausted = math.inf, False
    for j in range(min(steps, n)):
        w = matvec(basis[j])
        alphas.append(float(w.dot(basis[j])))
        stacked = torch.stack(basis)
        for _ in range(2):  # full reorthogonalization, twice is enough
            w = w - stacked.T @ (stacked @ w)
        beta = float(torch.linalg.vector_norm(w))
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        if not bool(torch.isfinite(t).all()) or not math.isfinite(beta):
            nan = torch.full_like(start, math.nan)
            return Extremes(math.nan, math.nan, nan, nan, len(alphas), math.nan, False)
        top = float(t.abs().max())
        top = top if top > 0 else 1.0
        evals, evecs = torch.linalg.eigh(t / top)  # scaled: LAPACK squares entries
        evals = evals * top
        scale = max(float(evals.abs().max()), torch.finfo(start.dtype).tiny)
        residual = beta * max(float(evecs[-1, 0].abs()), float(evecs[-1, -1].abs())) / scale
        if beta <= 64 * torch.finfo(start.dtype).eps * scale or j + 1 == n:
            exhausted = True
            break
        if j >= 1 and residual <= tol:
            break
        betas.append(beta)
        basis.append(w / beta)
    stacked = torch.stack(basis[: len(alphas)])
    vecs = evecs.to(stacked.dtype).to(stacked.device)
    return Extremes(
        low=float(evals[0]),
        high=float(evals[-1]),
        low_vec=vecs[:, 0] @ stacked,
        high_vec=vecs[:, -1] @ stacked,
        steps=len(alphas),
        residual=0.0 if exhausted else residual,
        exhausted=exhausted,
    )


def dense_extremes(matrix: Tensor) -> Extremes:
    """Exact extreme eigenpairs of a symmetric matrix (``eigh``), as :class:`Extremes`."""
    if not bool(torch.isfinite(matrix).all()):
        nan = torch.full(matrix.shape[:1], math.nan, dtype=matrix.dtype)
        return Extremes(math.nan, math.nan, nan, nan, 0, math.nan, False)
    top = float(matrix.abs().max()) or 1.0
    evals, evecs = torch.linalg.eigh(matrix / top)
    return Extremes(
        float(evals[0]) * top,
        float(evals[-1]) * top,
        evecs[:, 0],
        evecs[:, -1],
        matrix.shape[0],
        0.0,
        True,
    )
