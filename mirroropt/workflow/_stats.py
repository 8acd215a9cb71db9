"""Mean and 95% confidence interval over evaluation tasks."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor

__all__ = ["mean_ci"]


def mean_ci(values: Tensor, *, confidence: float = 0.95, dim: int = 0) -> tuple[Tensor, Tensor]:
    r"""Mean and half-width of the normal-approximation confidence interval along ``dim``.

    .. math::

        \bar x = \frac1n \sum_i x_i, \qquad
        s = \sqrt{\frac{1}{n-1}\sum_i (x_i - \bar x)^2}, \qquad
        \text{half-width} = z_{(1+c)/2}\, \frac{s}{\sqrt n},

    with :math:`z_{0.975} = 1.959964\ldots` for ``confidence = 0.95``. This is the interval
    reported by the few-shot literature (MAML, Prototypical Networks: ``1.96·std/√n`` over test
    episodes), here with the unbiased (``n − 1``) standard deviation. It is the large-``n``
    limit of Student's t interval: with ``n = 600`` tasks the t quantile is 1.9640, 0.2% wider;
    with ``n = 100`` it is 1.9842, 1.2% wider.

    Args:
        values: per-task values (e.g. accuracies), any floating shape; reduced along ``dim``.
        confidence: coverage in (0, 1).
        dim: the task dimension.

    Returns:
        ``(mean, half_width)``, each ``values`` reduced along ``dim``.

    Raises:
        ValueError: if ``confidence`` is not in (0, 1) or there are fewer than 2 values.
        TypeError: if ``values`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> m, h = mean_ci(torch.tensor([0.0, 1.0, 0.0, 1.0]))
        >>> round(float(m), 3), round(float(h), 3)
        (0.5, 0.566)
    """
    if not isinstance(values, Tensor) or not values.is_floating_point():
        raise TypeError(
            f"`values` must be a floating-point tensor, got "
            f"{values.dtype if isinstance(values, Tensor) else type(values).__name__}."
        )
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"`confidence` must be a float in (0, 1), got {confidence!r}.")
    n = values.shape[dim] if values.dim() else 0
    if n < 2:
        raise ValueError(f"`values` needs at least 2 entries along dim {dim}, got {n}.")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    mean = values.mean(dim)
    std = torch.std(values, dim=dim, correction=1)
    return mean, z * std / math.sqrt(n)
