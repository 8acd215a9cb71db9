"""Before/after for the maps: one map file from a git revision against the working tree's.

Same meta-iteration, model, data and clock as ``benchmarks/peers.py`` (Conv4, K second-order
steps, query loss, ``backward()``; CPU time with one thread), in one process and interleaved
rounds: every round runs the hand-written ``torch.func`` vmap GD floor, and for every map its
version at ``--before`` and the working tree's, through ``mirroropt.adapt`` + ``map_tasks`` and,
for maps with ``to_dual``, through the ``higher`` and ``MirrorMAML`` integrations (with their own
GD, ``higher SGD`` and ``MirrorMAML(Identity)``). Reported per method: the median over rounds of
its time / the floor's time in the same round (with min–max), and the paired median of
after / before. Only the map's own file (``mirroropt/maps/_<map>.py``) is taken from
``--before``; the rest of the library is the working tree's. Both versions get the same weights,
moved off their identity initialization so that the maps do their full work.

``--kernel`` times the maps' own work alone, without the backbone (whose share of a
meta-iteration hides a few percent of map time in this machine's noise): per round and map,
``prepared()`` and K + 1 applications vmapped over the meta-batch (the dual iterates of
``mirroropt.adapt``), then ``backward()`` of their sum of squares into the map's weights and the
iterates; and, for maps with ``to_dual``, the same per task without ``vmap`` (what ``MirrorMAML``
and ``higher`` run for each task). Reported: median times, after / before paired per round, and
the ratio of the fastest rounds.

    nice -n 15 env OMP_NUM_THREADS=1 python benchmarks/maps_ab.py --before b172d2e --rounds 10
    python benchmarks/maps_ab.py --before 9ed81b4 --maps convex_potential --keep-freed-memory
    python benchmarks/maps_ab.py --before 6e3a564 --kernel --rounds 21
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import mirroropt as mo
from mirroropt.models import Conv4

sys.path.insert(0, str(Path(__file__).parent))
import peers

ROOT = Path(__file__).resolve().parent.parent


def old_map_class(name: str, revision: str, folder: Path) -> type[mo.MirrorMap]:
    """The map class ``MAPS[name]`` as its file was at ``revision`` (imported from a copy)."""
    cls = mo.maps.MAPS[name]
    module = sys.modules[cls.__module__].__file__
    assert module is not None
    rel = Path(module).resolve().relative_to(ROOT).as_posix()
    source = subprocess.run(
        ["git", "show", f"{revision}:{rel}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = folder / f"before_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"before_{name}", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return getattr(loaded, cls.__name__)


def interleaved(names: list[str], once: Any, rounds: int, label: str) -> dict[str, list[float]]:
    """One warm-up call per method, then ``rounds`` rounds that time every method once."""
    for name in names:
        once(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names:
            times[name].append(once(name))
        print(f"[{label}] round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return times


def before_and_after(
    name: str, model: nn.Module, args: argparse.Namespace, folder: Path, gen: torch.Generator
) -> tuple[tuple[str, mo.MirrorMap], tuple[str, mo.MirrorMap]]:
    """The map at ``--before`` and the working tree's, with the same weights moved off identity."""
    after = mo.maps.MAPS[name](model)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(args.perturb * torch.randn(p.shape, generator=gen))
    before = old_map_class(name, args.before, folder)(model)
    before.load_state_dict(after.state_dict())
    return ("before", before), ("after", after)


def build(args: argparse.Namespace, norm: str, folder: Path) -> dict[str, tuple[Any, list]]:
    torch.manual_seed(0)
    model = Conv4(
        args.ways, in_channels=args.channels, width=args.width, norm=norm, image_size=args.size
    )
    tasks = peers.make_tasks(args, torch.device("cpu"))
    lr, k, exact = args.lr, args.steps, norm == "batch"
    backbone = list(model.parameters())
    methods: dict[str, tuple[Any, list]] = {
        "torch.func vmap": (peers.torchfunc(model, tasks, lr, k, batched=True), backbone),
    }
    if args.integrations:
        identity = mo.maps.Identity(model)
        methods["higher SGD"] = (peers.higher_sgd(model, tasks, lr, k), backbone)
        methods["via MirrorMAML identity"] = (
            peers.via_mirrormaml(model, identity, {}, tasks, lr, k),
            backbone,
        )
    gen = torch.Generator().manual_seed(3)
    for name in args.maps:
        for tag, g_map in before_and_after(name, model, args, folder, gen):
            z0: dict[str, Tensor] = {}
            if peers.uses_z0(g_map):
                z0 = {n: nn.Parameter(p.detach().clone()) for n, p in model.named_parameters()}
            leaves = [*backbone, *g_map.parameters(), *z0.values()]
            step = peers.functional(model, g_map, z0, tasks, lr, k, use_params=exact)
            methods[f"{tag} mirroropt {name}"] = (step, leaves)
            if args.integrations and not z0:
                methods[f"{tag} via higher {name}"] = (
                    peers.via_higher(model, g_map, tasks, lr, k),
                    leaves,
                )
                methods[f"{tag} via MirrorMAML {name}"] = (
                    peers.via_mirrormaml(model, g_map, z0, tasks, lr, k),
                    leaves,
                )
    return methods


