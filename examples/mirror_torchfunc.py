"""Sine-wave regression meta-trained with a hand-written torch.func inner loop.

The pattern of PyTorch's own MAML example: ``functional_call``, ``grad``, ``vmap`` over tasks
and a ``{k: p - lr * g}`` update. Claim: meta-training lowers the query loss after adaptation.
Run from the repository root: ``PYTHONPATH=. python examples/<this file> --steps 300``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import mirroropt.integrations


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
    mirror_map = mirroropt.maps.Diagonal(net)  # the learned mirror map: MAML's GD -> mirror descent
    meta_opt = torch.optim.Adam([*net.parameters(), *mirror_map.parameters()], lr=3e-3)

    def compute_loss(params, x, y):
        return F.mse_loss(functional_call(net, params, (x,)), y)

    def query_loss(params, x_spt, y_spt, x_qry, y_qry):
        z = mirroropt.init(mirror_map, params)
        new_params = params
        for _ in range(inner_steps):
            grads = grad(compute_loss)(new_params, x_spt, y_spt)
            z, new_params = mirroropt.integrations.mirror_step(mirror_map, z, grads, inner_lr)
        return compute_loss(new_params, x_qry, y_qry)

    def evaluate() -> float:
        params = dict(net.named_parameters())
        tasks = sample_tasks(torch.Generator().manual_seed(1234), tasks=32)
        return float(vmap(query_loss, in_dims=(None, 0, 0, 0, 0))(params, *tasks).mean().detach())

    gen = torch.Generator().manual_seed(seed)
    before = evaluate()
    for _ in range(steps):
        params = dict(net.named_parameters())
        losses = vmap(query_loss, in_dims=(None, 0, 0, 0, 0))(params, *sample_tasks(gen))
        meta_opt.zero_grad()
        losses.mean().backward()
        meta_opt.step()
    after = evaluate()
    print(f"query loss after adaptation: {before:.4f} before meta-training, {after:.4f} after")
    return {"before": before, "after": after}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    main(steps=parser.parse_args().steps)
