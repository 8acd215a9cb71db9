"""Convex-potential map: g = ∇h* for an input-convex neural network h* (MetaMiDA)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirroropt._types import Params
from mirroropt._utils import key_of
from mirroropt.maps._base import MirrorMap

__all__ = ["ConvexPotential"]

#: Number of affine features lifted from each coordinate: z_i, its row mean, the tensor mean.
FEATURES = 3

#: Softplus switches to the identity above this argument. At 40 the switch is exact in float64
#: and float32 (log1p(e^40) rounds to 40 and sigmoid(40) to 1), so the ICNN stays convex and C¹
#: to the last bit, and e^40 does not overflow float32.
SOFTPLUS_THRESHOLD = 40.0


#: Tensors of at most this many coordinates, when they come in several shapes, share one flat
#: evaluation of their ICNN gradients (:func:`_icnn_gradient_flat`) instead of one per shape:
#: their cost is the per-operation overhead, not arithmetic.
FLAT_MAX_NUMEL = 1024


#: Below this many coordinates a layer is a broadcast multiply-and-sum instead of a BLAS gemm:
#: for the ICNN's tiny operands (fan-in 3 or H) gemm's threading overhead dominates (measured
#: 10x slower for the test shapes on a shared 2-core machine); above it gemm is ~2x faster.
GEMM_MIN_ROWS = 4096


def _softplus(x: Tensor) -> Tensor:
    return F.softplus(x, threshold=SOFTPLUS_THRESHOLD)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` (the same numbers either way, up to summation order)."""
    if x.shape[:-1].numel() >= GEMM_MIN_ROWS:
        return F.linear(x, weight, bias)
    y = (x.unsqueeze(-2) * weight).sum(-1)
    return y if bias is None else y + bias


