"""Command line: ``python -m mirroropt train|eval|demo|reproduce`` (also the ``mirroropt`` script).

Examples::

    python -m mirroropt train --benchmark fontglot --map diagonal --iterations 300 --out runs/diag
    python -m mirroropt train --out runs/diag --iterations 600 --resume   # same flags + resume
    python -m mirroropt eval --checkpoint runs/diag/checkpoint.pt --tasks 600 --max-steps 10
    python -m mirroropt demo            # MAML vs a learned map on FontGlot (150 iterations each)
    python -m mirroropt reproduce --out runs/reproduce   # the table of docs/results.md
    torchrun --nproc_per_node 2 -m mirroropt train --map diagonal --out runs/diag2  # 2 processes

Progress bars and plots need the optional extra (``pip install mirroropt[workflow]``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirroropt.workflow import TrainConfig
    from mirroropt.workflow._reproduce import Protocol

__all__ = ["build_parser", "main", "run"]


def _number(cast: type, what: str, ok: Callable[[float], bool], bad: str) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)``, refused with "expected {what}" unless ``ok(value)``."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {bad}, got {value}")
        return value

    return parse


_positive_int = _number(int, "a positive integer", lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, "a non-negative integer", lambda v: v >= 0, "a non-negative integer")
_positive_float = _number(
    float, "a positive number", lambda v: 0 < v < float("inf"), "a positive finite number"
)
_momentum = _number(float, "a number in [0, 1)", lambda v: 0 <= v < 1, "a number in [0, 1)")
_train_steps = _number(
    int,
    "a positive integer",
    lambda v: v >= 1,
    "a positive integer (--steps 0 leaves nothing to meta-learn: φ_K = φ_0)",
)

#: Every sub-command's help shows each option's default.
_FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def _map_name(text: str) -> str:
    from mirroropt.maps import MAPS

    if text not in MAPS:
        raise argparse.ArgumentTypeError(
            f"unknown map {text!r}; available maps: {', '.join(sorted(MAPS))}"
        )
    return text


def _map_kwarg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with VALUE as JSON, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(
            f'expected KEY=VALUE with VALUE as JSON (true, 8, 0.5, "name"), got {text!r}'
        ) from None


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}")
    return text


def _benchmark_name(text: str) -> str:
    from mirroropt.workflow import BENCHMARKS

    if text not in BENCHMARKS:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {text!r}; available: {', '.join(sorted(BENCHMARKS))}"
        )
    return text


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads (on a shared 2-core machine more threads oversubscribe and run "
        "~10x slower; a run resumes only with the threads it was trained with)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="cpu or cuda[:N]: where training and evaluation run (tasks are the same)",
    )


def _add_run(p: argparse.ArgumentParser) -> None:
    from mirroropt.maps import MAPS

    g = p.add_argument_group("benchmark and backbone")
    g.add_argument(
        "--benchmark",
        type=_benchmark_name,
        default="fontglot",
        help="fontglot, omniglot, miniimagenet, sinusoid or synthetic",
    )
    g.add_argument("--n-way", type=_positive_int, default=5, help="classes per task")
    g.add_argument(
        "--k-shot",
        type=_positive_int,
        default=1,
        help="support shots per class (sinusoid: support points)",
    )
    g.add_argument("--q-query", type=_positive_int, default=5, help="query samples per class")
    g.add_argument(
        "--augment",
        action="store_true",
        help="harder variant: affine jitter and stroke width on training tasks",
    )
    g.add_argument("--augment-eval", action="store_true", help="also augment evaluation tasks")
    g.add_argument("--width", type=_positive_int, default=32, help="Conv4 channels")
    g.add_argument("--norm", choices=("batch", "group"), default="batch", help="Conv4 norm")
    g.add_argument("--data-root", default="", help="Omniglot / miniImageNet folder")
    g.add_argument(
        "--fontglot",
        default="",
        metavar="PATH",
        help="a FontGlot-format .npz (manifest beside it, checksum verified) instead of the "
        "shipped one",
    )
    g = p.add_argument_group("inner loop and meta-training")
    g.add_argument(
        "--map",
        type=_map_name,
        default="identity",
        help=f"the mirror map, one of: {', '.join(MAPS)}",
    )
    g.add_argument(
        "--map-kwarg",
        action="append",
        default=[],
        type=_map_kwarg,
        metavar="KEY=VALUE",
        help="a keyword of the map's constructor, VALUE as JSON (e.g. monotone=true); repeatable",
    )
    g.add_argument("--steps", type=_train_steps, default=5, help="inner steps K (at least 1)")
    g.add_argument("--lr", type=_positive_float, default=0.01, help="inner step size α")
    g.add_argument("--meta-batch", type=_positive_int, default=4, help="tasks per meta-iteration")
    g.add_argument("--iterations", type=_positive_int, default=300, help="meta-iterations")
    g.add_argument(
        "--meta-optimizer",
        choices=("adam", "sgd"),
        default="adam",
        help="adam, or sgd with Nesterov momentum",
    )
    g.add_argument(
        "--meta-lr",
        type=_positive_float,
        default=1e-3,
        help="meta step size β (the cap with --meta-step adaptive)",
    )
    g.add_argument(
        "--map-meta-lr",
        type=_positive_float,
        default=None,
        help="meta step size of the map's parameters (own param group; default: --meta-lr)",
    )
    g.add_argument(
        "--momentum", type=_momentum, default=0.9, help="SGD's Nesterov momentum, in [0, 1)"
    )
    g.add_argument(
        "--meta-step",
        choices=("fixed", "adaptive"),
        default="fixed",
        help="adaptive: β from a smoothness estimate on an extra task batch (MetaMiDA Remark 3)",
    )
    g.add_argument("--first-order", action="store_true", help="first-order meta-gradients")
    g.add_argument(
        "--objective",
        choices=("query", "metamd"),
        default="query",
        help="query: MAML/MetaMiDA query loss; metamd: MetaMD regret bound",
    )
    g.add_argument("--seed", type=_nonneg_int, default=0, help="initialization and task seed")
    g.add_argument(
        "--init-from",
        default="",
        metavar="CKPT",
        help="start from this checkpoint's initialization φ₀ (e.g. a MAML run, for MetaMD)",
    )
    g.add_argument(
        "--start",
        choices=("learned", "anchored"),
        default="learned",
        help="maps without to_dual: MetaMiDA's learned z0, or the backbone's φ₀ with the map "
        "centred on it",
    )
    g.add_argument(
        "--val-every",
        type=_nonneg_int,
        default=0,
        help="meta-validate every N iterations and keep the best checkpoint (0: never)",
    )
    g.add_argument("--val-tasks", type=_positive_int, default=100, help="meta-validation tasks")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m mirroropt``."""
    from mirroropt import __version__
    from mirroropt.maps import MAPS

    parser = argparse.ArgumentParser(
        prog="mirroropt", description="Learned mirror descent for meta-learning."
    )
    parser.add_argument("--version", action="version", version=f"mirroropt {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{train,eval,demo,reproduce}"
    )

    p = sub.add_parser("train", help="meta-train one method", formatter_class=_FORMATTER)
    _add_run(p)
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log, evaluation)")
    p.add_argument(
        "--checkpoint-every",
        type=_nonneg_int,
        default=50,
        help="iterations between checkpoints (0: only at the end; SIGTERM also writes one)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an OUT that already holds a run (without it, that is refused)",
    )
    p.add_argument(
        "--eval-tasks",
        type=_nonneg_int,
        default=0,
        help="evaluate on this many meta-test tasks after training (0: skip)",
    )
    p.add_argument("--max-steps", type=_nonneg_int, default=10, help="evaluate k = 0 … this")
    p.add_argument(
        "--dist-timeout",
        type=_positive_float,
        default=1800.0,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits in a collective (for a rank that hangs, or "
        "for rank 0's meta-validation) before the run stops with an error",
    )
    _add_common(p)

    p = sub.add_parser(
        "eval", help="evaluate a checkpoint at every inner step k", formatter_class=_FORMATTER
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by train")
    p.add_argument("--tasks", type=_positive_int, default=600, help="meta-test tasks")
    p.add_argument("--max-steps", type=_nonneg_int, default=10, help="evaluate k = 0 … this")
    p.add_argument("--seed", type=_nonneg_int, default=1000, help="seed of the test tasks")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="task split")
    p.add_argument(
        "--out", default=None, help="folder for eval.json/.md/.png (default: beside the checkpoint)"
    )
    p.add_argument("--label", default=None, help="name in the report (default: map, iterations)")
    _add_common(p)

    p = sub.add_parser(
        "demo",
        help="MAML vs a learned mirror map on FontGlot, with a table and plot",
        formatter_class=_FORMATTER,
    )
    p.add_argument("--quick", action="store_true", help="tiny budget (seconds), for tests")
    p.add_argument(
        "--benchmark", type=_benchmark_name, default="fontglot", help="the benchmark to run on"
    )
    p.add_argument(
        "--map",
        type=_map_name,
        default="convex_potential",
        help=f"the learned map to compare, one of: {', '.join(MAPS)} (default: the convex "
        "potential anchored at φ₀, the map docs/results.md favours: ahead of MAML at k = K in "
        "both FontGlot settings, first in 20-way)",
    )
    p.add_argument(
        "--map-kwarg",
        action="append",
        default=None,
        type=_map_kwarg,
        metavar="KEY=VALUE",
        help="a keyword of the map's constructor, VALUE as JSON; repeatable (default: "
        "init_scale=0.1 for convex_potential, as in docs/results.md's row; none otherwise)",
    )
    p.add_argument(
        "--start",
        choices=("learned", "anchored"),
        default="anchored",
        help="maps without to_dual: the backbone's φ₀ with the map centred on it (anchored, "
        "docs/results.md's row), or MetaMiDA's learned z0",
    )
    p.add_argument(
        "--map-meta-lr",
        type=_positive_float,
        default=0.01,
        help="the learned map's meta step size (for the default map: docs/results.md's tuned "
        "value in 20-way and at 300 iterations in 5-way)",
    )
    p.add_argument(
        "--iterations", type=_positive_int, default=None, help="per method (default: 150; 2 quick)"
    )
    p.add_argument(
        "--eval-tasks", type=_positive_int, default=None, help="default: 200 (10 with --quick)"
    )
    p.add_argument("--out", default="runs/demo", help="report folder")
    _add_common(p)

    p = sub.add_parser(
        "reproduce",
        help="the evidence of docs/results.md: every method, several seeds (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from mirroropt.workflow._reproduce import METHODS, SETTINGS, Protocol

    d = Protocol()
    p.add_argument("--out", default="runs/evidence", help="runs folder (shared by workers)")
    p.add_argument(
        "--iterations",
        type=_positive_int,
        default=d.iterations,
        help="meta-iterations per FontGlot run (may grow on a folder)",
    )
    p.add_argument("--sinusoid-iterations", type=_positive_int, default=d.sinusoid_iterations)
    setting_keys = [s.key for s in SETTINGS]

    def budget(text: str) -> tuple[str, int]:
        key, sep, n = text.partition("=")
        if not sep or key not in setting_keys:
            raise argparse.ArgumentTypeError(
                f"expected SETTING=N with SETTING one of {setting_keys}, got {text!r}"
            )
        return key, _positive_int(n)

    p.add_argument(
        "--budget",
        type=budget,
        action="append",
        default=[],
        metavar="SETTING=N",
        help="meta-iterations per run of one setting, instead of --iterations or "
        "--sinusoid-iterations (repeatable; a setting this invocation does not run keeps the "
        "folder's budget)",
    )
    p.add_argument("--seeds", type=_nonneg_int, nargs="+", default=list(d.seeds))
    p.add_argument(
        "--grid",
        type=_positive_float,
        nargs="+",
        default=list(d.grid),
        help="map meta step sizes tried on the first seed (chosen on meta-validation)",
    )
    p.add_argument("--val-every", type=_positive_int, default=d.val_every)
    p.add_argument("--val-tasks", type=_positive_int, default=d.val_tasks)
    p.add_argument("--eval-tasks", type=_positive_int, default=d.eval_tasks)
    p.add_argument("--width", type=_positive_int, default=d.width)
    p.add_argument("--norm", choices=("batch", "group"), default=d.norm)
    p.add_argument(
        "--fontglot",
        default="",
        metavar="PATH",
        help="a FontGlot-format .npz instead of the shipped one",
    )
    p.add_argument(
        "--settings",
        nargs="*",
        default=None,
        choices=[s.key for s in SETTINGS],
        metavar="SETTING",
        help=f"any of {', '.join(s.key for s in SETTINGS)} (default: all)",
    )
    method_names = list(dict.fromkeys([m.key for m in METHODS] + [m.map for m in METHODS]))
    p.add_argument(
        "--methods",
        nargs="*",
        default=None,
        choices=method_names,
        metavar="METHOD",
        help=f"any of {', '.join(m.key for m in METHODS)}, or a map name (default: all)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="parallel worker processes, one torch thread each",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the report from what OUT holds",
    )
    p.add_argument(
        "--publish",
        default=None,
        metavar="DIR",
        help="also write DIR/results.md and DIR/img/*.png (e.g. docs)",
    )
    _add_common(p)
    return parser


def _config(args: argparse.Namespace, world_size: int = 1) -> TrainConfig:
    from mirroropt.workflow import TrainConfig

    return TrainConfig(
        benchmark=args.benchmark,
        map=args.map,
        n_way=args.n_way,
        k_shot=args.k_shot,
        q_query=args.q_query,
        augment=args.augment,
        augment_eval=args.augment_eval,
        width=args.width,
        norm=args.norm,
        data_root=args.data_root,
        steps=args.steps,
        lr=args.lr,
        meta_batch=args.meta_batch,
        iterations=args.iterations,
        meta_optimizer=args.meta_optimizer,
        meta_lr=args.meta_lr,
        momentum=args.momentum,
        meta_step=args.meta_step,
        first_order=args.first_order,
        objective=args.objective,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        map_kwargs=dict(args.map_kwarg),
        map_meta_lr=args.map_meta_lr,
        init_from=args.init_from,
        fontglot=args.fontglot,
        val_every=args.val_every,
        val_tasks=args.val_tasks,
        start=args.start,
        world_size=world_size,
    )


def _fail(command: str, error: BaseException | str) -> SystemExit:
    """The one line (exit status 1) that a refused or failed command prints."""
    return SystemExit(f"mirroropt {command}: error: {error}")


def _fail_rank(line: str) -> SystemExit:
    """:func:`_fail` for one of several processes: the line is written in one piece (ranks share
    the terminal, so Python's separate write of the newline could interleave with another rank's
    line), then exit status 1."""
    sys.stderr.write(f"mirroropt train: error: {line}\n")
    sys.stderr.flush()
    return SystemExit(1)


def _out_dir(command: str, out: str) -> Path:
    from mirroropt.workflow._preflight import check_out_dir

    try:
        return check_out_dir(out)
    except ValueError as error:
        raise _fail(command, error) from None


def _existing_run(ckpt: Path) -> str | None:
    """A description of the run in ``ckpt``'s folder, or None when there is none."""
    from mirroropt.workflow import load_checkpoint
    from mirroropt.workflow._checkpoint import CheckpointError

    if not ckpt.exists():
        return None
    try:
        return f"{ckpt.name} at iteration {load_checkpoint(ckpt)['iteration']}"
    except (CheckpointError, OSError) as error:
        return f"an unreadable {ckpt.name}: {error}"


def _preflight(command: str, cfg: TrainConfig, bench: Any = None, device: Any = None) -> Any:
    """Build the benchmark and check it and the map before any work; one line if refused."""
    from mirroropt.workflow import build_benchmark
    from mirroropt.workflow._preflight import preflight

    try:
        bench = bench if bench is not None else build_benchmark(cfg, device=device)
        preflight(cfg, bench)
    except (ValueError, TypeError, OSError) as error:
        raise _fail(command, error) from None
    return bench


def _torchrun(command: str) -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` when torchrun started several processes (its
    ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` variables, ``WORLD_SIZE`` > 1), else ``None``."""
    import os

    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world_size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise _fail(
            command,
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is set but RANK/LOCAL_RANK are missing or "
            f"not integers: start several processes with torchrun --nproc_per_node N -m "
            f"mirroropt {command} ...",
        ) from None
    if world_size <= 1:
        return None
    if command != "train":
        raise _fail(
            command,
            f"only `train` runs on several processes; run `mirroropt {command}` without "
            f"torchrun (WORLD_SIZE={world_size})",
        )
    if not 0 <= rank < world_size:
        raise _fail(command, f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    return rank, local_rank, world_size


def _rank_device(device: str, local_rank: int) -> str:
    """Under torchrun: ``cuda`` is this process's GPU ``cuda:LOCAL_RANK``; ``cpu`` stays."""
    import torch

    target = torch.device(device)
    if target.type != "cuda":
        return device
    if target.index is not None:
        raise _fail(
            "train",
            f"--device {device} under torchrun: pass --device cuda (each rank uses "
            f"cuda:LOCAL_RANK, here cuda:{local_rank})",
        )
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def _rank_failure(error: BaseException, rank: int, world_size: int) -> str:
    """The one line a rank prints when its distributed run fails."""
    from mirroropt.distributed import RankFailedError
    from mirroropt.workflow._ranks import is_collective_failure

    lines = str(error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    who = f"rank {rank} of {world_size}"
    if isinstance(error, RankFailedError):
        return f"{who}: {first}"
    if is_collective_failure(error):
        return (
            f"{who}: a collective operation failed or timed out, most likely because another "
            f"rank failed, stopped or hung (its own message says why): {first}"
        )
    return f"{who} failed: {type(error).__name__}: {first}"


def _cmd_train(args: argparse.Namespace) -> int:
    import signal
    import threading
    import traceback
    from datetime import timedelta

    from mirroropt import NonFiniteError
    from mirroropt.distributed import RankFailedError
    from mirroropt.workflow import TrainingInterrupted, evaluate, train, write_report
    from mirroropt.workflow._ranks import is_collective_failure
    from mirroropt.workflow._report import plot_training
    from mirroropt.workflow._train import best_checkpoint_path

    ranks = _torchrun("train")
    rank, world_size = (ranks[0], ranks[2]) if ranks is not None else (0, 1)
    main_rank = rank == 0
    device = args.device if ranks is None else _rank_device(args.device, ranks[1])
    try:
        cfg = _config(args, world_size=world_size)
    except ValueError as error:
        raise _fail("train", error) from None
    out = _out_dir("train", args.out)
    ckpt = out / "checkpoint.pt"
    if args.resume and not ckpt.exists():
        raise _fail("train", f"--resume given but {ckpt} does not exist")
    existing = None if args.resume else _existing_run(ckpt)
    if existing is not None and not args.overwrite:
        raise _fail(
            "train",
            f"--out {out} already holds a run ({existing}); pass --resume to continue it or "
            f"--overwrite to start over.",
        )
    bench = _preflight("train", cfg, device=device)
    if existing is not None and main_rank:  # --overwrite: the old run goes once the new can start
        for old in (ckpt, best_checkpoint_path(ckpt), out / "history.json"):
            old.unlink(missing_ok=True)
    if ranks is not None:  # torchrun: MASTER_ADDR/MASTER_PORT, RANK, WORLD_SIZE from the env
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=args.dist_timeout))
        except (ValueError, RuntimeError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise _fail_rank(
                f"rank {rank} of {world_size} could not join the {backend} process group "
                f"(start it with torchrun): {reason}"
            ) from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if main_rank:
            where = f" on {world_size} processes" if world_size > 1 else ""
            print(f"training {cfg.map} on {bench.name}{where} into {ckpt}", flush=True)
        run = train(
            cfg,
            checkpoint=ckpt,
            resume=args.resume,
            progress=not args.no_progress,
            benchmark=bench,
            stop=stop,
            device=device,
        )
    except TrainingInterrupted as stopped:
        if main_rank:
            print(
                f"mirroropt train: stopped by SIGTERM at iteration {stopped.iteration}; "
                f"checkpoint {ckpt} written; continue with the same command and --resume",
                file=sys.stderr,
            )
        return 128 + signal.SIGTERM
    except (NonFiniteError, ValueError, FileNotFoundError) as error:
        if ranks is None:
            raise _fail("train", error) from None
        raise _fail_rank(f"rank {rank} of {world_size}: {error}") from None
    except Exception as error:
        if ranks is None:
            raise
        if not (isinstance(error, RankFailedError) or is_collective_failure(error)):
            traceback.print_exc()  # this rank's own failure: its traceback, then the one line
        raise _fail_rank(_rank_failure(error, rank, world_size)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if ranks is not None:
            dist.destroy_process_group()
    if not main_rank:  # rank 0 writes the log, the plot and the evaluation
        return 0
    (out / "history.json").write_text(json.dumps(run.history))
    plot_training({cfg.map: run.history}, out / "training.png")
    total = "" if run.total_seconds is None else f", {run.total_seconds:.1f} s in all its calls"
    done = len(run.history)
    trained = (
        f"trained iterations {run.start_iteration + 1}–{done}"
        if done > run.start_iteration
        else f"nothing left to train ({done} iterations done)"
    )
    print(f"{trained} in {run.seconds:.1f} s{total}; checkpoint {ckpt}")
    if run.validation:
        print(f"selected iteration {run.best_iteration} (meta-val {run.best_value:.4f} at k = K)")
    if args.eval_tasks:
        result = evaluate(
            run.best_learner(),
            run.benchmark,
            lr=cfg.lr,
            steps=args.max_steps,
            tasks=args.eval_tasks,
            seed=1000,
            label=cfg.map,
            progress=not args.no_progress,
        )
        paths = write_report({cfg.map: result}, out, name="eval")
        print(paths["md"].read_text())
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mirroropt.workflow import evaluate, load_checkpoint, write_report
    from mirroropt.workflow._train import restore

    out = _out_dir("eval", args.out) if args.out else Path(args.checkpoint).parent
    try:
        payload = load_checkpoint(args.checkpoint)
    except (ValueError, OSError) as error:
        raise _fail("eval", error) from None
    cfg, bench, learner = restore(payload, device=args.device)
    label = args.label or f"{cfg.map} ({payload['iteration']} it.)"
    result = evaluate(
        learner,
        bench,
        lr=cfg.lr,
        steps=args.max_steps,
        tasks=args.tasks,
        seed=args.seed,
        split=args.split,
        label=label,
        progress=not args.no_progress,
    )
    paths = write_report({label: result}, out, name="eval")
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mirroropt.workflow import TrainConfig, evaluate, train, write_report

    out = _out_dir("demo", args.out)
    quick = args.quick
    iterations = args.iterations or (2 if quick else 150)
    tasks = args.eval_tasks or (10 if quick else 200)
    base = dict(
        benchmark=args.benchmark,
        n_way=5,
        k_shot=1,
        q_query=5,
        width=8 if quick else 32,
        norm="group",
        steps=2 if quick else 5,
        lr=0.01 if not quick else 0.1,
        meta_batch=2 if quick else 4,
        iterations=iterations,
        meta_lr=1e-3,
        seed=0,
    )
    if args.benchmark == "sinusoid":
        base.update(k_shot=10, q_query=10, meta_batch=25)
    max_steps = 3 if quick else 10
    kwargs = dict(args.map_kwarg or [])
    if args.map_kwarg is None and args.map == "convex_potential":
        kwargs = {"init_scale": 0.1}  # the protocol's row (skip weights off zero, docs/maps.md)
    configs = {
        "MAML (identity)": TrainConfig(map="identity", **base),
        f"learned map ({args.map})": TrainConfig(
            map=args.map,
            map_kwargs=kwargs,
            start=args.start,
            map_meta_lr=args.map_meta_lr,
            **base,
        ),
    }
    bench = None
    for cfg in configs.values():  # both maps are checked before MAML trains
        bench = _preflight("demo", cfg, bench)
    results, t0 = {}, time.perf_counter()
    for label, cfg in configs.items():
        run = train(cfg, progress=not args.no_progress, benchmark=bench)
        results[label] = evaluate(
            run.learner,
            run.benchmark,
            lr=cfg.lr,
            steps=max_steps,
            tasks=tasks,
            seed=1000,
            label=label,
            progress=not args.no_progress,
        )
    paths = write_report(results, out, name="demo")
    print(paths["md"].read_text())
    print(
        f"demo took {time.perf_counter() - t0:.0f} s; wrote {', '.join(str(p) for p in paths.values())}"
    )
    return 0


def _protocol(args: argparse.Namespace) -> Protocol:
    """``reproduce``'s :class:`Protocol` from its parsed options."""
    from mirroropt.workflow._reproduce import Protocol

    return Protocol(
        iterations=args.iterations,
        sinusoid_iterations=args.sinusoid_iterations,
        budgets=tuple(args.budget),
        seeds=tuple(args.seeds),
        grid=tuple(args.grid),
        val_every=args.val_every,
        val_tasks=args.val_tasks,
        eval_tasks=args.eval_tasks,
        width=args.width,
        norm=args.norm,
        fontglot=args.fontglot,
    )


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mirroropt.workflow._reproduce import ProtocolError, reproduce, results_report

    if args.report_only:
        if not (Path(args.out) / "protocol.json").is_file():
            raise SystemExit(f"mirroropt reproduce: error: {args.out} holds no protocol.json")
        print(results_report(args.out, publish=args.publish).read_text())
        return 0

    _out_dir("reproduce", args.out)
    command = "python -m mirroropt " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    try:  # a ProtocolError is raised before any run starts: one line, no traceback
        protocol = _protocol(args)
        path = reproduce(
            args.out,
            protocol,
            settings=args.settings,
            methods=args.methods,
            workers=args.workers,
            progress=not args.no_progress,
            publish=args.publish,
            command=command,
            device=args.device,
        )
    except ProtocolError as error:
        raise _fail("reproduce", error) from None
    print(path.read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mirroropt`` and the ``mirroropt`` console script."""
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    if args.command != "train":
        _torchrun(args.command)  # refuses to run W copies of eval, demo or reproduce
    import torch

    from mirroropt.workflow._malloc import keep_freed_memory

    keep_freed_memory()  # CPU: no page-fault storm (opt out: MIRROROPT_KEEP_FREED_MEMORY=0)
    torch.set_num_threads(args.threads)
    from mirroropt.workflow._optional import require_matplotlib, require_tqdm

    if not args.no_progress:
        require_tqdm()
    if args.command in ("demo", "eval", "train"):
        require_matplotlib()
    handler = {
        "train": _cmd_train,
        "eval": _cmd_eval,
        "demo": _cmd_demo,
        "reproduce": _cmd_reproduce,
    }[args.command]
    return handler(args)


def run() -> None:
    """The process entry point (``python -m mirroropt``, the ``mirroropt`` script): :func:`main`'s
    exit status. Under torchrun (``WORLD_SIZE`` > 1) the process then leaves without interpreter
    finalization, once its output is flushed: there gloo's threads can still hold tensors, and on
    torch 2.13 a rank that had finished and written everything sometimes aborted (SIGABRT,
    "terminate called without an active exception"), failing the whole torchrun."""
    try:
        code: int | str | None = main()
    except SystemExit as stop:
        code = stop.code  # type: ignore[assignment]
    try:
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        distributed = False
    if not distributed:
        sys.exit(code)
    if isinstance(code, str):  # SystemExit's message, as sys.exit would print it
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    run()
