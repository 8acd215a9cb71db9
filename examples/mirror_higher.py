"""Sine-wave regression meta-trained with ``higher``: ``innerloop_ctx`` and ``diffopt.step(loss)``.

Claim: meta-training lowers the query loss after adaptation.
Run from the repository root: ``PYTHONPATH=. python examples/<this file> --steps 300``.
"""

from __future__ import annotations

import argparse
import math

import higher
import torch
import torch.nn.functional as F
from torch import nn

import mirroropt  # registers MirrorDescent with higher when higher is imported


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
    inner_opt = mirroropt.MirrorDescent(net.named_parameters(), mirror_map, lr=inner_lr)
    meta_opt = torch.optim.Adam([*net.parameters(), *mirror_map.parameters()], lr=3e-3)

    def query_loss(x_spt, y_spt, x_qry, y_qry, train=True):
        with higher.innerloop_ctx(
            net, inner_opt, copy_initial_weights=False, track_higher_grads=train
        ) as (fnet, diffopt):
            for _ in range(inner_steps):
                diffopt.step(F.mse_loss(fnet(x_spt), y_spt))
            return F.mse_loss(fnet(x_qry), y_qry)

    def evaluate() -> float:
        tasks = sample_tasks(torch.Generator().manual_seed(1234), tasks=32)
        return sum(float(query_loss(*task, train=False).detach()) for task in zip(*tasks)) / 32

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
