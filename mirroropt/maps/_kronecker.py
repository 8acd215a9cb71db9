"""Kronecker-factored map: Meta-Curvature's per-layer preconditioner as a (convex) mirror map."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast, final

import torch
from torch import Tensor, nn

from mirroropt._types import Params
from mirroropt._utils import key_of
from mirroropt.maps._base import MirrorMap

__all__ = ["Kronecker"]

#: Mode names of a tensor, by number of dimensions (0-d, 1-d, 2-d, ≥3-d).
_MODES: dict[int, tuple[str, ...]] = {
    0: ("scale",),
    1: ("diag",),
    2: ("out", "in"),
    3: ("out", "in", "kernel"),
}

#: dtypes whose matrix exponential and eigenvalues are computed in float32 (``eigh``/``eigvalsh``
#: have no half kernel; torch's half-precision ``matrix_exp`` on CPU returned inf/nan).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _divided_exp(lam: Tensor) -> Tensor:
    r"""First divided differences of exp at the eigenvalues, :math:`F_{ij} = (e^{\lambda_i} -
    e^{\lambda_j})/(\lambda_i - \lambda_j)`, with the limit :math:`e^{\lambda_i}` for (nearly)
    equal eigenvalues (stable: :math:`e^{\lambda_j}\,\mathrm{expm1}(d)/d`, and the midpoint
    series :math:`e^{(\lambda_i + \lambda_j)/2}(1 + d^2/24)` for :math:`|d|` below 1e-6 relative)."""
    li, lj = lam.unsqueeze(-1), lam.unsqueeze(-2)
    d = li - lj
    small = d.abs() < 1e-6 * (1 + li.abs().maximum(lj.abs()))
    safe = torch.where(small, torch.ones_like(d), d)
    apart = torch.exp(lj) * torch.expm1(safe) / safe
    near = torch.exp(0.5 * (li + lj)) * (1 + d * d / 24)
    return torch.where(small, near, apart)


def _frechet_exp(x: Tensor, g: Tensor) -> Tensor:
    """The Fréchet derivative of exp at symmetric ``x`` in direction ``g`` (its own adjoint), as
    the upper-right block of exp([[x, g], [0, x]]) (Higham, *Functions of Matrices*, 2008,
    Thm. 3.6): slow, but differentiable in ``x`` and ``g``."""
    n = x.shape[-1]
    zero = torch.zeros_like(x)
    big = torch.cat([torch.cat([x, g], -1), torch.cat([zero, x], -1)], -2)
    return torch.linalg.matrix_exp(big)[..., :n, n:]


class _SymExp(torch.autograd.Function):
    r""":math:`e^{X}` of a batch of symmetric matrices :math:`X = Q\Lambda Q^\top` from their
    ``eigh`` (passed in, computed once without a graph): :math:`e^{X} = Q e^{\Lambda} Q^\top`.

    Backward and forward mode by the Daleckii–Krein formula :math:`L(X, E) = Q\,(F \circ
    Q^\top E Q)\,Q^\top` with :math:`F` from :func:`_divided_exp` — exact, and well defined
    for repeated eigenvalues (the identity initialization, where the eigenvectors are not).
    ``torch.linalg.matrix_exp`` costs a Padé approximant with squaring forward and the
    exponential of a ``2m × 2m`` block matrix backward; this costs one ``eigh`` and two matrix
    products forward, four backward. A backward that is itself differentiated
    (``create_graph=True``, nested ``torch.func.grad``) uses the block form :func:`_frechet_exp`,
    differentiable in ``X``. ``Λ`` and ``Q`` are constants to autograd (the gradient reaches
    ``X`` through the formula above). Under ``vmap`` the rule below calls the function on the
    whole batch of matrices (or, for an unbatched ``X`` such as a map's own parameters, once,
    outside the batch level), so the autograd graph can be back-propagated inside or outside the
    ``vmap``; functorch's generated rule cannot be back-propagated outside it.
    """

    @staticmethod
    def forward(x: Tensor, lam: Tensor, q: Tensor) -> Tensor:  # type: ignore[override]
        return (q * torch.exp(lam).unsqueeze(-2)) @ q.mT

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
        x, lam, q = inputs
        ctx.save_for_backward(x, lam, q)
        ctx.save_for_forward(lam, q)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        x, lam, q = ctx.saved_tensors
        if torch.is_grad_enabled():  # the backward is differentiated: a differentiable form
            return _frechet_exp(x, grad), None, None
        return q @ (_divided_exp(lam) * (q.mT @ grad @ q)) @ q.mT, None, None

    @staticmethod
    def vmap(  # type: ignore[override]
        info: Any, in_dims: tuple[int | None, ...], x: Tensor, lam: Tensor, q: Tensor
    ) -> tuple[Tensor, int | None]:
        if all(dim is None for dim in in_dims):
            return _SymExp.apply(x, lam, q), None
        inputs = [
            t.movedim(dim, 0) if dim is not None else t.expand(info.batch_size, *t.shape)
            for t, dim in zip((x, lam, q), in_dims)
        ]
        return _SymExp.apply(*inputs), 0

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, *_: Any) -> Tensor:  # type: ignore[override]
        lam, q = ctx.saved_tensors
        return q @ (_divided_exp(lam) * (q.mT @ dx @ q)) @ q.mT


def sym_exp(x: Tensor) -> Tensor:
    """``matrix_exp(x)`` for symmetric ``x`` (batched) from one ``eigh``, see :class:`_SymExp`."""
    with torch.no_grad():
        lam, q = torch.linalg.eigh(x.detach())
    return cast(Tensor, _SymExp.apply(x, lam, q))


def _mode_sizes(shape: torch.Size) -> tuple[int, ...]:
    """Sizes of the modes a tensor is factored over: (), (n,), (O, I) or (O, I, prod(rest))."""
    if len(shape) <= 2:
        return tuple(shape)
    return (shape[0], shape[1], math.prod(shape[2:]))


def _mode_product(x: Tensor, factor: Tensor, mode: int) -> Tensor:
    r"""The mode-``mode`` product :math:`x \times_{mode} A` (``A`` a matrix, or a diagonal vector).

    ``x`` has up to three modes. A dense factor is one matrix product on a view of ``x``, no
    permutation: :math:`A X_{(1)}` for the first mode, :math:`X A^\top` on the rows of the last,
    and a broadcast :math:`A X_{[o]}` over the leading index for the middle one.
    """
    if factor.ndim == 1:
        view = [1] * x.ndim
        view[mode] = -1
        return x * factor.reshape(view)
    if factor.shape[-1] == 1:  # a 1 × 1 factor (a size-1 mode) scales
        return x * factor.reshape(())
    if mode == 0:  # explicit sizes: a -1 is ambiguous for zero-size tensors
        return (factor @ x.reshape(x.shape[0], math.prod(x.shape[1:]))).reshape(x.shape)
    if mode == x.ndim - 1:
        return (x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) @ factor.mT).reshape(x.shape)
    # the middle of three modes, (O, I, K): one product A @ [I, O·K] (a matmul broadcast over O
    # has a backward that expands A to [O, I, I] and sums it back)
    o, i, k = x.shape
    return (factor @ x.transpose(0, 1).reshape(i, o * k)).reshape(i, o, k).transpose(0, 1)


def _grouped_mode_product(x: Tensor, factor: Tensor, mode: int) -> Tensor:
    r""":func:`_mode_product` over a leading group index: ``out[t] = x[t] ×_mode factor[t]``.

    ``x`` is ``[T, *modes]``; ``factor`` is ``[T, m, m]`` (dense), ``[T, m]`` (diagonal) or ``[T]``
    (the scalar of 0-d tensors). One batched product for the whole group.
    """
    t = x.shape[0]
    if factor.ndim == 1:
        return x * factor.reshape(t, *([1] * (x.ndim - 1)))
    if factor.ndim == 2:
        view = [t] + [1] * (x.ndim - 1)
        view[mode + 1] = -1
        return x * factor.reshape(view)
    if factor.shape[-1] == 1:  # 1 × 1 factors (a size-1 mode) scale
        return x * factor.reshape(t, *([1] * (x.ndim - 1)))
    if mode == 0:
        flat = x.reshape(t, x.shape[1], math.prod(x.shape[2:]))
        return torch.bmm(factor, flat).reshape(x.shape)
    if mode == x.ndim - 2:
        flat = x.reshape(t, math.prod(x.shape[1:-1]), x.shape[-1])
        return torch.bmm(flat, factor.mT).reshape(x.shape)
    # middle of three, [T, O, I, K]: one bmm with [T, I, O·K] (a matmul broadcast over O has a
    # backward that expands the factors to [T, O, I, I] and sums them back)
    o, i, k = x.shape[1:]
    flat = x.transpose(1, 2).reshape(t, i, o * k)
    return torch.bmm(factor, flat).reshape(t, i, o, k).transpose(1, 2)


#: Per group of equal-shape tensors: (names, shape, factors per mode, stacked for groups of two+).
_Plan = list[tuple[list[str], torch.Size, list[Tensor]]]


@final
class Kronecker(MirrorMap):
    r"""Kronecker-factored SPD map, per layer: :math:`g(z) = z \times_1 A_{out} \times_2 A_{in} \times_3 A_k`.

    Each tensor is read as a tensor of up to three modes — a conv kernel ``(O, I, kh, kw)`` as
    ``(O, I, kh·kw)``, a linear weight ``(O, I)`` as two modes, a bias or norm vector ``(n,)`` as one
    mode with a positive *diagonal* factor, a 0-d tensor as a positive scalar — and gets one
    symmetric positive-definite factor :math:`A_j = \exp(\operatorname{sym} S_j)` per mode (matrix
    exponential of the symmetric part of a free parameter :math:`S_j`; a vector :math:`e^{\rho}` for
    diagonal modes). With :math:`P = A_{out} \otimes A_{in} \otimes A_k \succ 0` per tensor
    (row-major ``vec``):

    .. math::

        h^*(z) = \tfrac12 \operatorname{vec}(z)^\top P \operatorname{vec}(z), \qquad
        h(\phi) = \tfrac12 \operatorname{vec}(\phi)^\top P^{-1} \operatorname{vec}(\phi),

        g(z) = \nabla h^*(z) = z \times_1 A_{out} \times_2 A_{in} \times_3 A_k, \qquad
        \nabla h(\phi) = \phi \times_1 A_{out}^{-1} \times_2 A_{in}^{-1} \times_3 A_k^{-1},

    with :math:`A_j^{-1} = \exp(-\operatorname{sym} S_j)` exactly (no solve). The dual step
    :math:`z_{k+1} = z_k - \alpha \nabla L(\phi_k)` is, in the primal, the Meta-Curvature update
    :math:`\phi_{k+1} = \phi_k - \alpha\, P \operatorname{vec}\nabla L(\phi_k)` per layer.

    A gradient field, linear, with a closed-form ``to_dual``. Since the eigenvalues of
    :math:`\otimes_j A_j` are the products of the factors' eigenvalues, it is strongly monotone
    with :math:`\mu = \min_{\text{tensors}} \prod_j \lambda_{\min}(A_j)` and Lipschitz with
    :math:`L = \max_{\text{tensors}} \prod_j \lambda_{\max}(A_j)` (from ``eigvalsh`` of the small
    :math:`\operatorname{sym} S_j`). Identity at initialization (:math:`S_j = 0`), so
    meta-training starts as MAML. Cost per ``to_primal``: :math:`O(d \sum_j m_j)` for the mode
    products plus :math:`O(\sum_j m_j^3)` for the factors' exponentials (one batched ``eigh``
    per distinct factor size, :func:`sym_exp`); no :math:`d \times d` matrix is ever built.

    Note:
        Meta-Curvature (Park & Oliva, 2019) learns *unconstrained* factors :math:`M_o, M_i, M_f`
        (initialized at the identity), so its transform of the gradient need not be positive
        definite, symmetric or invertible. Here every factor is :math:`\exp(\operatorname{sym} S)`,
        which (i) is SPD for *every* value of the free parameter :math:`S`, so any meta-gradient
        step keeps :math:`P \succ 0` and :math:`D_h` a true Bregman divergence (no ascent
        directions); (ii) has the exact inverse :math:`\exp(-\operatorname{sym} S)`, so ``to_dual``
        needs no Cholesky factorization or solve; (iii) is the identity at :math:`S = 0` and puts no
        floor on the eigenvalues (unlike :math:`LL^\top + \varepsilon I`); (iv) reduces to the
        ``exp`` parameterization of :class:`~mirroropt.maps.Diagonal` on diagonal modes. The
        antisymmetric part of :math:`S` has no effect.

    Args:
        params: the tensors it acts on (a module, a mapping name → tensor/shape, or
            ``named_parameters()``); shapes ``()``, ``(n,)``, ``(O, I)`` or ``(O, I, *k)``.
        max_factor_size: modes larger than this get a positive diagonal factor (``m`` parameters
            and :math:`O(m)` work) instead of a dense ``m × m`` one (``m²`` parameters and an
            :math:`O(m^3)` matrix exponential per call). Default 512 keeps every mode of the usual
            few-shot backbones (Conv4: 32/64 channels, 3×3 kernels) dense while bounding the cost
            of very wide layers; ``None`` never falls back (the paper's choice).

    Raises:
        TypeError: if ``max_factor_size`` is not an int or None.
        ValueError: if ``max_factor_size`` is smaller than 1.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mirroropt.maps import Kronecker
        >>> g = Kronecker(nn.Linear(3, 2))
        >>> sorted(name for name, _ in g.named_parameters())
        ['log_factors.bias.diag', 'log_factors.weight.in', 'log_factors.weight.out']
        >>> g.to_primal({"weight": torch.ones(2, 3), "bias": torch.ones(2)})["weight"].detach()
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
        >>> with torch.no_grad():
        ...     _ = g.log_factors["weight"]["out"].copy_(torch.diag(torch.tensor([0.0, 1.0])))
        >>> g.to_primal({"weight": torch.ones(2, 3), "bias": torch.ones(2)})["weight"].detach()
        tensor([[1.0000, 1.0000, 1.0000],
                [2.7183, 2.7183, 2.7183]])
        >>> g.monotonicity_modulus(), round(g.lipschitz_constant(), 4)
        (1.0, 2.7183)

    References:
        Park & Oliva, "Meta-Curvature", NeurIPS 2019, arXiv:1902.03356.
        Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
        Curvature", ICML 2015, arXiv:1503.05671.
    """

    has_to_dual: ClassVar[bool] = True
    is_gradient_field: ClassVar[bool] = True
    is_linear: ClassVar[bool] = True

    def __init__(self, params: Any, *, max_factor_size: int | None = 512) -> None:
        super().__init__(params)
        if max_factor_size is not None and (
            isinstance(max_factor_size, bool) or not isinstance(max_factor_size, numbers.Integral)
        ):
            raise TypeError(
                f"`max_factor_size` must be an int or None, got {type(max_factor_size).__name__}."
            )
        if max_factor_size is not None and max_factor_size < 1:
            raise ValueError(f"`max_factor_size` must be at least 1, got {max_factor_size}.")
        self.max_factor_size = max_factor_size
        factors = {}
        for name, shape in self.shapes.items():
            sizes = _mode_sizes(shape)
            modes = _MODES[len(sizes)]
            entries = {}
            for mode, m in zip(modes, sizes):
                dense = len(sizes) >= 2 and (max_factor_size is None or m <= max_factor_size)
                entries[mode] = nn.Parameter(torch.zeros((m, m) if dense else (m,)))
            if not sizes:
                entries["scale"] = nn.Parameter(torch.zeros(()))
            factors[key_of(name)] = nn.ParameterDict(entries)
        self.log_factors = nn.ModuleDict(factors)

    def _logs(self, name: str) -> list[Tensor]:
        entries = cast(nn.ParameterDict, self.log_factors[key_of(name)])
        return [entries[mode] for mode in _MODES[len(_mode_sizes(self.shapes[name]))]]

    def factors(self, name: str, *, inverse: bool = False) -> list[Tensor]:
        r"""The SPD factors :math:`A_j` (or :math:`A_j^{-1}`) of tensor ``name``, one per mode.

        A dense mode gives an ``m × m`` matrix :math:`\exp(\pm\operatorname{sym} S_j)`; a diagonal
        mode (biases, 0-d tensors, modes above ``max_factor_size``) the vector (or 0-d scalar)
        :math:`e^{\pm\rho}`. The Kronecker product of the list (diagonals read as ``diag``) is the
        tensor's :math:`P` (or :math:`P^{-1}`).

        Raises:
            KeyError: if the map was not built for ``name``.
        """
        if name not in self.shapes:
            raise KeyError(f"`name` must be one of {list(self.shapes)}, got {name!r}.")
        return self._factor_lists([name], inverse)[name]

    def _factor_lists(self, names: list[str], inverse: bool) -> dict[str, list[Tensor]]:
        """Factors of several tensors; dense ones of equal size share one batched eigh (sym_exp)."""
        sign = -1.0 if inverse else 1.0
        logs = {name: self._logs(name) for name in names}
        dense: dict[int, list[tuple[str, int, Tensor]]] = {}  # size m → (name, mode, S)
        for name, entries in logs.items():
            for j, s in enumerate(entries):
                if s.ndim == 2 and s.shape[0] > 1:
                    dense.setdefault(s.shape[0], []).append((name, j, s))
        out = {  # diagonal factors and 1 × 1 matrices (exp of a number): elementwise
            name: [torch.exp(sign * s) if s.ndim < 2 or s.shape[0] <= 1 else s for s in entries]
            for name, entries in logs.items()
        }
        for group in dense.values():
            stacked = torch.stack([s for _, _, s in group])
            sym = 0.5 * (stacked + stacked.mT)
            if sym.dtype in _LOW_PRECISION:  # no half-precision eigh; exp is off by ~1e4 there
                exps = sym_exp(sign * sym.float()).to(sym.dtype)
            else:
                exps = sym_exp(sign * sym)
            for (name, j, _), a in zip(group, exps.unbind(0)):
                out[name][j] = a
        return out

    def _plan(self, inverse: bool) -> _Plan:
        """The factors of every tensor, those of equal-shape tensors stacked (one product per group).

        A group of several tensors (the three inner conv kernels of a Conv4, its biases and norm
        vectors) gets ``[T, ...]`` factors; a group of one keeps its own.
        """
        factor_lists = self._factor_lists(list(self.shapes), inverse)
        groups: dict[torch.Size, list[str]] = {}
        for name, shape in self.shapes.items():
            groups.setdefault(shape, []).append(name)
        plan = []
        for shape, names in groups.items():
            if len(names) == 1:
                plan.append((names, shape, factor_lists[names[0]]))
            else:
                stacked = [torch.stack(list(f)) for f in zip(*(factor_lists[n] for n in names))]
                plan.append((names, shape, stacked))
        return plan

    def _precondition(self, params: Mapping[str, Tensor], plan: _Plan) -> Params:
        out: Params = {}
        for names, shape, factors in plan:
            sizes = _mode_sizes(shape)
            if len(names) == 1:
                x = params[names[0]].reshape(sizes)
                for mode, factor in enumerate(factors):
                    x = x * factor if not sizes else _mode_product(x, factor, mode)
                out[names[0]] = x.reshape(shape)
                continue
            x = torch.stack([params[n].reshape(sizes) for n in names])
            for mode, factor in enumerate(factors):
                x = _grouped_mode_product(x, factor, mode)
            for name, y in zip(names, x.unbind(0)):
                out[name] = y.reshape(shape)
        return {n: out[n] for n in self.shapes}

    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        return self._precondition(z, self._plan(inverse=False))

    def prepared(self) -> Callable[[Mapping[str, Tensor]], Params]:
        r""":meth:`to_primal` with the factors :math:`A_j = \exp(\operatorname{sym} S_j)` computed once.

        The matrix exponentials do not depend on ``z``; :func:`mirroropt.adapt` calls this once
        per inner loop instead of once per step. The factors of equal-shape tensors are stacked
        here too, so that each step applies one batched product per group and mode.
        """
        plan = self._plan(inverse=False)

        def to_primal(z: Mapping[str, Tensor]) -> Params:
            return self._precondition(z, plan)

        return to_primal

    def to_dual(self, phi: Mapping[str, Tensor]) -> Params:
        return self._precondition(phi, self._plan(inverse=True))

    def _extreme_eigenvalues(self) -> list[tuple[float, float]]:
        """(λ_min, λ_max) of each tensor's P = ⊗ A_j, from the factors' logarithms."""
        out = []
        with torch.no_grad():
            for name in (n for n, s in self.shapes.items() if s.numel()):  # 0-size: no bound
                low = high = 0.0  # log-eigenvalues add over a Kronecker product
                for s in self._logs(name):
                    s = s.float() if s.dtype in _LOW_PRECISION else s
                    lam = torch.linalg.eigvalsh(0.5 * (s + s.mT)) if s.ndim == 2 else s.reshape(-1)
                    low += float(lam.min())
                    high += float(lam.max())
                out.append((math.exp(low), math.exp(high)))
        return out

    def monotonicity_modulus(self) -> float:
        return min(low for low, _ in self._extreme_eigenvalues())

    def lipschitz_constant(self) -> float:
        return max(high for _, high in self._extreme_eigenvalues())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_factor_size={self.max_factor_size}"
