r"""Backbones of the few-shot benchmarks: the Conv4 classifier and the sinusoid MLP.

Both are plain ``nn.Module``\ s; meta-learning calls them with
:func:`torch.func.functional_call` on adapted parameters, so they hold no state beyond their
parameters (BatchNorm uses batch statistics only, as in MAML's reference code).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["Conv4", "SinusoidMLP"]


class Conv4(nn.Module):
    r"""The four-block convolutional classifier of MAML and most few-shot papers.

    Each block is ``conv3x3(width) → norm → ReLU → maxpool2``; a linear head maps the flattened
    features to ``n_way`` logits. With 28×28 inputs the feature map after four blocks is 1×1
    (``width`` features, the Omniglot/FontGlot setting); with 84×84 it is 5×5 (``25·width``, the
    miniImageNet setting).

    ``norm="batch"`` is BatchNorm with ``track_running_stats=False``: every call normalizes with
    the statistics of its own batch (transductive, as in MAML's code), so the module has no
    buffers to mutate. A plain ``torch.func.vmap`` through batch statistics gives wrong
    second-order gradients on torch 2.13; :func:`mirroropt.map_tasks` vmaps it exactly (its
    affine part split out). ``norm="group"`` (GroupNorm) is per-sample and ``vmap``-exact as is.

    Args:
        n_way: number of classes (output logits), ≥ 2.
        in_channels: image channels (1 for character sets, 3 for miniImageNet).
        width: channels of every conv layer (64 in MAML; 32 fits CPUs).
        norm: ``"batch"`` or ``"group"``.
        image_size: 28 or 84 (square inputs).
        groups: groups of GroupNorm (must divide ``width``).

    Raises:
        ValueError: on a non-positive ``width``/``in_channels``, ``n_way < 2``, an unknown
            ``norm`` or ``image_size``, or ``groups`` not dividing ``width``.

    Example:
        >>> import torch
        >>> net = Conv4(5, width=8)
        >>> net(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 5])

    References:
        Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016, arXiv:1606.04080.
        Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017, arXiv:1703.03400.
    """

    def __init__(
        self,
        n_way: int,
        *,
        in_channels: int = 1,
        width: int = 32,
        norm: Literal["batch", "group"] = "batch",
        image_size: Literal[28, 84] = 28,
        groups: int = 4,
    ) -> None:
        super().__init__()
        if isinstance(n_way, bool) or not isinstance(n_way, int) or n_way < 2:
            raise ValueError(f"`n_way` must be an int ≥ 2, got {n_way!r}.")
        for arg, value in (("in_channels", in_channels), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, got {value!r}.")
        if norm not in ("batch", "group"):
            raise ValueError(f"`norm` must be 'batch' or 'group', got {norm!r}.")
        if image_size not in (28, 84):
            raise ValueError(f"`image_size` must be 28 or 84, got {image_size!r}.")
        if norm == "group" and width % groups != 0:
            raise ValueError(f"`groups` ({groups}) must divide `width` ({width}).")
        self.n_way, self.norm, self.image_size = n_way, norm, image_size
        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            blocks += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width, track_running_stats=False)
                if norm == "batch"
                else nn.GroupNorm(groups, width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*blocks)
        side = 1 if image_size == 28 else 5
        self.head = nn.Linear(width * side * side, n_way)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, n_way]`` of images ``[B, C, H, W]``."""
        return self.head(torch.flatten(self.features(x), 1))


class SinusoidMLP(nn.Module):
    r"""The MAML sinusoid regressor: ``1 → hidden → hidden → 1`` with ReLU (1-40-40-1).

    Args:
        hidden: width of both hidden layers (40 in MAML).

    Raises:
        ValueError: if ``hidden`` is not a positive int.

    Example:
        >>> import torch
        >>> SinusoidMLP()(torch.zeros(7, 1)).shape
        torch.Size([7, 1])

    References:
        Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017, arXiv:1703.03400, §5.1.
    """

    def __init__(self, hidden: int = 40) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"`hidden` must be a positive int, got {hidden!r}.")
        self.net = nn.Sequential(
            nn.Linear(1, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Predictions ``[B, 1]`` of inputs ``[B, 1]``."""
        return self.net(x)
