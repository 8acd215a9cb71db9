"""Where one method's meta-iteration spends its time: ``torch.profiler`` over ``peers.py``'s step.

Builds the same model, tasks and methods as ``benchmarks/peers.py`` (same setting arguments),
runs the named method once to warm up, then profiles ``--steps-profiled`` meta-iterations on one
CPU thread and prints the operators by self CPU time, with the CPU time per meta-iteration of the
method and of the hand-written ``torch.func vmap`` GD floor measured in the same process.

    nice -n 5 env OMP_NUM_THREADS=1 python benchmarks/profile_step.py "mirroropt convex_potential"
    python benchmarks/profile_step.py "via MirrorMAML kronecker" --norm batch --rows 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers


def cpu_seconds(step: peers.Step, repeats: int) -> float:
    start = time.process_time()
    for _ in range(repeats):
        step()
    return (time.process_time() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", help='a row of peers.py\'s table, e.g. "mirroropt block_iaf"')
    parser.add_argument("--norm", choices=["group", "batch"], default="group")
    parser.add_argument("--steps-profiled", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25)
    peers.add_setting_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    name = args.method.split()
    known = sorted(peers.mo.maps.MAPS)
    if name and name[0] in ("mirroropt", "via") and name[-1] not in known:
        parser.error(f"method: expected a map of {known} after {name[0]!r}, got {args.method!r}")
    args.maps = [name[-1]] if name[0] in ("mirroropt", "via") else []
    args.integration_maps = [name[-1]] if name[0] == "via" else []
    methods = peers.build(args, args.norm, torch.device("cpu"))
    if args.method not in methods:
        parser.error(f"method: expected one of {sorted(methods)}, got {args.method!r}")
    step, _ = methods[args.method]
    floor, _ = methods["torch.func vmap"]
    step(), floor()  # warm-up
    per_step = cpu_seconds(step, args.steps_profiled)
    per_floor = cpu_seconds(floor, args.steps_profiled)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps_profiled):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(
        f"{args.method}: {per_step * 1e3:.1f} ms CPU per meta-iteration; torch.func vmap GD "
        f"{per_floor * 1e3:.1f} ms; ratio {per_step / per_floor:.2f} "
        f"({args.norm} norm, {args.steps_profiled} meta-iterations each, one thread)"
    )


if __name__ == "__main__":
    main()
