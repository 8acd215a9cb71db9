"""Sine-wave regression meta-trained with a learn2learn-style wrapper: ``clone()``, ``adapt(loss)``.

Claim: meta-training lowers the query loss after adaptation.
Run from the repository root: ``PYTHONPATH=. python examples/<this file> --steps 300``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from mirroropt.integrations import MirrorMAML
from mirroropt.maps import Diagonal


def sample_tasks(gen: torch.Generator, tasks: int = 8, shots: int = 10) -> tuple[torch.Tensor, ...]:
    """Sine tasks y = a sin(x + b): (x_spt, y_spt, x_qry, y_qry), each (tasks, shots, 1)."""
    amplitude = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=gen)
    phase = math.pi * torch.rand(tasks, 1, 1, generator=gen)
    x = 10 * torch.rand(tasks, 2 * shots, 1, generator=gen) - 5
    y = amplitude * torch.sin(x + phase)
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


def main(steps: int = 300, inner_steps: int = 5, inner_lr: float = 0.01, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    maml = MirrorMAML(net, Diagonal(net), lr=inner_lr)  # learned mirror map: GD -> mirror descent
    meta_opt = torch.optim.Adam(maml.parameters(), lr=3e-3)

    def query_loss(x_spt, y_spt, x_qry, y_qry):
        learner = maml.clone()
        for _ in range(inner_steps):
            learner.adapt(F.mse_loss(learner(x_spt), y_spt))
        return F.mse_loss(learner(x_qry), y_qry)

    def evaluate() -> float:
        tasks = sample_tasks(torch.Generator().manual_seed(1234), tasks=32)
        return sum(float(query_loss(*task).detach()) for task in zip(*tasks)) / 32

    gen = torch.Generator().manual_seed(seed)
    before = evaluate()
    for _ in range(steps):
        meta_opt.zero_grad()
        tasks = sample_tasks(gen)
        for task in zip(*tasks):  # gradients of the per-task query losses accumulate
            (query_loss(*task) / len(tasks[0])).backward()
        meta_opt.step()
    after = evaluate()
    print(f"query loss after adaptation: {before:.4f} before meta-training, {after:.4f} after")
    return {"before": before, "after": after}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    main(steps=parser.parse_args().steps)
