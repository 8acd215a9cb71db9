"""Per-task cost of the learn2learn-style wrapper on an MLP: Kronecker vs Diagonal (issue 10).

``MirrorMAML(model, map, lr).clone()``, K = 5 ``learner.adapt`` steps and a query ``backward()``
per task, on a 1-w-w-1 ReLU MLP; median CPU time (``time.process_time``) of 7 tasks after one
warm-up, in ms.

    OMP_NUM_THREADS=1 python benchmarks/learner_mlp.py --width 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import mirroropt as mo
from mirroropt.integrations import MirrorMAML


def per_task_ms(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    maml = MirrorMAML(model, mo.maps.MAPS[name](model), 0.01, check_finite=False)

    def one() -> None:
        learner = maml.clone()
        for _ in range(k):
            learner.adapt(F.mse_loss(learner(x), y))
        F.mse_loss(learner(x), y).backward()

    one()
    times = []
    for _ in range(7):
        start = time.process_time()
        one()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    w = args.width
    model = nn.Sequential(nn.Linear(1, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1))
    x, y = torch.randn(10, 1), torch.randn(10, 1)
    for name in ("diagonal", "kronecker"):
        print(f"{name}: {per_task_ms(model, name, x, y, args.steps):.1f} ms per task")


if __name__ == "__main__":
    main()
