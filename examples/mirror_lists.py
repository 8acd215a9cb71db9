"""Sine-wave regression with unnamed parameters: ``net(params, x)`` on a list, ``grad`` over it.

The pattern of functorch's MAML regression example: the model is a function of a list of
tensors, the inner step is ``[p - lr * g for ...]`` and tasks are batched with ``vmap``.
Claim: meta-training lowers the query loss after adaptation.
Run from the repository root: ``PYTHONPATH=. python examples/<this file> --steps 300``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

import mirroropt
from mirroropt.integrations import mirror_update


def sample_tasks(gen: torch.Generator, tasks: int = 8, shots: int = 10) -> tuple[torch.Tensor, ...]:
    """Sine tasks y = a sin(x + b): (x_spt, y_spt, x_qry, y_qry), each (tasks, shots, 1)."""
    amplitude = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=gen)
    phase = math.pi * torch.rand(tasks, 1, 1, generator=gen)
    x = 10 * torch.rand(tasks, 2 * shots, 1, generator=gen) - 5
    y = amplitude * torch.sin(x + phase)
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


def net(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = F.relu(F.linear(x, params[0], params[1]))
    x = F.relu(F.linear(x, params[2], params[3]))
    return F.linear(x, params[4], params[5])


def main(steps: int = 300, inner_steps: int = 5, inner_lr: float = 0.01, seed: int = 0) -> dict:
    torch.manual_seed(seed)  # the initialization of the other examples' nn.Sequential
    layers = nn.Sequential(
        nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
    )
    params = list(layers.parameters())
    mirror_map = mirroropt.maps.Diagonal(mirroropt.integrations.named(params))  # names "0".."5"
    opt = torch.optim.Adam([*params, *mirror_map.parameters()], lr=3e-3)

    def inner_loss(params, x, y):
        return F.mse_loss(net(params, x), y)

    def query_loss(x_spt, y_spt, x_qry, y_qry):
        new_params = params
        for _ in range(inner_steps):
            grads = grad(inner_loss)(new_params, x_spt, y_spt)
            new_params = mirror_update(mirror_map, new_params, grads, inner_lr)
        return inner_loss(new_params, x_qry, y_qry)

    def evaluate() -> float:
        tasks = sample_tasks(torch.Generator().manual_seed(1234), tasks=32)
        return float(vmap(query_loss)(*tasks).mean().detach())

    gen = torch.Generator().manual_seed(seed)
    before = evaluate()
    for _ in range(steps):
        opt.zero_grad()
        vmap(query_loss)(*sample_tasks(gen)).mean().backward()
        opt.step()
    after = evaluate()
    print(f"query loss after adaptation: {before:.4f} before meta-training, {after:.4f} after")
    return {"before": before, "after": after}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    main(steps=parser.parse_args().steps)
