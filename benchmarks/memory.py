"""Peak memory of one meta-iteration: mirroropt's batching modes against TorchOpt's per-task backward.

Issue 10's memory target: the memory-saving mode (``chunk_size`` plus first order) within 1.2× of
the peak of TorchOpt's MAML example (one ``backward()`` per task). Each method runs in a **fresh
process** (same model, data, K and meta-batch as ``peers.py``): one warm-up meta-iteration, then
``--repeats`` measured ones, each the rise of the process's memory above what it held just before
the meta-iteration started, and the table gives the median.

* CPU: the peak resident set size (Linux ``VmHWM``, reset before each measured meta-iteration by
  writing ``5`` to ``/proc/self/clear_refs``) minus the resident size just before it, with glibc's
  mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the
  resident set at once and the peak follows the live tensors. Not affected by other jobs' load.
* CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocated memory before the step.

Methods (``peers.py``'s, plus the batching modes of ``mirroropt.map_tasks``): the hand-written
``torch.func`` vmap and loop, ``higher`` SGD, TorchOpt ``MetaSGD`` (**the reference**),
``mirroropt diagonal`` (default: all tasks in one ``vmap``), ``... chunk 1`` (``chunk_size=1``),
``... FO chunk 1`` (first order too), ``... params chunk 1`` (``params=[model, map]``: each chunk's
meta-gradient is computed inside the forward, so its graph is freed before the next chunk),
``... params loop`` (the same with ``strategy="loop"``: one task at a time, no ``vmap``), and
the integrations (``via higher``, ``via MirrorMAML``, one ``backward()`` per task).

    OMP_NUM_THREADS=1 python benchmarks/memory.py --out benchmarks/results/memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # the methods, shared with the speed benchmark

import mirroropt as mo

REFERENCE = "TorchOpt MetaSGD"

#: The batching modes of ``map_tasks`` with the Diagonal (Meta-SGD) map:
#: name → (strategy, chunk_size, first_order, params).
MODES = {
    "mirroropt diagonal": ("auto", None, False, False),
    "mirroropt diagonal chunk 1": ("auto", 1, False, False),
    "mirroropt diagonal FO chunk 1": ("auto", 1, True, False),
    "mirroropt diagonal params chunk 1": ("auto", 1, False, True),
    "mirroropt diagonal FO params chunk 1": ("auto", 1, True, True),
    "mirroropt diagonal params loop": ("loop", None, False, True),
    "mirroropt diagonal FO params loop": ("loop", None, True, True),
}

METHODS = [
    "torch.func vmap",
    "torch.func loop",
    "higher SGD",
    REFERENCE,
    *MODES,
    "via higher diagonal",
    "via MirrorMAML diagonal",
]


def _kib(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _methods(args: argparse.Namespace, norm: str, device: torch.device) -> dict[str, Any]:
    args.maps, args.integration_maps = ["diagonal"], ["diagonal"]
    methods = peers.build(args, norm, device)
    torch.manual_seed(0)
    model = mo.models.Conv4(
        args.ways, in_channels=args.channels, width=args.width, norm=norm, image_size=args.size
    ).to(device)
    tasks = peers.make_tasks(args, device)
    g_map = mo.maps.Diagonal(model).to(device)
    leaves = [*model.parameters(), *g_map.parameters()]
    for name, (strategy, chunk, first, params) in MODES.items():
        step = peers.functional(
            model, g_map, {}, tasks, args.lr, args.steps,
            use_params=params, strategy=strategy, chunk_size=chunk, first_order=first,
        )  # fmt: skip
        methods[name] = (step, leaves)
    return methods


def child(args: argparse.Namespace) -> None:
    """Measure one method in this (fresh) process; print its peaks in bytes as JSON."""
    device = torch.device(args.device)
    step, leaves = _methods(args, args.norm, device)[args.child]
    cuda = device.type == "cuda"
    peaks = []
    for i in range(args.repeats + 1):  # the first is the warm-up
        for p in leaves:
            p.grad = None
        if cuda:
            base = peers.cuda_peak_reset()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            base = _kib("VmRSS")
        step()
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _kib("VmHWM")
        if i:
            peaks.append(peak - base)
    print(json.dumps(peaks))


def measure(args: argparse.Namespace, norm: str, name: str) -> list[int]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--norm",
        norm,
        "--repeats",
        str(args.repeats),
    ]
    cmd += ["--device", args.device, *_setting_argv(args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{name} ({norm}) failed:\n{done.stderr}")
    return [int(v) for v in json.loads(done.stdout.strip().splitlines()[-1])]


def _setting_argv(args: argparse.Namespace) -> list[str]:
    keys = ("width", "size", "channels", "ways", "shots", "queries", "tasks", "steps", "lr")
    return [x for k in keys for x in (f"--{k}", str(getattr(args, k)))]


def markdown(results: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    norms = list(results)
    head = "| method | " + " | ".join(f"{n}: MiB | {n}: vs TorchOpt" for n in norms) + " |"
    lines = [
        f"Conv4-{args.width}, {args.size}×{args.size}×{args.channels}, {args.ways}-way "
        f"{args.shots}-shot, {args.queries} queries, meta-batch {args.tasks}, K = {args.steps}, "
        f"{args.device}; peak memory of one meta-iteration above the memory held before it "
        f"(median of {args.repeats}, a fresh process per method).",
        "",
        head,
        "|---|" + "---|---|" * len(norms),
    ]
    for name in METHODS:
        cells = []
        for norm in norms:
            row = results[norm][name]
            cells += [f"{row['mib']:.1f}", f"{row['vs_reference']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--norms", nargs="+", choices=["group", "batch"], default=["group", "batch"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--norm", help=argparse.SUPPRESS)
    peers.add_setting_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.child:
        child(args)
        return
    if args.device == "cpu" and not Path("/proc/self/clear_refs").exists():
        parser.error("--device cpu needs Linux /proc/self/clear_refs (peak RSS reset)")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for norm in args.norms:
        peaks = {}
        for name in METHODS:
            peaks[name] = statistics.median(measure(args, norm, name))
            print(f"[{norm}] {name}: {peaks[name] / 2**20:.1f} MiB", file=sys.stderr, flush=True)
        results[norm] = {
            name: {"mib": peak / 2**20, "vs_reference": peak / peaks[REFERENCE]}
            for name, peak in peaks.items()
        }
    table = markdown(results, args)
    print(table)
    if args.out:
        meta = {"torch": torch.__version__, "setting": vars(args) | {"out": str(args.out)}}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
