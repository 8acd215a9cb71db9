"""Diagonal map: Meta-SGD's per-coordinate step sizes as a (convex) mirror map."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, final

import torch
from torch import Tensor, nn

from mirroropt._types import Params
from mirroropt._utils import is_transformed, key_of
from mirroropt.maps._base import MirrorMap

__all__ = ["Diagonal"]


@final
class Diagonal(MirrorMap):
    r"""Diagonal positive-definite map :math:`g(z) = d \odot z` with :math:`d = e^{\rho} > 0`.

    Potential and maps, per coordinate (or per tensor, with ``per="tensor"``):

    .. math::

        h(\phi) = \tfrac12 \textstyle\sum_i \phi_i^2 / d_i, \quad
        \nabla h(\phi) = \phi / d, \quad g(z) = \nabla h^*(z) = d \odot z .

    The dual step :math:`z_{k+1} = z_k - \alpha\nabla L(\phi_k)` is, in the primal,
    :math:`\phi_{k+1} = \phi_k - \alpha\, d \odot \nabla L(\phi_k)`: Meta-SGD with learned
    per-coordinate step sizes :math:`\alpha d`. Strongly monotone with :math:`\mu = \min_i d_i` and
    Lipschitz with :math:`L = \max_i d_i`; a gradient field; linear. Identity at initialization
    (:math:`\rho = 0`), so meta-training starts as MAML.

    Note:
        Meta-SGD (Li et al., 2017) learns an unconstrained vector of step sizes, which may turn
        negative (ascent on some coordinates). Here :math:`d = \exp\rho` is always positive, so
        :math:`h` is strictly convex and the update is a genuine mirror-descent step with a
        Bregman divergence :math:`D_h(\phi,\phi') = \tfrac12\sum_i (\phi_i-\phi'_i)^2/d_i`.

    Args:
        params: the tensors it acts on (a module, a mapping name → tensor/shape, or
            ``named_parameters()``).
        per: ``"coordinate"`` (one scale per entry, Meta-SGD) or ``"tensor"`` (one scale per
            tensor, i.e. learned per-layer step sizes).

    Raises:
        ValueError: if ``per`` is neither ``"coordinate"`` nor ``"tensor"``.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Diagonal
        >>> g = Diagonal({"w": torch.zeros(2)})
        >>> with torch.no_grad():
        ...     _ = g.log_scale["w"].fill_(torch.log(torch.tensor(2.0)))
        >>> g.to_primal({"w": torch.tensor([1.0, -3.0])})["w"].tolist()
        [2.0, -6.0]

    References:
        Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
        arXiv:1707.09835, 2017.
    """

    has_to_dual: ClassVar[bool] = True
    is_gradient_field: ClassVar[bool] = True
    is_linear: ClassVar[bool] = True

    def __init__(self, params: Any, *, per: Literal["coordinate", "tensor"] = "coordinate") -> None:
        super().__init__(params)
        if per not in ("coordinate", "tensor"):
            raise ValueError(f"`per` must be 'coordinate' or 'tensor', got {per!r}.")
        self.per = per
        self.log_scale = nn.ParameterDict(
            {
                key_of(name): nn.Parameter(torch.zeros(shape if per == "coordinate" else ()))
                for name, shape in self.shapes.items()
            }
        )

    def scales(self) -> list[Tensor]:
        r"""The positive scales :math:`d = e^\rho`, one tensor per name, in :attr:`names` order."""
        rhos = [self.log_scale[key_of(n)] for n in self.shapes]
        return (
            list(torch._foreach_exp(rhos)) if not is_transformed(rhos) else [r.exp() for r in rhos]
        )

    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        return self.prepared()(z)

    def prepared(self) -> Callable[[Mapping[str, Tensor]], Params]:
        scales, names = self.scales(), tuple(self.shapes)

        def to_primal(z: Mapping[str, Tensor]) -> Params:
            zs = [z[n] for n in names]
            if is_transformed(zs) or self.per == "tensor":
                return {n: zi * di for n, zi, di in zip(names, zs, scales)}
            return dict(zip(names, torch._foreach_mul(zs, scales)))

        return to_primal

    def to_dual(self, phi: Mapping[str, Tensor]) -> Params:
        return {n: phi[n] / d for n, d in zip(self.shapes, self.scales())}

    def monotonicity_modulus(self) -> float:
        with torch.no_grad():
            return min(float(d.min()) for d in self.scales() if d.numel())

    def lipschitz_constant(self) -> float:
        with torch.no_grad():
            return max(float(d.max()) for d in self.scales() if d.numel())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, per={self.per!r}"