@final
class ConvexPotential(MirrorMap):
    r"""Inverse mirror map :math:`g = \nabla h^*` of a learned input-convex potential, per tensor.

    MetaMiDA parameterizes the conjugate :math:`h^*` of the distance-generating function by a
    network that is convex in its input, so that :math:`g = \nabla h^*` is a valid inverse mirror
    map for any network weights. Here :math:`h^* = \sum_t h^*_t(z_t)` is a sum over tensors
    (blockwise, so the cost is :math:`O(d)`), and for the tensor :math:`z_t`, viewed as rows
    :math:`r` (output units: ``shape[0]``) of columns :math:`c`,

    .. math::

        h^*_t(z) &= \tfrac{\mu_t}{2}\|z\|^2 + \sum_{i} F_t(x_i), \qquad
        x_i = \big(z_i,\ \bar z_{r(i)},\ \bar z\big) = P_i z \in \mathbb R^3, \\
        F_t(x) &= v^\top \operatorname{softplus}\!\big(W u(x) + B_1 x + c_1\big), \qquad
        u(x) = \operatorname{softplus}(B_0 x + c_0),

    with :math:`\bar z_{r}` the mean of row :math:`r` and :math:`\bar z` the tensor mean, one
    ICNN (Amos et al., 2017) of width :math:`H` per tensor shared by all its coordinates,
    :math:`\mu_t = e^{\nu_t}`, non-negative hidden and output weights
    :math:`W = \operatorname{softplus}(V) \ge 0`, :math:`v = \operatorname{softplus}(\rho) \ge 0`,
    and unconstrained input ("skip") weights :math:`B_0, B_1`. The map is
    :math:`g(z)_t = \nabla h^*_t(z_t)`, evaluated in closed form (the ICNN's backward pass written
    out with plain tensor ops, equal to :func:`torch.func.grad` of :meth:`potential`; composable
    with ``vmap``, ``grad`` and an outer ``backward``: derivatives of any order).

    **Convexity.** softplus is convex and non-decreasing, so each :math:`u_k(x)` (softplus of an
    affine function) is convex; :math:`Wu(x) + B_1x + c_1` with :math:`W \ge 0` is convex; its
    softplus is convex (convex non-decreasing of convex); :math:`F_t` is a non-negative
    combination of those, hence convex in :math:`x`. Each :math:`x_i = P_i z` is linear in
    :math:`z`, so :math:`F_t(P_i z)` is convex in :math:`z`, the sum over :math:`i` is convex, and
    adding :math:`\tfrac{\mu_t}2\|z\|^2` makes :math:`h^*_t` :math:`\mu_t`-strongly convex. Hence
    :math:`g` is a gradient field (symmetric Jacobian :math:`\nabla^2 h^*`) and strongly monotone
    with modulus :math:`\mu = \min_t\mu_t`. The row and tensor means let a coordinate's step
    depend on its layer (unlike :class:`~mirroropt.maps.ElementwiseConvex`, the Jacobian is not
    diagonal) while keeping :math:`O(d)` cost.

    **Lipschitz bound.** With :math:`\sigma \le 1`, :math:`\sigma' \le \tfrac14`,
    :math:`\|\nabla^2 F_t\| \le B_t = \tfrac14\big[\max_k v_k\,(\|W\|\|B_0\| + \|B_1\|)^2 +
    \max_j (W^\top v)_j\,\|B_0\|^2\big]` (spectral norms), and
    :math:`\|\sum_i P_i^\top P_i\| = 3`, so :math:`\nabla^2 h^*_t \preceq (\mu_t + 3B_t) I` and
    :math:`g` is Lipschitz with :math:`L = \max_t(\mu_t + 3B_t)` (:meth:`lipschitz_constant`).

    **Initialization.** :math:`\nu = 0` and :math:`B_0 = B_1 = 0`, so :math:`F_t` is constant in
    :math:`z`, :math:`h^*_t = \tfrac12\|z\|^2 + \text{const}` and :math:`g(z) = z` exactly:
    meta-training starts as MAML. Note (deviation from a zero-initialized output layer): a
    non-negative output weight that is exactly zero would get a zero gradient (smooth
    reparametrization) or die once clamped below zero, so the input weights start at zero
    instead and :math:`v, W > 0` throughout. Any smooth convex parametrization that is exactly the
    identity has zero first-order change of the curvature :math:`\nabla^2 h^*` there; the first
    meta-gradient moves :math:`\mu_t` and the skip weights, after which the ICNN bends.

    **No closed-form** :math:`\nabla h` (``has_to_dual`` is False): as in MetaMiDA, start mirror
    descent from a meta-learned dual initialization :math:`z_0 = \theta_z`, built once with
    :meth:`dual_init` (which solves :math:`g(z_0) = \phi_0` with :meth:`solve_dual`) and passed as
    ``mirroropt.adapt(mirror_map, loss_fn, z=z0, ...)``.

    **Bounded weights** (``weights="sigmoid"``, MetaMiDA's Remark 1). With softplus the weights
    are unbounded, and so is the smoothness constant over meta-training. The paper's form squashes
    them with a sigmoid: :math:`W = \tfrac1H\,\sigma(V) \in (0, \tfrac1H)`, :math:`v =
    \tfrac2H\,\sigma(\rho) \in (0, \tfrac2H)`, and the signed skip weights
    :math:`B_j = \tanh(\tilde B_j) = 2\sigma(2\tilde B_j) - 1 \in (-1, 1)` (the same values at
    initialization as the softplus form). Then :math:`\|\nabla^2 F_t\|` is bounded by a constant
    that depends on :math:`H` only, so :math:`L \le \mu_t + 3B_t` holds uniformly for every
    weight setting (the bound :meth:`lipschitz_constant` reports is the same formula).

    Args:
        params: the tensors it acts on (a module, a mapping name → tensor/shape, or
            ``named_parameters()``).
        hidden: ICNN width :math:`H \ge 1`; parameters per tensor: :math:`H^2 + 9H + 1`.
        weights: ``"softplus"`` (non-negative, unbounded) or ``"sigmoid"`` (bounded, the
            paper's Remark 1).
        init_scale: standard deviation of the skip weights :math:`B_0, B_1` at initialization
            (seeded by torch's global RNG). ``0`` (default): exactly the identity, but the
            curvature of :math:`F_t` is :math:`O(\|B\|^2)`, so its meta-gradient vanishes there
            and only a translation of :math:`g` is learned to first order (exactly nothing with an
            anchored start, see :class:`mirroropt.workflow.MetaLearner`). A small value (0.1)
            starts next to the identity with a live curvature gradient.

    Raises:
        TypeError: if ``hidden`` is not an int.
        ValueError: if ``hidden`` < 1 or ``weights`` is unknown.

    Example:
        >>> import torch
        >>> import mirroropt
        >>> from mirroropt.maps import ConvexPotential
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> g = ConvexPotential({"w": torch.zeros(2, 3)}).double()
        >>> phi0 = {"w": torch.randn(2, 3, dtype=torch.float64)}
        >>> bool(torch.equal(g.to_primal(phi0)["w"], phi0["w"]))  # identity at initialization
        True
        >>> z0 = g.dual_init(phi0)  # learnable θ_z with g(θ_z) = φ0
        >>> loss = lambda p: (p["w"] ** 2).sum()
        >>> phi = mirroropt.adapt(g, loss, z=z0, lr=0.1, steps=2)
        >>> phi["w"].shape
        torch.Size([2, 3])

    References:
        Zhang, Li & Giannakis, "Learnable Loss Geometries with Mirror Descent for Scalable and
        Convergent Meta-Learning" (MetaMiDA), arXiv:2509.02418, 2025.
        Amos, Xu & Kolter, "Input Convex Neural Networks", ICML 2017, arXiv:1609.07152.
    """

    has_to_dual: ClassVar[bool] = False
    is_gradient_field: ClassVar[bool] = True
    is_linear: ClassVar[bool] = False

    def __init__(
        self,
        params: Any,
        *,
        hidden: int = 8,
        weights: Literal["softplus", "sigmoid"] = "softplus",
        init_scale: float = 0.0,
    ) -> None:
        super().__init__(params)
        if isinstance(hidden, bool) or not isinstance(hidden, int):
            raise TypeError(f"`hidden` must be an int, got {type(hidden).__name__}.")
        if hidden < 1:
            raise ValueError(f"`hidden` must be at least 1, got {hidden}.")
        if weights not in ("softplus", "sigmoid"):
            raise ValueError(f"`weights` must be 'softplus' or 'sigmoid', got {weights!r}.")
        if not (isinstance(init_scale, (int, float)) and 0.0 <= init_scale < math.inf):
            raise ValueError(f"`init_scale` must be a finite number ≥ 0, got {init_scale!r}.")
        self.hidden = hidden
        self.weights = weights
        keys = [key_of(n) for n in self.shapes]
        h = hidden
        # Output weights v = 1/H and hidden weights W = 0.5/H (positive); biases spread so that
        # hidden units differ once the input weights leave zero.
        if weights == "softplus":
            out, mix = math.log(math.expm1(1.0 / h)), math.log(math.expm1(0.5 / h))
        else:  # v = (2/H)·σ(0), W = (1/H)·σ(0)
            out, mix = 0.0, 0.0
        spread = torch.linspace(-1.0, 1.0, h)
        self.log_mu = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in keys})

        def skip() -> nn.Parameter:
            return nn.Parameter(
                init_scale * torch.randn(h, FEATURES) if init_scale else torch.zeros(h, FEATURES)
            )

        self.in0 = nn.ParameterDict({k: skip() for k in keys})
        self.bias0 = nn.ParameterDict({k: nn.Parameter(spread.clone()) for k in keys})
        self.raw_mix = nn.ParameterDict({k: nn.Parameter(torch.full((h, h), mix)) for k in keys})
        self.in1 = nn.ParameterDict({k: skip() for k in keys})
        self.bias1 = nn.ParameterDict({k: nn.Parameter(-spread) for k in keys})
        self.raw_out = nn.ParameterDict({k: nn.Parameter(torch.full((h,), out)) for k in keys})

    # ---------------------------------------------------------------------------------------------
    # the potential

    def _weights(self, name: str) -> tuple[Tensor, ...]:
        """(μ, B0, c0, W ≥ 0, B1, c1, v ≥ 0) of one tensor's potential."""
        k = key_of(name)
        if self.weights == "sigmoid":
            h = self.hidden
            return (
                self.log_mu[k].exp(),
                torch.tanh(self.in0[k]),
                self.bias0[k],
                torch.sigmoid(self.raw_mix[k]) / h,
                torch.tanh(self.in1[k]),
                self.bias1[k],
                torch.sigmoid(self.raw_out[k]) * (2.0 / h),
            )
        return (
            self.log_mu[k].exp(),
            self.in0[k],
            self.bias0[k],
            F.softplus(self.raw_mix[k]),
            self.in1[k],
            self.bias1[k],
            F.softplus(self.raw_out[k]),
        )

    def _tensor_potential(self, name: str, z: Tensor) -> Tensor:
        mu, in0, bias0, mix, in1, bias1, out = self._weights(name)
        shape = self.shapes[name]
        rows = z.reshape(shape[0] if len(shape) > 0 else 1, math.prod(shape[1:]))  # 0-size too
        x = torch.stack(
            [
                rows,
                rows.mean(dim=1, keepdim=True).expand_as(rows),
                rows.mean().expand_as(rows),
            ],
            dim=-1,
        )
        u = _softplus(_linear(x, in0, bias0))
        top = _softplus(_linear(u, mix) + _linear(x, in1, bias1))
        return 0.5 * mu * (z * z).sum() + (top * out).sum()

    def potential(self, z: Mapping[str, Tensor]) -> Tensor:
        r"""The convex potential :math:`h^*(z) = \sum_t h^*_t(z_t)`, a scalar tensor.

        :meth:`to_primal` is its gradient. Differentiable w.r.t. ``z`` and the map's parameters.
        """
        return torch.stack([self._tensor_potential(n, z[n]) for n in self.shapes]).sum()

    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        return self.prepared()(z)

    def prepared(self) -> Callable[[Mapping[str, Tensor]], Params]:
        r""":meth:`to_primal` with the z-independent work done once: constrained weights, grouped.

        Tensors of equal shape (e.g. the inner conv kernels of a Conv4) share one batched
        evaluation of their ICNN gradients: their weights are stacked here, once per inner loop.
        Small tensors (at most :data:`FLAT_MAX_NUMEL` coordinates: biases, norm scales, a head)
        of several shapes share one evaluation over their concatenated coordinates, with each
        coordinate's weights gathered here (:func:`_icnn_gradient_flat`): their cost is the
        number of operations, not their size.
        """
        groups: dict[torch.Size, list[str]] = {}
        for name, shape in self.shapes.items():
            groups.setdefault(shape, []).append(name)
        small = [s for s in groups if 0 < s.numel() <= FLAT_MAX_NUMEL]
        flat_names = [n for s in small for n in groups.pop(s)] if len(small) > 1 else []
        stacked = []
        for shape, names in groups.items():
            per_tensor = [self._weights(n) for n in names]
            weights = _fold_weights(tuple(torch.stack(list(w)) for w in zip(*per_tensor)))
            rows = shape[0] if len(shape) > 0 else 1
            stacked.append((names, shape, rows, weights))
        flat = self._flat_layout(flat_names) if flat_names else None

        def to_primal(z: Mapping[str, Tensor]) -> Params:
            out: Params = {}
            for names, shape, rows, weights in stacked:
                zs = torch.stack([z[n].reshape(rows, math.prod(shape[1:])) for n in names])
                grads = _icnn_gradient(zs, weights)
                for n, g in zip(names, grads.unbind(0)):
                    out[n] = g.reshape(shape)
            if flat is not None:
                shapes = [self.shapes[n] for n in flat_names]
                zf = torch.cat([z[n].reshape(-1) for n in flat_names])
                pieces = _icnn_gradient_flat(zf, flat).split([s.numel() for s in shapes])
                for n, g, shape in zip(flat_names, pieces, shapes):
                    out[n] = g.reshape(shape)
            return {n: out[n] for n in self.shapes}

        return to_primal

    def _flat_layout(self, names: list[str]) -> _Flat:
        """:func:`_icnn_gradient_flat`'s per-coordinate weights and indices for ``names``.

        The indices are built on the host and copied once (no data-dependent sizes on a GPU).
        """
        folded = _fold_weights(tuple(torch.stack(list(w)) for w in zip(*map(self._weights, names))))
        device, dtype = folded[0].device, folded[0].dtype
        tensor_of: list[int] = []
        row_of: list[int] = []
        per_row: list[float] = []
        per_tensor: list[float] = []
        for t, name in enumerate(names):
            shape = self.shapes[name]
            rows = shape[0] if len(shape) > 0 else 1
            cols = shape.numel() // rows
            tensor_of += [t] * shape.numel()
            row_of += [r for r in range(len(per_row), len(per_row) + rows) for _ in range(cols)]
            per_row += [1.0 / cols] * rows
            per_tensor.append(1.0 / shape.numel())
        tensor_index = torch.tensor(tensor_of, device=device)
        mu, in01, bias01, mix, v_mix_in1_t, in0_t = (w[tensor_index] for w in folded)
        return (  # coordinates last
            mu.reshape(-1),  # [N]
            in01.permute(1, 2, 0).contiguous(),  # [2H, 3, N]
            bias01.squeeze(-1).mT.contiguous(),  # [2H, N]
            mix.permute(1, 2, 0).contiguous(),  # [H, H, N]: W[h, j]
            v_mix_in1_t.permute(2, 1, 0).contiguous(),  # [H, H + 3, N]: v_h [W | B1][h, k]
            in0_t.permute(2, 1, 0).contiguous(),  # [H, 3, N]: B0[h, k]
            torch.tensor(row_of, device=device),
            tensor_index,
            torch.tensor(per_row, dtype=dtype, device=device),
            torch.tensor(per_tensor, dtype=dtype, device=device),
        )

    # ---------------------------------------------------------------------------------------------
    # dual initialization

    def solve_dual(
        self,
        phi: Mapping[str, Tensor],
        *,
        steps: int = 50,
        tol: float | None = None,
        cg_steps: int = 50,
    ) -> Params:
        r"""Find :math:`z` with :math:`g(z) = \phi` by minimizing :math:`h^*(z) - \langle\phi,z\rangle`.

        The objective is :math:`\mu`-strongly convex, so its minimizer is the unique solution of
        :math:`\nabla h^*(z) = \phi`, i.e. :math:`z = \nabla h(\phi)`. Newton's method with
        conjugate-gradient inner solves (Hessian-vector products :math:`\nabla^2 h^*\,v` from
        :func:`torch.func.vjp` of :math:`g`; the Hessian is symmetric) and a backtracking line
        search on the residual :math:`\|g(z)-\phi\|` (a valid merit function since
        :math:`\nabla^2 h^* \succeq \mu I`), started from :math:`z = \phi`.

        Eager only and not differentiable (the result is detached): use it to build a dual
        initialization once (:meth:`dual_init`), not inside a meta-training step.

        Args:
            phi: primal parameters, a dict name → tensor with the map's names and shapes.
            steps: maximum number of Newton steps.
            tol: required accuracy :math:`\max_i|g(z)_i - \phi_i|`; default ``1e-10`` in
                float64 and ``1e-4`` otherwise.
            cg_steps: maximum conjugate-gradient iterations per Newton step.

        Returns:
            The dual point ``z`` (detached), with ``max |g(z) - phi| <= tol``.

        Raises:
            ValueError: if ``steps``/``cg_steps`` are not positive ints, ``tol`` is not positive,
                or ``phi`` does not fit the map.
            RuntimeError: if ``tol`` is not reached within ``steps`` Newton steps.
        """
        self.check_fits(phi, argument="phi")
        for value, argument in ((steps, "steps"), (cg_steps, "cg_steps")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{argument}` must be a positive int, got {value!r}.")
        names = self.names
        target = torch.cat([phi[n].detach().reshape(-1) for n in names])
        if tol is None:
            tol = 1e-10 if target.dtype == torch.float64 else 1e-4
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"`tol` must be a positive number, got {tol!r}.")

        def unflat(flat: Tensor) -> dict[str, Tensor]:
            sizes = [self.shapes[n].numel() for n in names]
            return {n: t.reshape(self.shapes[n]) for n, t in zip(names, torch.split(flat, sizes))}

        def g_flat(flat: Tensor) -> Tensor:
            out = self.to_primal(unflat(flat))
            return torch.cat([out[n].reshape(-1) for n in names])

        with torch.no_grad():
            z = target.clone()
            residual = g_flat(z) - target
            for _ in range(steps):
                if float(residual.abs().max()) <= tol:
                    return {n: t.clone() for n, t in unflat(z).items()}
                # ∇²h* is symmetric, so its vector-Jacobian products are Hessian-vector products.
                pullback = torch.func.vjp(g_flat, z)[1]
                direction = _conjugate_gradient(pullback, residual, cg_steps)
                norm, t = float(residual.norm()), 1.0
                while True:  # backtracking on ‖g(z) - φ‖; Newton steps pass at t = 1 near z*
                    candidate = z - t * direction
                    new_residual = g_flat(candidate) - target
                    if float(new_residual.norm()) <= (1 - 1e-4 * t) * norm or t < 1e-10:
                        break
                    t *= 0.5
                z, residual = candidate, new_residual
            error = float(residual.abs().max())
            if error <= tol:
                return {n: t.clone() for n, t in unflat(z).items()}
        raise RuntimeError(
            f"ConvexPotential.solve_dual did not reach `tol`={tol:g} in `steps`={steps} Newton "
            f"steps: max |g(z) - phi| = {error:.3g}. Increase `steps` or `cg_steps`, or loosen "
            f"`tol`."
        )

    def dual_init(self, phi: Mapping[str, Tensor], **solver: Any) -> dict[str, nn.Parameter]:
        r"""A learnable dual initialization :math:`\theta_z` with :math:`g(\theta_z) = \phi`.

        MetaMiDA meta-learns :math:`z_0 = \theta_z` directly (the map has no closed-form
        :math:`\nabla h`). This returns fresh leaf ``nn.Parameter``\ s, keyed by the map's names,
        initialized at :meth:`solve_dual` ``(phi)`` so meta-training starts from the primal
        initialization ``phi``. Hand them to the meta-optimizer together with the map's parameters
        and to ``mirroropt.adapt(mirror_map, loss_fn, z=z0, ...)``; register them on a module with
        ``nn.ParameterList(z0.values())`` if they must be saved with it.

        Args:
            phi: primal initialization :math:`\phi_0`, e.g. ``dict(model.named_parameters())``.
            **solver: keyword arguments for :meth:`solve_dual` (``steps``, ``tol``, ``cg_steps``).

        Raises:
            ValueError/RuntimeError: as :meth:`solve_dual`.
        """
        z = self.solve_dual(phi, **solver)
        return {n: nn.Parameter(t) for n, t in z.items()}

    # ---------------------------------------------------------------------------------------------
    # bounds

    def monotonicity_modulus(self) -> float:
        with torch.no_grad():
            return min(float(self.log_mu[key_of(n)].exp()) for n in self.shapes)

    def lipschitz_constant(self) -> float:
        with torch.no_grad():
            bounds = []
            for name in self.shapes:
                mu, in0, _, mix, in1, _, out = self._weights(name)
                n0, n1, nw = (torch.linalg.matrix_norm(m.double(), ord=2) for m in (in0, in1, mix))
                hess = 0.25 * (out.max() * (nw * n0 + n1) ** 2 + (mix.T @ out).max() * n0**2)
                bounds.append(float(mu + FEATURES * hess))
            return max(bounds)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}, weights={self.weights!r}"


#: :func:`_fold_weights`' output: μ, [B0; B1], [c0; c1], W, [diag(v)W | diag(v)B1]ᵀ and B0ᵀ.
_Folded = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _fold_weights(weights: tuple[Tensor, ...]) -> _Folded:
    r"""The z-independent pieces of :func:`_icnn_gradient`, from stacked ``(μ, B0, c0, W, B1, c1, v)``.

    Computed once per :meth:`ConvexPotential.prepared` (once per inner loop): both layers' input
    weights stacked, :math:`[B_0; B_1]` (``[T, 2H, 3]``) with their biases, :math:`W`, the output
    weight folded into the backward's matrices,
    :math:`[\operatorname{diag}(v)\,W \mid \operatorname{diag}(v)\,B_1]^\top` (so
    :math:`t_1 = v \odot \sigma(a_1)` is never formed), and :math:`B_0^\top`.
    """
    mu, in0, bias0, mix, in1, bias1, out = weights
    v = out.unsqueeze(-1)  # [T, H, 1]
    return (
        mu.reshape(-1, 1, 1),
        torch.cat([in0, in1], dim=1),  # [T, 2H, 3]: (a0; B1 x) = [B0; B1] x + [c0; c1]
        torch.cat([bias0, bias1], dim=1).unsqueeze(-1),  # [T, 2H, 1]
        mix,  # a1 = W u + B1 x + c1
        # [diag(v) W | diag(v) B1]ᵀ, [T, H + 3, H]: one product with σ(a1) gives both
        # Wᵀt1 (for t0 = (Wᵀt1) ⊙ σ(a0)) and B1ᵀt1, with t1 = v ⊙ σ(a1)
        torch.cat([v * mix, v * in1], dim=-1).mT,
        in0.mT,  # [T, 3, H]: B0ᵀ t0
    )


def _icnn_gradient(z: Tensor, folded: _Folded) -> Tensor:
    r"""Closed-form :math:`\nabla h^*_t` for T tensors of one shape at once (the ICNN backward).

    ``z`` is ``[T, rows, cols]``; ``folded`` is :func:`_fold_weights` of the stacked
    ``(μ, B0, c0, W, B1, c1, v)``. With :math:`a_0 = B_0x + c_0`, :math:`u = \operatorname{softplus}(a_0)`,
    :math:`a_1 = Wu + B_1x + c_1`, :math:`t_1 = v\odot\sigma(a_1)` and
    :math:`t_0 = (W^\top t_1)\odot\sigma(a_0)` (:math:`\sigma = \operatorname{softplus}'`, which is
    exactly 1 in floating point above the threshold, like softplus's own backward),
    :math:`\partial F/\partial x_i = d_i = B_1^\top t_{1,i} + B_0^\top t_{0,i} \in \mathbb R^3`, and
    the three features of :math:`x_i = P_i z` pull back to
    :math:`\nabla h^*_t(z)_i = \mu z_i + d^{(0)}_i + \overline{d^{(1)}}_{r(i)} + \overline{d^{(2)}}`.
    One product of :math:`\sigma(a_1)` with :math:`[\operatorname{diag}(v)W \mid
    \operatorname{diag}(v)B_1]^\top` gives :math:`W^\top t_1` and :math:`B_1^\top t_1`.

    Layout: hidden units outside, coordinates inside (``[T, H, rows·cols]``), so every
    elementwise pass runs over contiguous coordinates, and every product is a gemm over the
    coordinates (the features ``[T, 3, n]`` times both layers' input weights at once; their
    backward is two gemms, not four broadcast multiplies). Equal to ``torch.func.grad`` of
    :meth:`ConvexPotential.potential` (tested in float64) and differentiable to any order,
    without a nested transform per step.
    """
    mu, in01, bias01, mix, v_mix_in1_t, in0_t = folded
    t, rows, cols = z.shape
    h = mix.shape[-1]
    n = rows * cols
    features = torch.stack(  # x_i = (z_i, row mean, tensor mean), [T, 3, rows, cols]
        [
            z,
            z.mean(dim=2, keepdim=True).expand(t, rows, cols),
            z.mean(dim=(1, 2), keepdim=True).expand(t, rows, cols),
        ],
        dim=1,
    ).reshape(t, 3, n)
    a0, b1x = torch.baddbmm(bias01, in01, features).split([h, h], dim=1)  # [T, H, n] each
    s1 = torch.sigmoid(torch.baddbmm(b1x, mix, _softplus(a0)))  # σ(a1)
    t1_w, t1_b1 = torch.bmm(v_mix_in1_t, s1).split([h, 3], dim=1)  # Wᵀt1, B1ᵀt1
    d = torch.baddbmm(t1_b1, in0_t, t1_w * torch.sigmoid(a0)).reshape(t, 3, rows, cols)
    d1 = d[:, 1].mean(dim=2, keepdim=True)  # [T, rows, 1]
    d2 = d[:, 2].mean(dim=(1, 2), keepdim=True)  # [T, 1, 1]
    return mu * z + d[:, 0] + d1 + d2


#: :meth:`ConvexPotential._flat_layout`'s output: μ, [B0; B1], [c0; c1], W, [diag(v)W | diag(v)B1]
#: and B0, gathered per coordinate (coordinates last), the coordinates' row and tensor indices,
#: and 1/cols per row and 1/numel per tensor.
_Flat = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _icnn_gradient_flat(z: Tensor, flat: _Flat) -> Tensor:
    r""":func:`_icnn_gradient` for the concatenated coordinates ``z`` (``[N]``) of tensors of
    different shapes, each coordinate with its own tensor's weights (``flat``, from
    :meth:`ConvexPotential._flat_layout`).

    The row and tensor means are segment sums (``index_add``) gathered back to the coordinates;
    the products over the hidden units are broadcast multiply-and-sums with per-coordinate
    weights (``[H, H, N]``: small, since only tensors of at most :data:`FLAT_MAX_NUMEL`
    coordinates come here). The same formula as :func:`_icnn_gradient`, term by term.
    """
    mu, in01, bias01, mix, v_mix_in1, in0, row_of, tensor_of, per_row, per_tensor = flat
    h = mix.shape[0]

    def segment_mean(x: Tensor, index: Tensor, scale: Tensor) -> Tensor:
        sums = torch.zeros(scale.shape, dtype=x.dtype, device=x.device).index_add(0, index, x)
        return (sums * scale).index_select(0, index)

    features = torch.stack(  # x_i = (z_i, row mean, tensor mean), [3, N]
        [z, segment_mean(z, row_of, per_row), segment_mean(z, tensor_of, per_tensor)]
    )
    a0, b1x = ((in01 * features).sum(1) + bias01).split([h, h])  # [H, N] each
    s1 = torch.sigmoid((mix * _softplus(a0)).sum(1) + b1x)  # σ(a1)
    t1_w, t1_b1 = (v_mix_in1 * s1.unsqueeze(1)).sum(0).split([h, 3])  # Wᵀt1, B1ᵀt1
    d = t1_b1 + (in0 * (t1_w * torch.sigmoid(a0)).unsqueeze(1)).sum(0)  # [3, N]
    return (
        mu * z
        + d[0]
        + segment_mean(d[1], row_of, per_row)
        + segment_mean(d[2], tensor_of, per_tensor)
    )


def _conjugate_gradient(matvec: Any, rhs: Tensor, steps: int) -> Tensor:
    """Solve A x = rhs for symmetric positive-definite A; ``matvec(v)`` returns ``(A v,)``."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = r.dot(r)
    stop = float(rr) * 1e-28
    for _ in range(steps):
        if float(rr) <= stop:
            break
        (ap,) = matvec(p)
        alpha = rr / p.dot(ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x
