"""mirroropt against its peers: one meta-iteration, same model, data, K and meta-batch.

One process, interleaved rounds: every round runs each method once, in the same order, and each
method's time is divided by the hand-written ``torch.func`` vmap GD baseline's time *in the same
round*; the table reports the median of those per-round ratios and the median time. On CPU the
clock is the process's CPU time (run with one thread), which other jobs on a loaded machine
barely move; on CUDA it is wall time between synchronizations. A meta-iteration is: adapt on the support set of every task for
K second-order steps, query loss, ``backward()`` into the meta-parameters' ``.grad``.

Methods:

* ``torch.func vmap`` / ``torch.func loop``: hand-written MAML (``functional_call``, ``grad``,
  ``{k: p - lr * g}``), vmapped over tasks or looped (with BatchNorm the vmapped one has *wrong*
  meta-gradients on torch 2.13; it is timed as the floor only);
* ``higher SGD``: ``higher.innerloop_ctx`` with ``torch.optim.SGD``, one backward per task;
* ``TorchOpt MetaSGD``: ``torchopt.MetaSGD`` with ``extract/recover_state_dict``, one backward
  per task (TorchOpt's MAML example);
* ``mirroropt <map>``: ``mirroropt.adapt`` + ``mirroropt.map_tasks`` (with BatchNorm: its exact
  ``vmap``, the affine part split out; ``<map> loop``: ``strategy="loop"``, one task at a time,
  for identity with BatchNorm and every ``--integration-maps`` map (the integrations' work
  without their shells: their "vs map loop" ratio is the shell's own cost); ``identity
  params``: ``params=[model, map, z0]``, the per-task meta-gradients inside ``vmap``;
  ``diagonal params loop``: ``params`` with ``strategy="loop"``, the memory-saving mode);
* ``via higher <map>``: ``higher.innerloop_ctx(model, mirroropt.integrations.higher.MirrorDescent)``;
* ``via MirrorMAML <map>``: ``MirrorMAML(model, map).clone()`` + ``learner.adapt`` per task;
* ``via TorchOpt <map>``: ``mirroropt.integrations.torchopt.MetaMirrorDescent`` in place of
  ``torchopt.MetaSGD`` in the same loop (``extract/recover_state_dict``), maps with ``to_dual``;
* ``via torch.func <map>``: the floor's vmapped loop with ``mirroropt.integrations.mirror_step``
  (``prepared=`` once per task) as its update, GroupNorm only (its own GD is the floor; its "map
  loop" column is ``mirroropt <map>``, the same map through ``adapt`` vmapped).

Maps without ``to_dual`` (and the entropic map, whose domain the weights are not in) start from a
learned dual point z0 where the front end allows it; ``higher`` cannot (``n/a``).

With ``--isolate`` every row runs in a fresh process of its own, with the floor and the rows
its columns are relative to (an integration's own GD and map loop): glibc's page faults depend
on the heap's history, which in one process is every other method's too.

    nice -n 5 env OMP_NUM_THREADS=1 python benchmarks/peers.py --rounds 5 --out peers_cpu.json
    python benchmarks/peers.py --device cuda --width 64 --size 84 --channels 3   # see gpu.sh
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as tnf
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import mirroropt as mo
from mirroropt.models import Conv4
from mirroropt.workflow import keep_freed_memory

Tasks = tuple[Tensor, Tensor, Tensor, Tensor]
Step = Callable[[], None]

#: The floor every ratio is taken against.
FLOOR = "torch.func vmap"


def make_tasks(args: argparse.Namespace, device: torch.device) -> Tasks:
    gen = torch.Generator().manual_seed(0)
    b, n_s, n_q = args.tasks, args.ways * args.shots, args.ways * args.queries
    img = (args.channels, args.size, args.size)
    xs = torch.randn(b, n_s, *img, generator=gen).to(device)
    xq = torch.randn(b, n_q, *img, generator=gen).to(device)
    ys = torch.arange(args.ways).repeat_interleave(args.shots).expand(b, n_s).to(device)
    yq = torch.arange(args.ways).repeat_interleave(args.queries).expand(b, n_q).to(device)
    return xs, ys, xq, yq


def uses_z0(g_map: mo.MirrorMap) -> bool:
    return not g_map.has_to_dual or isinstance(g_map, mo.maps.Entropic)


# --------------------------------------------------------------------------------------------------
# peers


def torchfunc(model: nn.Module, tasks: Tasks, lr: float, steps: int, *, batched: bool) -> Step:
    params = dict(model.named_parameters())

    def inner(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        p = params
        for _ in range(steps):
            g = grad(lambda q: tnf.cross_entropy(functional_call(model, q, (x_s,)), y_s))(p)
            p = {k: p[k] - lr * g[k] for k in p}
        return tnf.cross_entropy(functional_call(model, p, (x_q,)), y_q)

    def step() -> None:
        if batched:
            losses = vmap(inner)(*tasks)
        else:
            losses = torch.stack([inner(*(t[i] for t in tasks)) for i in range(len(tasks[0]))])
        losses.mean().backward()

    return step


def higher_sgd(model: nn.Module, tasks: Tasks, lr: float, steps: int) -> Step:
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=lr)
    b = len(tasks[0])

    def step() -> None:
        for i in range(b):
            x_s, y_s, x_q, y_q = (t[i] for t in tasks)
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fm, opt):
                for _ in range(steps):
                    opt.step(tnf.cross_entropy(fm(x_s), y_s))
                (tnf.cross_entropy(fm(x_q), y_q) / b).backward()

    return step


def torchopt_loop(model: nn.Module, inner_opt: Any, tasks: Tasks, steps: int) -> Step:
    """TorchOpt's MAML loop: adapt in place, one backward per task, recover the states."""
    import torchopt

    b = len(tasks[0])

    def step() -> None:
        net_state = torchopt.extract_state_dict(model)
        opt_state = torchopt.extract_state_dict(inner_opt)
        for i in range(b):
            x_s, y_s, x_q, y_q = (t[i] for t in tasks)
            for _ in range(steps):
                inner_opt.step(tnf.cross_entropy(model(x_s), y_s))
            (tnf.cross_entropy(model(x_q), y_q) / b).backward()
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner_opt, opt_state)

    return step