def run(args: argparse.Namespace, norm: str, folder: Path) -> list[str]:
    methods = build(args, norm, folder)

    def once(name: str) -> float:
        step, leaves = methods[name]
        for p in leaves:
            p.grad = None
        start = time.process_time()
        step()
        return time.process_time() - start

    times = interleaved(list(methods), once, args.rounds, norm)

    def ratio(a: str, b: str) -> str:
        values = [x / y for x, y in zip(times[a], times[b])]
        return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"

    lines = [
        f"**{norm} norm** (ratios: median [min–max] over {args.rounds} rounds)",
        "",
        "| method | before: vs vmap GD | after: vs vmap GD | after / before | before: vs own GD "
        "| after: vs own GD |",
        "|---|---|---|---|---|---|",
    ]
    for name in methods:
        if not name.startswith("after "):
            continue
        method = name.removeprefix("after ")
        before = f"before {method}"
        own = (
            "higher SGD"
            if method.startswith("via higher")
            else "via MirrorMAML identity"
            if method.startswith("via MirrorMAML")
            else None
        )
        lines.append(
            f"| {method} | {ratio(before, 'torch.func vmap')} | {ratio(name, 'torch.func vmap')} "
            f"| {ratio(name, before)} | {ratio(before, own) if own else '—'} "
            f"| {ratio(name, own) if own else '—'} |"
        )
    return lines


def kernel_steps(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """The maps' own work per meta-iteration (``--kernel``), before and after, on Conv4's shapes."""
    from torch.func import vmap

    torch.manual_seed(0)
    model = Conv4(args.ways, in_channels=args.channels, width=args.width, image_size=args.size)
    params = {n: p.detach() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    iterates = [  # K + 1 dual iterates per task, [B, *shape]
        {
            n: (p + 0.01 * torch.randn((args.tasks, *p.shape), generator=gen)).requires_grad_()
            for n, p in params.items()
        }
        for _ in range(args.steps + 1)
    ]
    methods: dict[str, Any] = {}
    for name in args.maps:
        for tag, g_map in before_and_after(name, model, args, folder, gen):

            def batched(g_map: mo.MirrorMap = g_map) -> None:
                g = g_map.prepared()
                outs = [vmap(g)(z) for z in iterates]
                sum((o * o).sum() for out in outs for o in out.values()).backward()

            methods[f"{tag} kernel {name}"] = batched
            if g_map.has_to_dual:

                def per_task(g_map: mo.MirrorMap = g_map) -> None:
                    for b in range(args.tasks):
                        g = g_map.prepared()
                        outs = [g({n: t[b] for n, t in z.items()}) for z in iterates]
                        sum((o * o).sum() for out in outs for o in out.values()).backward()

                methods[f"{tag} kernel {name} per task"] = per_task
    return methods


def run_kernels(args: argparse.Namespace, folder: Path) -> list[str]:
    methods = kernel_steps(args, folder)

    def once(name: str) -> float:
        start = time.process_time()
        methods[name]()
        return time.process_time() - start

    times = interleaved(list(methods), once, args.rounds, "kernel")
    lines = [
        f"**The maps' own work** (Conv4-{args.width} shapes, {args.steps + 1} applications, "
        f"meta-batch {args.tasks}; {args.rounds} rounds; after / before: median of per-round "
        "ratios [min–max], and fastest round over fastest round)",
        "",
        "| method | before: ms | after: ms | after / before | best after / best before |",
        "|---|---|---|---|---|",
    ]
    for name in methods:
        if not name.startswith("after "):
            continue
        before = "before " + name.removeprefix("after ")
        values = [a / b for a, b in zip(times[name], times[before])]
        lines.append(
            f"| {name.removeprefix('after ')} | {1e3 * statistics.median(times[before]):.1f} "
            f"| {1e3 * statistics.median(times[name]):.1f} "
            f"| {statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}] "
            f"| {min(times[name]) / min(times[before]):.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the 'before' map files")
    parser.add_argument("--maps", nargs="+", default=["kronecker", "block_iaf", "convex_potential"])
    parser.add_argument(
        "--norms", nargs="+", choices=["group", "batch"], default=["group", "batch"]
    )
    parser.add_argument("--no-integrations", dest="integrations", action="store_false")
    parser.add_argument(
        "--kernel", action="store_true", help="time the maps' own work alone (no backbone)"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--perturb", type=float, default=0.1, help="std of the weight offset")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed memory (mirroropt.workflow.keep_freed_memory, as the CLI does)",
    )
    peers.add_setting_arguments(parser)
    args = parser.parse_args(argv)
    if args.keep_freed_memory and not peers.keep_freed_memory():
        parser.error("--keep-freed-memory: expected glibc on Linux, got another C library")
    args.device = "cpu"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        if args.kernel:
            print("\n".join(run_kernels(args, Path(folder))) + "\n", flush=True)
        for norm in [] if args.kernel else args.norms:
            print("\n".join(run(args, norm, Path(folder))) + "\n", flush=True)
    print(
        f"wall time {time.perf_counter() - start:.0f} s; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}; before = {args.before}"
        + ("; glibc keeps freed memory" if args.keep_freed_memory else "")
    )


if __name__ == "__main__":
    main()
