"""Block inverse-autoregressive flow: MetaMiDA's nonlinear, layer-by-layer inverse mirror map."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirroropt._types import Params
from mirroropt._utils import key_of
from mirroropt.maps._base import MirrorMap

__all__ = ["BlockIAF"]


def _mode_product(x: Tensor, mats: Sequence[Tensor], first: int = 0) -> Tensor:
    r"""Multiply mode ``first + k`` of ``x`` by ``mats[k]``: :math:`x \times_1 M_1 \cdots \times_m M_m`.

    Equivalent to ``(M_1 ⊗ … ⊗ M_m) vec(x)`` without forming the Kronecker product; costs
    :math:`O(\mathrm{numel}(x)\, r)` for factors of rank :math:`r`. The modes are taken in
    :func:`_mode_order` (the products commute).
    """
    for k in _mode_order([m.shape for m in mats]):
        m = mats[k]
        x = torch.movedim(torch.tensordot(m, x, dims=([1], [first + k])), 0, first + k)
    return x


def _mode_order(shapes: Sequence[torch.Size]) -> list[int]:
    """Modes by increasing growth ``p / q`` of their ``p × q`` factor: the most shrinking first and
    the most growing last, so the fewest products run on the large intermediates.

    Lifting a rank-2 core to a ``32×32×3×3`` kernel in the given order made two full-size
    intermediates; in this order one (``benchmarks/maps_ab.py``: BlockIAF's Conv4-32
    meta-iteration 0.97× of the given order's).
    """
    return sorted(range(len(shapes)), key=lambda k: shapes[k][-2] / max(shapes[k][-1], 1))


def _batched_mode_product(x: Tensor, mats: Sequence[Tensor], first: int) -> Tensor:
    """:func:`_mode_product` over a leading group dimension: ``out[g] = x[g] ×_k mats[k][g]``.

    ``x`` is ``[G, ...]`` and ``mats[k]`` is ``[G, p_k, q_k]``, multiplied into dimension
    ``first + k`` of ``x`` (``first ≥ 1``); one ``einsum`` per mode for the whole group, in
    :func:`_mode_order`.
    """
    letters = "abcdefghijklmnopqrstuvw"[: x.ndim - 1]
    for k in _mode_order([m.shape for m in mats]):
        m = mats[k]
        mode = letters[first - 1 + k]
        out = letters.replace(mode, "y")
        x = torch.einsum(f"Zy{mode},Z{letters}->Z{out}", m, x)
    return x


def _merged_modes(mats: Sequence[Tensor]) -> list[Tensor]:
    r"""Mode factors (``[p_k, q_k]``, or ``[G, p_k, q_k]`` for a group) with the modes after the first
    merged into one.

    :math:`M_2 \otimes \cdots \otimes M_m` (``[G, p_2\cdots p_m, q_2\cdots q_m]``, the row-major
    order of the merged mode's entries) is one small matrix (``[G, 8, 288]`` for a rank-2 factor
    of a 32×32×3×3 kernel), so a conv block's mode product is two products instead of four — the
    same linear map, a fraction of the operators under ``vmap``. Tensors of up to two modes are
    returned as they are.
    """
    if len(mats) <= 2:
        return list(mats)
    rest = mats[1]
    for m in mats[2:]:
        *lead, p, q = rest.shape
        product = rest[..., :, None, :, None] * m[..., None, :, None, :]
        rest = product.reshape(*lead, p * m.shape[-2], q * m.shape[-1])
    return [mats[0], rest]


def _merged_size(sizes: Sequence[int]) -> tuple[int, ...]:
    """The mode sizes of :func:`_merged_modes`: the first, and the product of the others."""
    return tuple(sizes) if len(sizes) <= 2 else (sizes[0], math.prod(sizes[1:]))


def _lift(cores: Tensor, lift: Sequence[Tensor], core: Sequence[int]) -> Tensor:
    """A decoder group's ``[G, c, numel(core)]`` cores times its lift factors: ``[G, c, numel]``."""
    g, c = cores.shape[:2]
    return _batched_mode_product(cores.reshape(g, c, *core), lift, first=2).reshape(g, c, -1)


def _squared_spectral_norms(mats: Sequence[Tensor]) -> Tensor:
    r"""The squared spectral norms :math:`\|M_i\|_2^2`, all in one batched symmetric eigensolve.

    :math:`\|M\|_2^2` is the top eigenvalue of the smaller Gram matrix (:math:`MM^\top` or
    :math:`M^\top M`); the Grams are zero-padded to one size (padding adds zero eigenvalues, and
    Grams are positive semidefinite, so the top one is unchanged). Only eigenvalues are
    differentiated, so the gradient :math:`v v^\top` is finite even at repeated eigenvalues (e.g.
    at the zero-initialized heads), unlike a square root at zero.
    """
    grams = [m @ m.mT if m.shape[0] <= m.shape[1] else m.mT @ m for m in mats]
    size = max(g.shape[0] for g in grams)
    padded = [F.pad(g, (0, size - g.shape[0], 0, size - g.shape[0])) for g in grams]
    stacked = torch.stack(padded)
    if stacked.dtype in (torch.float16, torch.bfloat16):  # no half eigvalsh; products overflow
        return torch.linalg.eigvalsh(stacked.float())[:, -1]
    return torch.linalg.eigvalsh(stacked)[:, -1]


class _Block(nn.Module):
    """Encoder and decoder of one block (one parameter tensor); internal to :class:`BlockIAF`."""

    def __init__(
        self,
        shape: torch.Size,
        *,
        rank: int,
        width: int,
        hidden: int,
        has_context: bool,
        has_successor: bool,
        monotone: bool,
    ) -> None:
        super().__init__()
        ranks = [min(rank, n) for n in shape]
        self.core = torch.Size(ranks)
        core_numel = math.prod(ranks)
        # decoder: lift factors V_k (n_k × r_k) shared by the log-scale and shift cores
        self.lift = nn.ParameterList(
            [nn.Parameter(torch.randn(n, r) / math.sqrt(r)) for n, r in zip(shape, ranks)]
        )
        # constant parts of the (a, μ) cores: the whole decoder for the first block
        self.head_bias = nn.Parameter(torch.zeros(2, core_numel))
        self.dec_in: nn.Linear | None = None
        self.head_weight: nn.Parameter | None = None
        if has_context:
            self.dec_in = nn.Linear(width, hidden)
            # zero output head: g is the identity at initialization; in monotone mode only the
            # shift depends on earlier blocks, so the head has rows for μ only
            self.head_weight = nn.Parameter(
                torch.zeros((1 if monotone else 2) * core_numel, hidden)
            )
        # encoder: down factors U_k (r_k × n_k), tanh, then a dense layer to the context width
        self.down = nn.ParameterList()
        self.enc_out: nn.Linear | None = None
        if has_successor:
            self.down.extend(
                nn.Parameter(torch.randn(r, n) / math.sqrt(n)) for n, r in zip(shape, ranks)
            )
            self.enc_out = nn.Linear(core_numel, width, bias=False)


@final
class BlockIAF(MirrorMap):
    r"""Block inverse-autoregressive flow :math:`g` (MetaMiDA, ICASSP 2024): layer-wise affine maps.

    The blocks are the parameter tensors, in :attr:`names` order (a conv kernel and its bias are
    two blocks, so a layer's bias may depend on its kernel). Block :math:`B` is mapped by an affine
    map whose scale and shift are computed from the *earlier* blocks' dual variables only:

    .. math::

        c_B = \sum_{j<B} e_j(z_j), \qquad
        (a_B, \mu_B) = d_B(c_B), \qquad
        s_B = s_{\min} + (s_{\max}-s_{\min})\,\sigma(a_B + a_0), \qquad
        \phi_B = g(z)_B = z_B \odot s_B + \mu_B ,

    with :math:`a_0 = \operatorname{logit}\frac{1-s_{\min}}{s_{\max}-s_{\min}}`, so
    :math:`s_B = 1` at :math:`a_B = 0`. The encoder
    :math:`e_j(z_j) = E_j \tanh(z_j \times_1 U_{j,1} \cdots \times_m U_{j,m})` and the decoder
    :math:`d_B(c) = (W_B \tanh(W'_B c + b'_B) + b_B) \times_1 V_{B,1} \cdots \times_m V_{B,m}` are
    two-layer MLPs whose tensor-sized layers are mode products with one thin factor per mode
    (:math:`U \in \mathbb R^{r\times n_k}`, :math:`V \in \mathbb R^{n_k\times r}`, i.e. Kronecker
    factors of rank ``rank``), so a 64×64×3×3 kernel costs :math:`2r(64+64+3+3)` factor entries,
    not :math:`36864 \times` anything. The output head :math:`(W_B, b_B)` is zero at
    initialization: :math:`s_B = 1`, :math:`\mu_B = 0`, :math:`g = \mathrm{id}`, and mirror descent
    starts as MAML's gradient descent. A step costs :math:`O(r\,d)` for :math:`d` model parameters.

    ``to_dual`` inverts block by block, recomputing each block's scale and shift from the already
    recovered earlier blocks: :math:`z_B = (\phi_B - \mu_B(z_{<B})) / s_B(z_{<B})`. There is no
    potential in closed form: the Jacobian :math:`J = D + N` (:math:`D` the diagonal of scales,
    :math:`N` strictly block-lower-triangular) is not symmetric, so :math:`g` is *not* a gradient
    field and the induced "divergence" is not a Bregman divergence (``is_gradient_field=False``).

    **Monotonicity.** :math:`\langle v, Jv\rangle \ge s_{\min}\|v\|^2 - \|N\|\,\|v\|^2`, so
    :math:`g` is strongly monotone when the cross-block part is small, but not automatically.
    With ``monotone=False`` (the paper's flow) the scale depends on earlier blocks, and then
    :math:`g` is *never* monotone on all of :math:`\mathbb R^d`: :math:`N` contains
    :math:`\operatorname{diag}(z_B)\,\partial s_B/\partial z_j`, which grows without bound in
    :math:`|z_B|` while :math:`D \le s_{\max}`; for :math:`v = (v_j, v_B)` one gets
    :math:`\langle v,Jv\rangle < 0` once :math:`|z_B\,\partial s_B/\partial z_j| > 2\sqrt{s_j s_B}`.
    It is monotone only on bounded sets and for small cross-block weights, and states no modulus.

    With ``monotone=True`` the map is strongly monotone by construction: the scale is a learned
    per-block constant (:math:`a_B = b_B^a \times_k V_{B,k}`, no dependence on :math:`z`), only
    the shift depends on earlier blocks, and the shift's context-dependent part is multiplied by
    :math:`\kappa = \min(1, c\,s_{\min}/\Lambda)`, where :math:`\Lambda` bounds the Lipschitz
    constant of :math:`M(z) = (\mu_B(z_{<B}))_B`: with tanh 1-Lipschitz and the spectral norm of
    a Kronecker product the product of its factors' norms,
    :math:`\mathrm{Lip}(e_j) \le \ell_j = \|E_j\|\prod_k\|U_{j,k}\|`,
    :math:`\mathrm{Lip}(\mu_B) \le L_B = \|W_B\|\,\|W'_B\|\prod_k\|V_{B,k}\|`, and by
    Cauchy–Schwarz :math:`\|M(z)-M(z')\|^2 \le \sum_B L_B^2 \sum_{j<B}\ell_j^2\,\|z-z'\|^2`, so
    :math:`\Lambda = (\sum_B L_B^2 \sum_{j<B}\ell_j^2)^{1/2}`. Then
    :math:`\langle \Delta z, \Delta g\rangle \ge (\min s - \kappa\Lambda)\|\Delta z\|^2` and
    :math:`\|\Delta g\| \le (\max s + \kappa\Lambda)\|\Delta z\|`, with
    :math:`\kappa\Lambda \le c\,s_{\min}`: :meth:`monotonicity_modulus` returns
    :math:`\min s - \kappa\Lambda \ge (1-c)s_{\min} > 0` and :meth:`lipschitz_constant`
    :math:`\max s + \kappa\Lambda`, whatever the learned weights. (``monotone=False`` returns
    ``None`` for both.) :math:`\kappa` is differentiable (a clamp of exact spectral norms, from
    one batched eigensolve of the factors' small Gram matrices), so meta-training learns under
    the constraint, like spectral normalization but with an exact upper bound rather than a
    power-iteration estimate (which can under-estimate). Cost: :math:`O(1)` in :math:`d` per call
    beyond the factors themselves (about 100 matrices of side at most ``max(rank, width,
    hidden)`` for a Conv4).

    Note:
        Deviations from the authors' version: (1) the scale is a logistic function rescaled to
        :math:`[s_{\min}, s_{\max}]`, as the paper describes, whereas the authors' code uses an
        unbounded :math:`\exp`; bounded scales keep :math:`g` bi-Lipschitz and ``to_dual`` well
        conditioned. (2) Encoders and decoders use Kronecker-factored mode products and a shared
        context vector (the sum of earlier encodings) instead of dense layers, so the flow has far
        fewer parameters than the model (a fraction of a Conv4-64 instead of many times it).
        (3) ``monotone=True`` is an addition of ours (see above).

    Args:
        params: the tensors it acts on (a module, a mapping name → tensor/shape, or
            ``named_parameters()``); their order is the autoregressive order.
        monotone: make :math:`g` strongly monotone by construction (constant per-block scales,
            Lipschitz-bounded shift), with stated modulus and Lipschitz constant.
        rank: rank :math:`r` of each mode's Kronecker factor (capped at the mode's size).
        width: size of the context vector :math:`c_B` passed from earlier blocks.
        hidden: hidden size of each decoder MLP.
        scale_range: :math:`(s_{\min}, s_{\max})` with :math:`0 < s_{\min} < 1 < s_{\max}`.
        coupling: :math:`c \in (0, 1)`, the bound :math:`\kappa\Lambda \le c\,s_{\min}` on the
            cross-block Lipschitz constant in ``monotone=True`` mode (unused otherwise).

    Raises:
        TypeError: if ``monotone`` is not a bool or ``rank``/``width``/``hidden`` is not an int.
        ValueError: if ``rank``/``width``/``hidden`` is not positive, ``scale_range`` is not
            ``0 < s_min < 1 < s_max`` (finite), or ``coupling`` is not in ``(0, 1)``.

    Example:
        >>> import torch
        >>> from mirroropt.maps import BlockIAF
        >>> g = BlockIAF({"w": (2, 3), "b": (2,)}, monotone=True)
        >>> z = {"w": torch.ones(2, 3), "b": torch.tensor([1.0, -1.0])}
        >>> g.to_primal(z)["b"].tolist()  # identity at initialization
        [1.0, -1.0]
        >>> round(g.monotonicity_modulus(), 6), round(g.lipschitz_constant(), 6)
        (1.0, 1.0)

    References:
        Zhang, Li & Giannakis, "Meta-Learning with Versatile Loss Geometries for Fast Adaptation
        Using Mirror Descent", ICASSP 2024, arXiv:2312.13486.
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
        NeurIPS 2016, arXiv:1606.04934.
    """

    has_to_dual: ClassVar[bool] = True
    is_gradient_field: ClassVar[bool] = False
    is_linear: ClassVar[bool] = False

    def __init__(
        self,
        params: Any,
        *,
        monotone: bool = False,
        rank: int = 2,
        width: int = 16,
        hidden: int = 16,
        scale_range: tuple[float, float] = (0.1, 10.0),
        coupling: float = 0.5,
    ) -> None:
        super().__init__(params)
        if not isinstance(monotone, bool):
            raise TypeError(f"`monotone` must be a bool, got {type(monotone).__name__}.")
        for argument, value in (("rank", rank), ("width", width), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{argument}` must be an int, got {type(value).__name__}.")
            if value < 1:
                raise ValueError(f"`{argument}` must be a positive int, got {value}.")
        try:
            s_min, s_max = (float(s) for s in scale_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"`scale_range` must be a pair (s_min, s_max) of numbers, got {scale_range!r}."
            ) from None
        if not (math.isfinite(s_max) and 0.0 < s_min < 1.0 < s_max):
            raise ValueError(
                f"`scale_range` must satisfy 0 < s_min < 1 < s_max (finite) so that the scale is "
                f"positive and equals 1 at initialization, got {scale_range!r}."
            )
        if not (isinstance(coupling, (int, float)) and 0.0 < coupling < 1.0):
            raise ValueError(f"`coupling` must be in (0, 1), got {coupling!r}.")
        self.monotone = monotone
        self.rank, self.width, self.hidden = rank, width, hidden
        self.s_min, self.s_max = s_min, s_max
        self.coupling = float(coupling)
        self._a0 = math.log((1.0 - s_min) / (s_max - 1.0))  # logit((1 - s_min)/(s_max - s_min))
        last = len(self.shapes) - 1
        self.blocks = nn.ModuleDict(
            {
                key_of(name): _Block(
                    shape,
                    rank=rank,
                    width=width,
                    hidden=hidden,
                    has_context=i > 0,
                    has_successor=i < last,
                    monotone=monotone,
                )
                for i, (name, shape) in enumerate(self.shapes.items())
            }
        )

    # ------------------------------------------------------------------------------------------
    # pieces of the flow

    def _blocks(self) -> list[_Block]:
        return [self.blocks[key_of(n)] for n in self.shapes]  # type: ignore[misc]

    def _encode(self, block: _Block, z_b: Tensor) -> Tensor:
        assert block.enc_out is not None
        core = torch.tanh(_mode_product(z_b, list(block.down)).reshape(-1))
        return F.linear(core, block.enc_out.weight)

    def _affine(
        self, block: _Block, shape: torch.Size, context: Tensor | None, kappa: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The scale :math:`s_B` and shift :math:`\\mu_B` of one block, each of the block's shape."""
        a_core, mu_core = block.head_bias[0], block.head_bias[1]
        if context is not None:
            assert block.dec_in is not None and block.head_weight is not None
            out = F.linear(torch.tanh(block.dec_in(context)), block.head_weight)
            if self.monotone:
                assert kappa is not None
                mu_core = mu_core + kappa * out
            else:
                a_part, mu_part = out.chunk(2)
                a_core, mu_core = a_core + a_part, mu_core + mu_part
        cores = torch.stack([a_core, mu_core]).reshape(2, *block.core)
        a, mu = _mode_product(cores, list(block.lift), first=1).unbind(0)
        scale = self.s_min + (self.s_max - self.s_min) * torch.sigmoid(a + self._a0)
        return scale.reshape(shape), mu.reshape(shape)

    def _shift_bound_squared(self) -> Tensor:
        r""":math:`\Lambda^2 = \sum_B L_B^2 \sum_{j<B} \ell_j^2` (spectral norms; see the class).

        A Kronecker product's spectral norm is the product of its factors' spectral norms, so
        :math:`L_B^2 = \|W_B\|^2\|W'_B\|^2\prod_k\|V_{B,k}\|^2` and
        :math:`\ell_j^2 = \|E_j\|^2\prod_k\|U_{j,k}\|^2`.
        """
        blocks = self._blocks()
        groups: list[list[Tensor]] = []  # per block: [decoder matrices], [encoder matrices]
        for block in blocks:
            dec = (
                [block.head_weight, block.dec_in.weight, *block.lift]
                if block.head_weight is not None and block.dec_in is not None
                else []
            )
            enc = [block.enc_out.weight, *block.down] if block.enc_out is not None else []
            groups += [dec, enc]
        mats = [m for group in groups for m in group]
        if not mats:  # a single block: no cross-block dependence at all
            ref = blocks[0].head_bias
            return torch.zeros((), dtype=ref.dtype, device=ref.device)
        squares = _squared_spectral_norms(mats)
        products, start = [], 0
        for group in groups:
            products.append(squares[start : start + len(group)].prod() if group else None)
            start += len(group)
        total: Tensor | None = None
        enc_sq: Tensor | None = None
        for dec_sq, this_enc_sq in zip(products[0::2], products[1::2]):
            if dec_sq is not None and enc_sq is not None:
                total = dec_sq * enc_sq if total is None else total + dec_sq * enc_sq
            if this_enc_sq is not None:
                enc_sq = this_enc_sq if enc_sq is None else enc_sq + this_enc_sq
        assert total is not None
        return total

    def _kappa(self) -> Tensor:
        r""":math:`\kappa = \min(1, c\,s_{\min}/\Lambda)`, computed without a square root at 0."""
        target = self.coupling * self.s_min
        return target / torch.clamp(self._shift_bound_squared(), min=target**2).sqrt()

    # ------------------------------------------------------------------------------------------
    # the map

    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        return self.prepared()(z)

    def prepared(self) -> Callable[[Mapping[str, Tensor]], Params]:
        r""":meth:`to_primal` with the z-independent work done once per inner loop, batched.

        Once per call: :math:`\kappa` (spectral norms, ``monotone=True``), the first block's scale
        and shift (no context), the constant scales of ``monotone=True``, and, for every group of
        blocks of one shape, their stacked encoder and decoder weights, the factors of the modes
        after the first merged into one (:func:`_merged_modes`: two products per block). Per
        application the encodings :math:`e_j(z_j)` depend on :math:`z_j` alone, so all of them
        are computed at once (one batched evaluation per shape group), the contexts
        :math:`c_B = \sum_{j<B} e_j` are one prefix sum (the same left-to-right additions as
        block by block), and all decoders then run batched per shape group.
        """
        kappa = self._kappa() if self.monotone else None
        names = list(self.shapes)
        shapes = list(self.shapes.values())
        blocks = self._blocks()
        first = self._affine(blocks[0], shapes[0], None, kappa)
        enc_groups: dict[torch.Size, list[int]] = {}
        dec_groups: dict[torch.Size, list[int]] = {}
        for i, (shape, block) in enumerate(zip(shapes, blocks)):
            if block.enc_out is not None:
                enc_groups.setdefault(shape, []).append(i)
            if i > 0:
                dec_groups.setdefault(shape, []).append(i)

        encoders = []
        for shape, idx in enc_groups.items():
            group = [blocks[i] for i in idx]
            down = _merged_modes(
                [torch.stack([b.down[k] for b in group]) for k in range(len(shape))]
            )
            weight = torch.stack([b.enc_out.weight for b in group])  # type: ignore[union-attr]
            encoders.append((idx, _merged_size(shape), down, weight))
        order = [i for idx, *_ in encoders for i in idx]
        # row r of the concatenated encodings belongs to block order[r]; rows in block order (a
        # Python permutation, not an index tensor: no host-to-device copy per call)
        to_block_order = sorted(range(len(order)), key=order.__getitem__)

        decoders = []
        for shape, idx in dec_groups.items():
            group = [blocks[i] for i in idx]
            lift = _merged_modes(
                [torch.stack([b.lift[k] for b in group]) for k in range(len(shape))]
            )
            core = _merged_size(group[0].core)
            dec_w = torch.stack([b.dec_in.weight for b in group]).mT  # type: ignore[union-attr]
            dec_b = torch.stack([b.dec_in.bias for b in group]).unsqueeze(1)  # type: ignore[union-attr]
            head_w = torch.stack([b.head_weight for b in group]).mT  # type: ignore[misc]
            head_b = torch.stack([b.head_bias for b in group])  # [G, 2, core]
            constant_scale = None
            if self.monotone:  # the scale has no context: compute it here
                a = _lift(head_b[:, :1], lift, core).squeeze(1)
                constant_scale = self.s_min + (self.s_max - self.s_min) * torch.sigmoid(
                    a + self._a0
                )
            decoders.append((idx, shape, core, lift, dec_w, dec_b, head_w, head_b, constant_scale))

        def to_primal(z: Mapping[str, Tensor]) -> Params:
            out: Params = {names[0]: z[names[0]] * first[0] + first[1]}
            if len(names) == 1:
                return out
            encodings = []
            for idx, sizes, down, weight in encoders:
                zs = torch.stack([z[names[i]].reshape(sizes) for i in idx])  # [G, *merged shape]
                code = torch.tanh(_batched_mode_product(zs, down, first=1).reshape(len(idx), 1, -1))
                encodings.append(torch.bmm(code, weight.mT))  # [G, 1, width]
            rows = torch.cat(encodings).squeeze(1).unbind(0)
            e = torch.stack([rows[r] for r in to_block_order])  # [blocks - 1, width]
            contexts = torch.cumsum(e, dim=0).unbind(0)  # B - 1: c_B = e_0 + ... + e_{B-1}
            for idx, shape, core, lift, dec_w, dec_b, head_w, head_b, scale in decoders:
                c = torch.stack([contexts[i - 1] for i in idx]).unsqueeze(1)  # [G, 1, width]
                head = torch.bmm(torch.tanh(torch.baddbmm(dec_b, c, dec_w)), head_w)
                if self.monotone:
                    assert kappa is not None and scale is not None
                    mu = _lift(head_b[:, 1:] + kappa * head, lift, core).squeeze(1)
                else:
                    a_mu = _lift(head_b + head.reshape(head_b.shape), lift, core)  # [G, 2, numel]
                    a, mu = a_mu.unbind(1)
                    scale = self.s_min + (self.s_max - self.s_min) * torch.sigmoid(a + self._a0)
                # one addcmul per block, not per group: under vmap a slice of a group's result is
                # strided (the task dimension spans the group); this output is contiguous
                for i, s_i, mu_i in zip(idx, scale.unbind(0), mu.unbind(0)):
                    out[names[i]] = torch.addcmul(mu_i, z[names[i]].reshape(-1), s_i).reshape(shape)
            return {n: out[n] for n in names}

        return to_primal

    def to_dual(self, phi: Mapping[str, Tensor]) -> Params:
        kappa = self._kappa() if self.monotone else None
        out: Params = {}
        context: Tensor | None = None
        for (name, shape), block in zip(self.shapes.items(), self._blocks()):
            scale, mu = self._affine(block, shape, context, kappa)
            z_b = (phi[name] - mu) / scale
            out[name] = z_b
            if block.enc_out is not None:
                e = self._encode(block, z_b)
                context = e if context is None else context + e
        return out

    @torch.no_grad()
    def _scale_extremes(self) -> tuple[float, float]:
        lo, hi = math.inf, -math.inf
        for (_, shape), block in zip(self.shapes.items(), self._blocks()):
            scale, _ = self._affine(block, shape, None, None)
            if not scale.numel():  # a zero-size tensor constrains nothing
                continue
            lo, hi = min(lo, float(scale.min())), max(hi, float(scale.max()))
        return lo, hi

    @torch.no_grad()
    def cross_lipschitz(self) -> float | None:
        r"""The bound :math:`\kappa\Lambda \le c\,s_{\min}` on the shift's cross-block Lipschitz constant.

        ``None`` for ``monotone=False``, where the scale also depends on earlier blocks and no
        global bound exists. Eager only.
        """
        if not self.monotone:
            return None
        return float(self._kappa() * self._shift_bound_squared().clamp(min=0.0).sqrt())

    def monotonicity_modulus(self) -> float | None:
        r""":math:`\min_i s_i - \kappa\Lambda \ge (1-c)\,s_{\min}` if ``monotone``, else ``None``."""
        cross = self.cross_lipschitz()
        if cross is None:
            return None
        return self._scale_extremes()[0] - cross

    def lipschitz_constant(self) -> float | None:
        r""":math:`\max_i s_i + \kappa\Lambda` if ``monotone``, else ``None``."""
        cross = self.cross_lipschitz()
        if cross is None:
            return None
        return self._scale_extremes()[1] + cross

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, monotone={self.monotone}, rank={self.rank}, "
            f"width={self.width}, hidden={self.hidden}, scale_range=({self.s_min}, {self.s_max})"
            + (f", coupling={self.coupling}" if self.monotone else "")
        )