def torchopt_metasgd(model: nn.Module, tasks: Tasks, lr: float, steps: int) -> Step:
    import torchopt

    return torchopt_loop(model, torchopt.MetaSGD(model, lr=lr), tasks, steps)


# --------------------------------------------------------------------------------------------------
# mirroropt


def functional(
    model: nn.Module,
    g_map: mo.MirrorMap,
    z0: dict[str, Tensor],
    tasks: Tasks,
    lr: float,
    steps: int,
    *,
    use_params: bool = False,
    strategy: str = "auto",
    chunk_size: int | None = None,
    first_order: bool = False,
) -> Step:
    params = dict(model.named_parameters())
    meta: list[Any] = [model, g_map, z0] if use_params else []

    def inner(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        support = lambda p: tnf.cross_entropy(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
        start: dict[str, Any] = {"z": z0} if z0 else {"phi": params}
        phi = mo.adapt(
            g_map, support, lr=lr, steps=steps, check_finite=False, first_order=first_order, **start
        )
        return tnf.cross_entropy(functional_call(model, phi, (x_q,)), y_q)

    def step() -> None:
        losses = mo.map_tasks(
            inner,
            *tasks,
            model=model,
            strategy=strategy,  # type: ignore[arg-type]
            params=meta or None,
            chunk_size=chunk_size,
        )
        losses.mean().backward()

    return step


def via_higher(model: nn.Module, g_map: mo.MirrorMap, tasks: Tasks, lr: float, steps: int) -> Step:
    import higher

    from mirroropt.integrations.higher import MirrorDescent

    inner_opt = MirrorDescent(model.named_parameters(), g_map, lr=lr, check_finite=False)
    b = len(tasks[0])

    def step() -> None:
        for i in range(b):
            x_s, y_s, x_q, y_q = (t[i] for t in tasks)
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fm, opt):
                for _ in range(steps):
                    opt.step(tnf.cross_entropy(fm(x_s), y_s))
                (tnf.cross_entropy(fm(x_q), y_q) / b).backward()

    return step


def via_torchfunc(
    model: nn.Module, g_map: mo.MirrorMap, tasks: Tasks, lr: float, steps: int
) -> Step:
    """The floor's vmapped loop with ``mirror_step`` (map prepared once per task) as its update."""
    from mirroropt.integrations import mirror_step

    params = dict(model.named_parameters())

    def inner(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        prepared = g_map.prepared()  # once per inner loop
        p, z = params, mo.init(g_map, params)
        for _ in range(steps):
            g = grad(lambda q: tnf.cross_entropy(functional_call(model, q, (x_s,)), y_s))(p)
            z, p = mirror_step(g_map, z, g, lr, prepared=prepared)
        return tnf.cross_entropy(functional_call(model, p, (x_q,)), y_q)

    def step() -> None:
        vmap(inner)(*tasks).mean().backward()

    return step


def via_torchopt(
    model: nn.Module, g_map: mo.MirrorMap, tasks: Tasks, lr: float, steps: int
) -> Step:
    """TorchOpt's loop with ``MetaMirrorDescent`` in place of ``torchopt.MetaSGD``."""
    from mirroropt.integrations.torchopt import MetaMirrorDescent

    return torchopt_loop(
        model, MetaMirrorDescent(model, g_map, lr, check_finite=False), tasks, steps
    )


def via_mirrormaml(
    model: nn.Module,
    g_map: mo.MirrorMap,
    z0: dict[str, Tensor],
    tasks: Tasks,
    lr: float,
    steps: int,
) -> Step:
    from mirroropt.integrations import MirrorMAML

    maml = MirrorMAML(model, g_map, lr, check_finite=False)
    b = len(tasks[0])

    def step() -> None:
        for i in range(b):
            x_s, y_s, x_q, y_q = (t[i] for t in tasks)
            learner = maml.clone(z=z0 or None)
            for _ in range(steps):
                learner.adapt(tnf.cross_entropy(learner(x_s), y_s))
            (tnf.cross_entropy(learner(x_q), y_q) / b).backward()

    return step


# --------------------------------------------------------------------------------------------------
# driver


def build(
    args: argparse.Namespace, norm: str, device: torch.device
) -> dict[str, tuple[Step, list]]:
    torch.manual_seed(0)
    model = Conv4(
        args.ways, in_channels=args.channels, width=args.width, norm=norm, image_size=args.size
    ).to(device)
    tasks = make_tasks(args, device)
    lr, k = args.lr, args.steps
    backbone = list(model.parameters())
    methods: dict[str, tuple[Step, list]] = {
        FLOOR: (torchfunc(model, tasks, lr, k, batched=True), backbone),
        "torch.func loop": (torchfunc(model, tasks, lr, k, batched=False), backbone),
        "higher SGD": (higher_sgd(model, tasks, lr, k), backbone),
        "TorchOpt MetaSGD": (torchopt_metasgd(model, tasks, lr, k), backbone),
    }
    batch = norm == "batch"
    for name in args.maps:
        g_map = mo.maps.MAPS[name](model).to(device)
        z0: dict[str, Tensor] = {}
        if uses_z0(g_map):
            z0 = {n: nn.Parameter(p.detach().clone()) for n, p in model.named_parameters()}
        leaves = [*backbone, *g_map.parameters(), *z0.values()]
        methods[f"mirroropt {name}"] = (
            functional(model, g_map, z0, tasks, lr, k),
            leaves,
        )
        if name in args.integration_maps or (name == "identity" and batch):
            # the same map one task at a time: the integrations' work without their shells
            methods[f"mirroropt {name} loop"] = (
                functional(model, g_map, z0, tasks, lr, k, strategy="loop"),
                leaves,
            )
        if name == "identity" and batch:
            methods["mirroropt identity params"] = (
                functional(model, g_map, z0, tasks, lr, k, use_params=True),
                leaves,
            )
        if name in args.integration_maps:
            if not z0:
                methods[f"via higher {name}"] = (via_higher(model, g_map, tasks, lr, k), leaves)
                methods[f"via TorchOpt {name}"] = (via_torchopt(model, g_map, tasks, lr, k), leaves)
                if not batch:  # vmap over BatchNorm: wrong meta-gradients on torch 2.13
                    methods[f"via torch.func {name}"] = (
                        via_torchfunc(model, g_map, tasks, lr, k),
                        leaves,
                    )
            methods[f"via MirrorMAML {name}"] = (
                via_mirrormaml(model, g_map, z0, tasks, lr, k),
                leaves,
            )
        if name == "diagonal":
            methods["mirroropt diagonal FO chunk 1"] = (
                functional(model, g_map, z0, tasks, lr, k, chunk_size=1, first_order=True),
                leaves,
            )
            methods["mirroropt diagonal params loop"] = (  # the memory-saving mode
                functional(model, g_map, z0, tasks, lr, k, use_params=True, strategy="loop"),
                leaves,
            )
    return methods


def minor_faults() -> int:
    """This process's minor page faults so far (memory the kernel handed over afresh)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def cuda_peak_reset() -> int:
    """Synchronize, reset CUDA's peak-memory counter and return the memory allocated now."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def own_gd_of(name: str) -> str | None:
    """An integration's own GD: ``higher SGD``, ``TorchOpt MetaSGD``, MirrorMAML(Identity), or
    for ``mirror_step`` in a hand-written ``torch.func`` loop that loop itself (the floor)."""
    if name.startswith("via torch.func"):
        return FLOOR
    if name.startswith("via higher"):
        return "higher SGD"
    if name.startswith("via TorchOpt"):
        return "TorchOpt MetaSGD"
    if name.startswith("via MirrorMAML"):
        return "via MirrorMAML identity"
    return None


def map_loop_of(name: str) -> str | None:
    """An integration's map run by ``mirroropt.adapt`` one task at a time (no shell)."""
    if name.startswith("via torch.func "):  # vmapped: the map through mirroropt.adapt, vmapped
        return f"mirroropt {name.rsplit(' ', 1)[-1]}"
    if not name.startswith(("via higher ", "via MirrorMAML ", "via TorchOpt ")):
        return None
    return f"mirroropt {name.rsplit(' ', 1)[-1]} loop"


def run(args: argparse.Namespace, norm: str) -> dict[str, Any]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    # CPU: process CPU time (one thread), which other jobs on a loaded machine barely move;
    # CUDA: wall time between synchronizations.
    clock = time.perf_counter if cuda else time.process_time
    methods = build(args, norm, device)
    if args.methods:  # the floor and the named rows only (a fresh process per row: its own heap)
        keep = {FLOOR, *args.methods}
        methods = {n: m for n, m in methods.items() if n in keep}
    names = list(methods)

    def once(name: str) -> tuple[float, float | None, int]:
        """One meta-iteration: its time, peak CUDA memory (None on CPU) and minor page faults."""
        step, leaves = methods[name]
        for p in leaves:
            p.grad = None
        if cuda:
            base = cuda_peak_reset()
        start, faulted = clock(), minor_faults()
        step()
        if cuda:
            torch.cuda.synchronize()
        seconds, faulted = clock() - start, minor_faults() - faulted
        peak = float(torch.cuda.max_memory_allocated() - base) if cuda else None
        return seconds, peak, faulted

    for name in names:  # warm-up (and a check that every method runs)
        once(name)
    print(f"[{norm}] warmed up {len(names)} methods", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float | None] = {}
    faults: dict[str, list[int]] = {n: [] for n in names}
    for _ in range(args.rounds):
        row = {}
        for name in names:
            row[name], peaks[name], fault_count = once(name)
            faults[name].append(fault_count)
        for name in names:
            times[name].append(row[name])
            ratios[name].append(row[name] / row[FLOOR])
        print(f"[{norm}] round {len(times[names[0]])}/{args.rounds}", file=sys.stderr, flush=True)

    def own_gd(name: str) -> str | None:
        ref = own_gd_of(name)
        return ref if ref in times else None

    def map_loop(name: str) -> str | None:
        ref = map_loop_of(name)
        return ref if ref in times else None

    def paired(name: str, ref: str | None) -> float | None:
        """Median over rounds of ``name``'s time / ``ref``'s in the same round."""
        if ref is None:
            return None
        return statistics.median(a / b for a, b in zip(times[name], times[ref]))

    def best(name: str, ref: str | None) -> float | None:
        """``name``'s fastest round over ``ref``'s fastest round."""
        return None if ref is None else min(times[name]) / min(times[ref])

    return {
        name: {
            "vs_own_gd": paired(name, own_gd(name)),
            "vs_own_gd_best": best(name, own_gd(name)),
            # the shell's own cost: against the same map through mirroropt.adapt, task by task
            "vs_map_loop": paired(name, map_loop(name)),
            "vs_map_loop_best": best(name, map_loop(name)),
            "ms": 1e3 * statistics.median(times[name]),
            "ratio": statistics.median(ratios[name]),
            # best of rounds over the floor's best: interference only ever adds time, so on a
            # machine shared with other tenants the minima are the steadier estimate
            "ratio_best": best(name, FLOOR),
            "ratio_min": min(ratios[name]),
            "ratio_max": max(ratios[name]),
            "peak_mb": None if peaks[name] is None else peaks[name] / 2**20,  # type: ignore[operator]
            "minor_faults": statistics.median(faults[name]),  # per meta-iteration (getrusage)
        }
        for name in names
    }


#: The setting's arguments (``add_setting_arguments``), handed on to ``--isolate``'s processes.
SETTING = ("width", "size", "channels", "ways", "shots", "queries", "tasks", "steps", "lr")


def isolated_groups(names: list[str], available: list[str] | None = None) -> list[list[str]]:
    """``--isolate``'s processes: each row but the floor with the references its columns need.

    The references are taken from ``available`` (every row the setting builds; default
    ``names``), so that ``--methods`` with an integration still times its own GD and map loop.
    """
    available = names if available is None else available
    groups = []
    for name in names:
        if name == FLOOR:
            continue
        refs = [
            r
            for r in (own_gd_of(name), map_loop_of(name))
            if r in available and r not in (name, FLOOR)  # every process times the floor
        ]
        groups.append([name, *dict.fromkeys(refs)])
    return groups


def child_argv(args: argparse.Namespace, norm: str, methods: list[str], out: str) -> list[str]:
    """The command line of one ``--isolate`` process: this run's setting, one norm, ``methods``."""
    argv = ["--device", args.device, "--rounds", str(args.rounds), "--norms", norm]
    argv += ["--maps", *args.maps, "--integration-maps", *args.integration_maps]
    for key in SETTING:
        argv += [f"--{key}", str(getattr(args, key))]
    if args.keep_large_blocks:
        argv.append("--keep-large-blocks")
    elif args.keep_freed_memory:
        argv.append("--keep-freed-memory")
    return [*argv, "--methods", *methods, "--out", out]


def run_child(argv: list[str]) -> None:
    """Run this script with ``argv`` in a fresh Python process (its own heap).

    Its table is not printed (its rows arrive through its ``--out`` file); its progress is.
    """
    script = os.path.abspath(__file__)
    subprocess.run([sys.executable, script, *argv], check=True, stdout=subprocess.DEVNULL)


def run_isolated(args: argparse.Namespace, norm: str) -> tuple[dict[str, Any], int]:
    """Every row in a process of its own (:func:`isolated_groups`); the rows and the peak RSS.

    The floor's row summarizes the processes' floors: ratios 1, the medians of their ms and
    faults.
    """
    available = list(build(args, norm, torch.device("cpu")))  # the row names: cheap on the CPU
    names = [n for n in available if not args.methods or n in {FLOOR, *args.methods}]
    rows: dict[str, Any] = {}
    floors: list[dict[str, Any]] = []
    peak_rss = 0
    groups = isolated_groups(names, available)
    if not groups:
        raise SystemExit("--isolate: expected a row besides the floor to time, got none")
    with tempfile.TemporaryDirectory() as tmp:
        for i, group in enumerate(groups):
            out = os.path.join(tmp, f"{i}.json")
            print(f"[{norm}] process {i + 1}: {group}", file=sys.stderr, flush=True)
            run_child(child_argv(args, norm, group, out))
            with open(out) as f:
                child = json.load(f)
            rows[group[0]] = child["results"][norm][group[0]]
            floors.append(child["results"][norm][FLOOR])
            peak_rss = max(peak_rss, child["peak_rss_bytes"])
    floor = dict(floors[0])
    for key in ("ms", "minor_faults"):
        floor[key] = statistics.median(f[key] for f in floors)
    rows[FLOOR] = floor
    return {n: rows[n] for n in names if n in rows}, peak_rss


def markdown(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    norms = list(results)
    lines = [
        f"Conv4-{args.width}, {args.size}×{args.size}×{args.channels}, {args.ways}-way "
        f"{args.shots}-shot, {args.queries} queries, meta-batch {args.tasks}, K = {args.steps}, "
        f"{args.device}, {args.rounds} interleaved rounds; ratio = median over rounds of the "
        f"method's time / hand-written torch.func vmap GD's time in the same round; best = the "
        f"method's fastest round / the floor's fastest round; ms = median "
        f"{'CPU' if args.device == 'cpu' else 'wall'} time per meta-iteration; "
        + (
            "faults/it = median minor page faults per meta-iteration"
            if args.device == "cpu"
            else "peak MB = peak CUDA memory allocated during one meta-iteration"
        )
        + (
            "; glibc keeps freed memory, blocks of 32 MiB or more too (`--keep-large-blocks`)."
            if args.keep_large_blocks
            else "; glibc keeps freed memory (`--keep-freed-memory`)."
            if args.keep_freed_memory
            else "."
        )
        + (
            " One fresh process per row (`--isolate`), with the floor and the rows its columns "
            "are relative to: a row's ratios are against its own process's floor; the floor's "
            "ms and faults/it are medians over the processes."
            if getattr(args, "isolate", False)
            else ""
        ),
        "",
        "| method | "
        + " | ".join(f"{n}: ratio [min–max] | {n}: best | {n}: ms" for n in norms)
        + " | "
        + " | ".join(f"{n}: {'faults/it' if args.device == 'cpu' else 'peak MB'}" for n in norms)
        + " |",
        "|---" * (1 + 4 * len(norms)) + "|",
    ]
    all_names = sorted(dict.fromkeys(n for r in results.values() for n in r), key=_order)
    for name in all_names:
        cells = []
        for norm in norms:
            r = results[norm].get(name)
            cells += (
                [
                    f"{r['ratio']:.2f} [{r['ratio_min']:.2f}–{r['ratio_max']:.2f}]",
                    f"{r['ratio_best']:.2f}",
                    f"{r['ms']:.0f}",
                ]
                if r
                else ["—", "—", "—"]
            )
        for norm in norms:  # CPU: minor page faults per meta-iteration; CUDA: peak memory
            r = results[norm].get(name)
            value = None if not r else r["minor_faults" if args.device == "cpu" else "peak_mb"]
            cells.append("—" if value is None else f"{value:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    own = [n for n in all_names if any(results[m].get(n, {}).get("vs_own_gd") for m in norms)]
    if own:
        lines += [
            "",
            "Integrations against their own gradient descent (median per-round time ratio to "
            "`higher SGD` for `via higher`, to `via MirrorMAML identity` for `via MirrorMAML`, "
            "to `TorchOpt MetaSGD` for `via TorchOpt`, to the floor for `via torch.func`; "
            "best: fastest round over its fastest round; vs map loop: against the same map "
            "through `mirroropt.adapt` one task at a time, `mirroropt <map> loop` (for "
            "`via torch.func`, vmapped: `mirroropt <map>`) — the shell's own cost):",
            "",
            "| method | "
            + " | ".join(
                f"{n}: vs own GD | {n}: best | {n}: vs map loop | {n}: best" for n in norms
            )
            + " |",
            "|---" * (1 + 4 * len(norms)) + "|",
        ]
        keys = ("vs_own_gd", "vs_own_gd_best", "vs_map_loop", "vs_map_loop_best")
        for name in own:
            cells = []
            for norm in norms:
                r = results[norm].get(name, {})
                for key in keys:
                    cells.append("—" if r.get(key) is None else f"{r[key]:.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _order(name: str) -> tuple[int, str]:
    groups = (
        "torch.func",
        "higher SGD",
        "TorchOpt",
        "mirroropt",
        "via higher",
        "via MirrorMAML",
        "via TorchOpt",
        "via torch.func",
    )
    return next(i for i, g in enumerate(groups) if name.startswith(g)), name


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """The meta-iteration's setting (model, episode, K, α), shared with ``maps_ab.py``."""
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--size", type=int, choices=[28, 84], default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    add_setting_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--norms", nargs="+", choices=["batch", "group"], default=["group", "batch"]
    )
    parser.add_argument(
        "--maps", nargs="*", choices=sorted(mo.maps.MAPS), default=sorted(mo.maps.MAPS)
    )
    parser.add_argument(
        "--integration-maps",
        nargs="*",
        choices=sorted(mo.maps.MAPS),
        default=["identity", "diagonal", "kronecker"],
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        help='time only these rows (and the floor), e.g. "mirroropt kronecker" "higher SGD"',
    )
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed memory (mirroropt.workflow.keep_freed_memory, as the CLI does)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="run every row in a fresh process of its own (with the floor and its references)",
    )
    parser.add_argument(
        "--keep-large-blocks",
        action="store_true",
        help="--keep-freed-memory, and blocks of 32 MiB or more too "
        "(keep_freed_memory(large_blocks=True))",
    )
    args = parser.parse_args(argv)
    if args.methods:
        known = {n for norm in args.norms for n in build(args, norm, torch.device("cpu"))}
        unknown = sorted(set(args.methods) - known)
        if unknown:
            parser.error(f"--methods: expected rows of {sorted(known)}, got {unknown}")
    if args.keep_large_blocks:
        args.keep_freed_memory = True
    if args.keep_freed_memory and not keep_freed_memory(large_blocks=args.keep_large_blocks):
        parser.error("--keep-freed-memory: expected glibc on Linux, got another C library")
    start = time.perf_counter()
    if args.isolate:
        isolated = {norm: run_isolated(args, norm) for norm in args.norms}
        results = {norm: rows for norm, (rows, _) in isolated.items()}
        peak_rss = max(rss for _, rss in isolated.values())  # the largest process's
    else:
        results = {norm: run(args, norm) for norm in args.norms}
        # the process's peak resident set (Linux: KiB), all methods together
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall = time.perf_counter() - start
    table = markdown(results, args)
    print(table)
    print(
        f"\nwall time {wall:.0f} s; peak RSS {peak_rss / 2**30:.2f} GiB; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "results": results,
                    "wall_s": wall,
                    "peak_rss_bytes": peak_rss,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "argv": sys.argv,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
