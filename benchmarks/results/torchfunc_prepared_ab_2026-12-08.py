"""Ad-hoc A/B (2026-12-08): the floor's vmapped loop with ``mirror_step``, ``prepared=`` made
once per task against ``mirror_step``'s default (``to_primal``: the map's preparation at every
step), interleaved rounds in one process, CPU time, one thread, glibc's default allocator;
Conv4-32 GroupNorm 28×28, 5-way 1-shot, meta-batch 4, K = 5.

    nice -n 5 env OMP_NUM_THREADS=1 python benchmarks/results/torchfunc_prepared_ab_2026-12-08.py 21

(run twice; the output is the .txt beside this file).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as tnf
from torch import Tensor
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import peers

import mirroropt as mo
from mirroropt.integrations import mirror_step
from mirroropt.models import Conv4


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    peers.add_setting_arguments(parser)
    args = parser.parse_args([])
    torch.manual_seed(0)
    model = Conv4(5, in_channels=1, width=32, norm="group", image_size=28)
    tasks = peers.make_tasks(args, torch.device("cpu"))
    params = dict(model.named_parameters())

    def per_step(g_map: mo.MirrorMap) -> peers.Step:
        def inner(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
            p, z = params, mo.init(g_map, params)
            for _ in range(5):
                g = grad(lambda q: tnf.cross_entropy(functional_call(model, q, (x_s,)), y_s))(p)
                z, p = mirror_step(g_map, z, g, 0.01)
            return tnf.cross_entropy(functional_call(model, p, (x_q,)), y_q)

        return lambda: vmap(inner)(*tasks).mean().backward()

    methods = {"floor": peers.torchfunc(model, tasks, 0.01, 5, batched=True)}
    for name in ["identity", "diagonal", "kronecker"]:
        g_map = mo.maps.MAPS[name](model)
        methods[f"{name} hoisted"] = peers.via_torchfunc(model, g_map, tasks, 0.01, 5)
        methods[f"{name} per step"] = per_step(g_map)
    for step in methods.values():
        step()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(int(sys.argv[1])):
        for key, step in methods.items():
            start = time.process_time()
            step()
            times[key].append(time.process_time() - start)
    for key, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(ts, times["floor"]))
        print(f"{key:22s} {statistics.median(ts) * 1e3:7.1f} ms  vs floor {ratio:.3f}")


if __name__ == "__main__":
    main()
