"""Small float64 models and task data shared by the core tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    ).double()


def conv4(*, norm: str = "batch", width: int = 4, classes: int = 3, seed: int = 0) -> nn.Module:
    """A Conv4 on 1×16×16 inputs (four conv-norm-relu-pool blocks, then a linear head)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(4):
        norm_layer = (
            nn.BatchNorm2d(width, track_running_stats=False)
            if norm == "batch"
            else nn.GroupNorm(2, width)
        )
        layers += [nn.Conv2d(channels, width, 3, padding=1), norm_layer, nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    layers += [nn.Flatten(), nn.Linear(width, classes)]
    return nn.Sequential(*layers).double()


def regression_tasks(
    tasks: int, shots: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sinusoid-like tasks: (x_support, y_support, x_query, y_query), each [tasks, shots, 1]."""
    gen = torch.Generator().manual_seed(seed)
    amp = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=gen, dtype=torch.float64)
    phase = torch.pi * torch.rand(tasks, 1, 1, generator=gen, dtype=torch.float64)
    xs = 10 * torch.rand(tasks, shots, 1, generator=gen, dtype=torch.float64) - 5
    xq = 10 * torch.rand(tasks, shots, 1, generator=gen, dtype=torch.float64) - 5
    return xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase)


def image_tasks(tasks: int, shots: int, classes: int = 3, seed: int = 0) -> tuple[Tensor, ...]:
    """Random 1×16×16 image tasks: (x_support, y_support, x_query, y_query)."""
    gen = torch.Generator().manual_seed(seed)
    n = shots * classes
    xs = torch.randn(tasks, n, 1, 16, 16, generator=gen, dtype=torch.float64)
    xq = torch.randn(tasks, n, 1, 16, 16, generator=gen, dtype=torch.float64)
    y = torch.arange(classes).repeat_interleave(shots).expand(tasks, n)
    return xs, y, xq, y.clone()
