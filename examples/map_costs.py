"""Claim: every map in the zoo is lean next to its backbone, and its per-step cost is measurable.

Prints, for each map in ``mirroropt.maps.MAPS`` on a Conv4 backbone (default: Conv4-64 for 84×84
RGB, miniImageNet's; ``--size 28 --channels 1`` for the Omniglot-style one): the map's parameter
count and its ratio to the backbone's, the time of ``to_primal`` on the whole parameter dict, and
the time of one inner step (support forward + backward + dual step + ``to_primal``) as a ratio to
the ``Identity`` map (plain gradient descent) in the same run. The MetaMiDA authors' blockIAF for
Conv4-64 had about 28× the backbone's parameters.

    python examples/map_costs.py
    python examples/map_costs.py --size 28 --channels 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as tnf
from torch import Tensor
from torch.func import functional_call

import mirroropt as mo
from mirroropt.models import Conv4

#: Classical maps need their own domain (entropic: positive parameters), so they start from z = 0.
NEEDS_DUAL_START = ("entropic",)


def _median_seconds(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(
    width: int = 64, size: int = 84, channels: int = 3, repeats: int = 5
) -> dict[str, dict[str, float]]:
    """Measure every map; return ``{name: {"params", "ratio", "to_primal_ms", "step_ratio"}}``."""
    torch.manual_seed(0)
    model = Conv4(5, in_channels=channels, width=width, norm="group", image_size=size)  # type: ignore[arg-type]
    backbone = sum(p.numel() for p in model.parameters())
    x = torch.randn(5, channels, size, size)
    y = torch.arange(5)
    phi = {n: p.detach() for n, p in model.named_parameters()}
    loss = lambda p: tnf.cross_entropy(functional_call(model, p, (x,)), y)  # noqa: E731
    results: dict[str, dict[str, float]] = {}
    for name, cls in mo.maps.MAPS.items():
        g = cls(model)
        start: dict[str, Any] = (
            {"z": {n: torch.zeros_like(t) for n, t in phi.items()}}
            if name in NEEDS_DUAL_START or not g.has_to_dual
            else {"phi": phi}
        )
        z = start.get("z") or mo.init(g, phi)
        to_primal = _median_seconds(lambda g=g, z=z: g.to_primal(z), repeats)

        def one_step(g: mo.MirrorMap = g, start: dict[str, Any] = start) -> Tensor:
            return mo.adapt(g, loss, lr=0.01, steps=1, check_finite=False, **start)[next(iter(phi))]

        step = _median_seconds(one_step, repeats)
        params = sum(p.numel() for p in g.parameters())
        results[name] = {
            "params": params,
            "ratio": params / backbone,
            "to_primal_ms": 1e3 * to_primal,
            "step_s": step,
        }
    base = results["identity"]["step_s"]
    print(
        f"Conv4-{width}, {channels}×{size}×{size}, 5-way 1-shot support, backbone {backbone:,} parameters"
    )
    print(f"{'map':<20}{'parameters':>12}{'× backbone':>12}{'to_primal ms':>14}{'step ratio':>12}")
    for name, r in results.items():
        r["step_ratio"] = r.pop("step_s") / base
        print(
            f"{name:<20}{int(r['params']):>12,}{r['ratio']:>12.3f}{r['to_primal_ms']:>14.2f}{r['step_ratio']:>12.2f}"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=84, choices=(28, 84))
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    main(args.width, args.size, args.channels, args.repeats)
