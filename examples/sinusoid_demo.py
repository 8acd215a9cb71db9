"""Claim: a meta-learned Diagonal map adapts sinusoids better after one step than plain GD (MAML).

Meta-trains MAML (``Identity``) and mirror descent with a learned ``Diagonal`` map (Meta-SGD as a
mirror map) on the MAML paper's sinusoid regression (1-40-40-1 ReLU MLP, 10 shots, one inner step
at α = 0.01), then prints the query MSE after adaptation on held-out tasks for both.

    python examples/sinusoid_demo.py            # about 2 minutes on 2 CPU cores
    python examples/sinusoid_demo.py --iterations 50
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as tnf
from torch import Tensor, nn
from torch.func import functional_call

import mirroropt as mo
from mirroropt.data import SinusoidTaskSampler


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def query_losses(model: nn.Module, g: mo.MirrorMap, batch, *, lr: float, steps: int) -> Tensor:  # noqa: ANN001
    params = dict(model.named_parameters())

    def task(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        support = lambda p: tnf.mse_loss(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
        phi = mo.adapt(g, support, params, lr=lr, steps=steps)
        return tnf.mse_loss(functional_call(model, phi, (x_q,)), y_q)

    return mo.map_tasks(task, batch.x_support, batch.y_support, batch.x_query, batch.y_query, model=model)


def train(map_name: str, *, iterations: int, seed: int, lr: float, steps: int) -> tuple[nn.Module, mo.MirrorMap]:
    torch.manual_seed(seed)
    model = make_model()
    g = mo.maps.MAPS[map_name](model)
    meta_opt = torch.optim.Adam([*model.parameters(), *g.parameters()], lr=1e-3)
    sampler = iter(SinusoidTaskSampler(tasks=25, shots=10, queries=10, seed=seed))
    for _ in _progress(range(iterations), desc=f"meta-train {map_name}"):
        meta_opt.zero_grad()
        query_losses(model, g, next(sampler), lr=lr, steps=steps).mean().backward()
        meta_opt.step()
    return model, g


def _progress(it, desc: str):  # noqa: ANN001, ANN202
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; the demo runs without the workflow extra
        return it
    return tqdm(it, desc=desc, leave=False)


def main(
    iterations: int = 1000, seed: int = 0, lr: float = 0.01, steps: int = 1, test_tasks: int = 500
) -> dict[str, float]:
    """Meta-train both methods; return each one's mean query MSE on ``test_tasks`` held-out tasks."""
    test = next(iter(SinusoidTaskSampler(tasks=test_tasks, shots=10, queries=50, seed=10_000 + seed)))
    results = {}
    for name in ("identity", "diagonal"):
        model, g = train(name, iterations=iterations, seed=seed, lr=lr, steps=steps)
        with torch.no_grad():  # torch.func.grad inside adapt still differentiates the support loss
            results[name] = float(query_losses(model, g, test, lr=lr, steps=steps).mean())
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = main(args.iterations, args.seed)
    print(f"query MSE after 1 step on 500 held-out tasks: MAML (GD) {out['identity']:.3f}  |  "
          f"mirror descent (Diagonal) {out['diagonal']:.3f}")
