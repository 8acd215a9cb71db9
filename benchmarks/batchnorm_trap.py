"""Measure the torch 2.13 BatchNorm trap that ``mirroropt.map_tasks`` guards against.

Second-order MAML meta-gradient (2 inner steps, 3 tasks, float64) of a small Conv4, computed with
``torch.func.vmap`` over tasks and with a per-task loop, for BatchNorm (training mode) and
GroupNorm, and for BatchNorm through ``mirroropt.map_tasks`` (``vmap`` with BatchNorm's affine
part split out). Prints the relative error of the whole meta-gradient vector.

    python benchmarks/batchnorm_trap.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as tnf
from torch.func import functional_call, grad, vmap

import mirroropt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests package
from tests._models import conv4, image_tasks


def main() -> None:
    for norm in ("batch", "group"):
        model = conv4(norm=norm)
        params = dict(model.named_parameters())
        xs, ys, xq, yq = image_tasks(3, 2)

        def task(x_s, y_s, x_q, y_q, model=model, params=params):
            p = params
            for _ in range(2):
                support = lambda q: tnf.cross_entropy(functional_call(model, q, (x_s,)), y_s)  # noqa: E731
                g = grad(support)(p)
                p = {k: p[k] - 0.1 * g[k] for k in p}
            return tnf.cross_entropy(functional_call(model, p, (x_q,)), y_q)

        by_vmap = torch.autograd.grad(vmap(task)(xs, ys, xq, yq).mean(), list(params.values()))
        by_loop = torch.autograd.grad(
            torch.stack([task(xs[i], ys[i], xq[i], yq[i]) for i in range(3)]).mean(),
            list(params.values()),
        )
        b = torch.cat([t.flatten() for t in by_loop])
        rel = lambda got, b=b: float((torch.cat([t.flatten() for t in got]) - b).norm() / b.norm())  # noqa: E731
        print(f"{norm}norm: relative error of the meta-gradient, vmap vs loop: {rel(by_vmap):.3g}")
        if norm == "batch":
            split = mirroropt.map_tasks(task, xs, ys, xq, yq, model=model, strategy="vmap")
            by_split = torch.autograd.grad(split.mean(), list(params.values()))
            print(
                f"batchnorm: mirroropt.map_tasks (vmap, affine split out) vs loop: {rel(by_split):.3g}"
            )


if __name__ == "__main__":
    main()
