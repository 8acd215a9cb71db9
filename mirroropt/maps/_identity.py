"""The identity map: mirror descent with h = ½‖φ‖² is gradient descent (MAML)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, final

from torch import Tensor

from mirroropt._types import Params
from mirroropt.maps._base import MirrorMap

__all__ = ["Identity"]


@final
class Identity(MirrorMap):
    r"""Identity inverse mirror map: :math:`h(\phi) = \tfrac12\|\phi\|^2`, :math:`g(z) = z`.

    The update :math:`z_{k+1} = z_k - \alpha\nabla L(g(z_k))` is plain gradient descent, i.e. the
    inner loop of MAML. Strongly monotone and Lipschitz with :math:`\mu = L = 1`; a gradient field;
    linear; has no parameters. ``to_primal`` and ``to_dual`` return the same tensors (no copy).

    Args:
        params: the tensors it acts on (a module, a mapping name → tensor/shape, or
            ``named_parameters()``).

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> g = Identity({"w": torch.zeros(2)})
        >>> g.to_primal({"w": torch.tensor([1.0, -2.0])})["w"]
        tensor([ 1., -2.])

    References:
        Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks", ICML 2017, arXiv:1703.03400.
    """

    has_to_dual: ClassVar[bool] = True
    is_gradient_field: ClassVar[bool] = True
    is_linear: ClassVar[bool] = True

    def __init__(self, params: Any) -> None:
        super().__init__(params)

    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        return dict(z)

    def to_dual(self, phi: Mapping[str, Tensor]) -> Params:
        return dict(phi)

    def monotonicity_modulus(self) -> float:
        return 1.0

    def lipschitz_constant(self) -> float:
        return 1.0
