"""Time and memory of one second-order meta-iteration: every map vs a hand-written torch.func GD.

The baseline is PyTorch's functorch MAML pattern (``functional_call``, ``grad``, ``vmap`` over
tasks, ``{k: p - lr * g}``) in the same process and run. For each map in ``mirroropt.maps.MAPS``
the same meta-iteration runs through ``mirroropt.adapt`` + ``mirroropt.map_tasks``. Reported as
ratios to the baseline (never asserted in tests):

* time: median wall time of a forward + backward meta-iteration over ``--repeats`` runs;
* memory: on CUDA the peak allocated memory of a meta-iteration; on CPU the growth of the
  process's peak resident set during the meta-iterations, each method measured in a fresh
  subprocess (``torch.func`` does not support saved-tensor hooks, so those can't count it).

    python benchmarks/inner_loop.py                          # Conv4-32, 28×28, CPU-sized
    python benchmarks/inner_loop.py --width 64 --size 84 --device cuda   # the H100 setting
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as tnf
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import mirroropt as mo


def conv4(width: int, size: int, ways: int, channels: int) -> nn.Module:
    layers: list[nn.Module] = []
    c = channels
    for _ in range(4):
        layers += [
            nn.Conv2d(c, width, 3, padding=1),
            nn.GroupNorm(min(4, width), width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        c = width
    layers += [nn.Flatten(), nn.Linear(width * (size // 16) ** 2, ways)]
    return nn.Sequential(*layers)


def baseline_step(model: nn.Module, tasks: tuple[Tensor, ...], lr: float, steps: int) -> Tensor:
    params = dict(model.named_parameters())

    def inner(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        p = params
        for _ in range(steps):
            g = grad(lambda q: tnf.cross_entropy(functional_call(model, q, (x_s,)), y_s))(p)
            p = {k: p[k] - lr * g[k] for k in p}
        return tnf.cross_entropy(functional_call(model, p, (x_q,)), y_q)

    return vmap(inner)(*tasks).mean()


def mirror_step(
    model: nn.Module, g_map: mo.MirrorMap, tasks: tuple[Tensor, ...], lr: float, steps: int
) -> Tensor:
    params = dict(model.named_parameters())
    # maps without to_dual start from a (learned) dual point, as MetaMiDA's z0; so does entropic,
    # whose primal domain (positive parameters) the model's initialization is not in.
    start: dict[str, dict[str, Tensor]] = {}
    if not g_map.has_to_dual or isinstance(g_map, mo.maps.Entropic):
        start = {"z": params}

    def inner(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        support = lambda p: tnf.cross_entropy(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
        phi = mo.adapt(
            g_map,
            support,
            None if start else params,
            lr=lr,
            steps=steps,
            check_finite=False,
            **start,
        )
        return tnf.cross_entropy(functional_call(model, phi, (x_q,)), y_q)

    return mo.map_tasks(inner, *tasks, model=model).mean()


def measure(
    run: Callable[[], Tensor], leaves: list[Tensor], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds per meta-iteration and peak memory in bytes (see the module docstring)."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.autograd.grad(run(), leaves)  # warm-up
    times, peak = [], 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        torch.autograd.grad(run(), leaves)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = max(peak, float(torch.cuda.max_memory_allocated()))
        times.append(time.perf_counter() - start)
    if device.type != "cuda":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return statistics.median(times), peak


def run_one(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = conv4(args.width, args.size, args.ways, args.channels).to(device)
    b, n_s, n_q = args.tasks, args.ways * args.shots, args.ways * args.queries
    img = (args.channels, args.size, args.size)
    tasks = (
        torch.randn(b, n_s, *img, device=device),
        torch.arange(args.ways, device=device).repeat_interleave(args.shots).expand(b, n_s),
        torch.randn(b, n_q, *img, device=device),
        torch.arange(args.ways, device=device).repeat_interleave(args.queries).expand(b, n_q),
    )
    leaves = list(model.parameters())
    if args.only == "baseline":
        t, m = measure(
            lambda: baseline_step(model, tasks, 0.01, args.steps), leaves, args.repeats, device
        )
    else:
        g_map = mo.maps.MAPS[args.only](model).to(device)
        leaves += list(g_map.parameters())
        t, m = measure(
            lambda: mirror_step(model, g_map, tasks, 0.01, args.steps), leaves, args.repeats, device
        )
    print(json.dumps({"seconds": t, "bytes": m}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Meta-iteration cost of each map vs hand-written GD."
    )
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--maps", nargs="*", default=sorted(mo.maps.MAPS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        run_one(args)
        return
    forwarded = [a for a in sys.argv[1:]]
    results = {}
    for name in ["baseline", *args.maps]:
        out = subprocess.run(
            [sys.executable, __file__, *forwarded, "--only", name],
            check=True,
            capture_output=True,
            text=True,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results.pop("baseline")
    print(
        f"Conv4-{args.width} {args.size}x{args.size}, {args.ways}-way {args.shots}-shot, {args.queries} "
        f"queries, meta-batch {args.tasks}, K={args.steps}, {args.device}, median of {args.repeats}; "
        f"baseline: hand-written torch.func GD"
    )
    print(f"{'method':<20}{'ms/iter':>10}{'time ratio':>12}{'memory MB':>11}{'mem ratio':>11}")
    print(
        f"{'torch.func GD':<20}{1e3 * base['seconds']:>10.1f}{1.0:>12.3f}{base['bytes'] / 2**20:>11.1f}{1.0:>11.3f}"
    )
    for name, r in results.items():
        print(
            f"{name:<20}{1e3 * r['seconds']:>10.1f}{r['seconds'] / base['seconds']:>12.3f}"
            f"{r['bytes'] / 2**20:>11.1f}{r['bytes'] / max(base['bytes'], 1):>11.3f}"
        )


if __name__ == "__main__":
    main()
