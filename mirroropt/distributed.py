r"""Meta-batches over several processes with :mod:`torch.distributed`: shard, mean, all-reduce.

The meta-objective is a mean over the B tasks of a meta-batch,
:math:`\mathcal L = \frac1B\sum_{i=1}^B L_i`, so its gradient splits over processes: rank
:math:`r` of :math:`W` takes a fixed contiguous block :math:`S_r` of the tasks
(:func:`shard_tasks`), computes :math:`\mathcal L_r = \frac1B\sum_{i\in S_r} L_i`
(:func:`sharded_mean`, which runs :func:`mirroropt.map_tasks` on its block) and back-propagates
it; the all-reduced sum :math:`\sum_r\nabla\mathcal L_r = \nabla\mathcal L`
(:func:`all_reduce_gradients`) is then the meta-gradient of the whole meta-batch on every rank,
equal to one process's up to the order of floating-point additions. Every rank holds the same
model and map, samples the same meta-batch (same seed) and takes the same meta-step.

.. code-block:: python

    import mirroropt, mirroropt.distributed as md

    # torchrun --nproc_per_node 2 train.py   (or md.launch(main, world_size=2) on one machine)
    torch.distributed.init_process_group("gloo")    # "nccl" on GPUs
    for tasks in meta_batches:                       # the same B tasks on every rank
        meta_opt.zero_grad()
        md.sharded_mean(task_loss, *tasks, model=net).backward()
        md.all_reduce_gradients([*net.parameters(), *mirror_map.parameters()])
        meta_opt.step()                              # identical on every rank

Rank and world size come from the initialized default process group (or rank 0 of 1 without
one), or are passed explicitly. :func:`launch` runs a function on ``world_size`` local processes
(gloo on CPU) and returns what each rank returned; a rank that raises stops the others and the
error names the rank.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.multiprocessing.spawn import ProcessException

from mirroropt._batching import map_tasks

__all__ = [
    "RankFailedError",
    "all_reduce_gradients",
    "launch",
    "rank_and_world_size",
    "shard_bounds",
    "shard_tasks",
    "sharded_mean",
]


class RankFailedError(RuntimeError):
    """A process started by :func:`launch` raised, died, or did not finish in time; or, raised by
    :func:`mirroropt.workflow.train` on several ranks, another rank raised (the message names it)."""


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments if given, else the default process group's, else
    ``(0, 1)`` when :mod:`torch.distributed` is not initialized.

    Raises:
        ValueError: if only one of the two is given, ``world_size < 1`` or ``rank`` is not in
            ``[0, world_size)``.
    """
    if (rank is None) != (world_size is None):
        raise ValueError(
            f"Pass both `rank` and `world_size` or neither, got rank={rank}, "
            f"world_size={world_size}."
        )
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"`world_size` must be a positive int, got {world_size!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"`rank` must be an int in [0, {world_size}), got {rank!r}.")
    return rank, world_size


def shard_bounds(num_tasks: int, rank: int, world_size: int) -> tuple[int, int]:
    """The half-open block ``[start, stop)`` of task indices that ``rank`` of ``world_size`` takes.

    Blocks are contiguous, in rank order, cover ``range(num_tasks)`` exactly once and differ in
    size by at most one (``start = rank * num_tasks // world_size``): a pure function of its
    arguments, so every rank computes the same partition.

    Raises:
        ValueError: if ``num_tasks < world_size`` (a rank would have no task) or the rank is
            invalid.

    Example:
        >>> [shard_bounds(10, r, 3) for r in range(3)]
        [(0, 3), (3, 6), (6, 10)]
    """
    rank, world_size = rank_and_world_size(rank, world_size)
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < world_size:
        raise ValueError(
            f"A meta-batch of `num_tasks`={num_tasks!r} tasks cannot be sharded over "
            f"{world_size} ranks: every rank needs at least one task."
        )
    return rank * num_tasks // world_size, (rank + 1) * num_tasks // world_size


def shard_tasks(
    *tasks: Tensor, rank: int | None = None, world_size: int | None = None
) -> tuple[Tensor, ...]:
    """This rank's block of a meta-batch: ``t[start:stop]`` of every tensor (see :func:`shard_bounds`).

    Args:
        tasks: tensors with a leading task dimension of equal size B (as :func:`mirroropt.map_tasks`
            takes).
        rank, world_size: override the default process group's.

    Raises:
        ValueError: on no tasks, unequal leading sizes, or B < world_size.

    Example:
        >>> import torch
        >>> x, = shard_tasks(torch.arange(5), rank=1, world_size=2)
        >>> x.tolist()
        [2, 3, 4]
    """
    if not tasks:
        raise ValueError("`tasks` must contain at least one tensor with a leading task dimension.")
    sizes = [t.shape[0] if isinstance(t, Tensor) and t.dim() > 0 else None for t in tasks]
    if None in sizes or len(set(sizes)) != 1:
        raise ValueError(
            f"Every tensor in `tasks` must have the same leading (task) dimension; got sizes "
            f"{sizes}."
        )
    rank, world_size = rank_and_world_size(rank, world_size)
    start, stop = shard_bounds(int(sizes[0]), rank, world_size)  # type: ignore[arg-type]
    return tuple(t[start:stop] for t in tasks)


def sharded_mean(
    fn: Callable[..., Tensor],
    *tasks: Tensor,
    model: nn.Module | None,
    strategy: Literal["auto", "vmap", "loop"] = "auto",
    params: Any = None,
    chunk_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Tensor:
    r"""This rank's share :math:`\frac1B\sum_{i\in S_r} L_i` of the meta-batch mean of ``fn``.

    Runs :func:`mirroropt.map_tasks` (``vmap``, or a loop for batch-statistics models) on the
    rank's block of ``tasks``. The shares of all ranks sum to the mean over the whole meta-batch,
    so after ``backward()`` and :func:`all_reduce_gradients` every rank holds its meta-gradient.
    With one process it is ``map_tasks(fn, *tasks, model=model).mean()``.

    Args:
        fn: per-task loss ``fn(*task_slices) -> scalar tensor`` (adapt on the support set, return
            the query loss).
        tasks: the whole meta-batch, the same on every rank (leading dimension B).
        model, strategy, params, chunk_size: as for :func:`mirroropt.map_tasks` (``params`` with
            ``strategy="loop"``: the memory-saving mode, one task's graph alive at a time).
        rank, world_size: override the default process group's.

    Raises:
        ValueError: as :func:`shard_tasks`, or if ``fn`` does not return scalars.
    """
    local = shard_tasks(*tasks, rank=rank, world_size=world_size)
    losses = map_tasks(
        fn, *local, model=model, strategy=strategy, params=params, chunk_size=chunk_size
    )
    if not isinstance(losses, Tensor) or losses.dim() != 1:
        raise ValueError(
            f"`fn` must return a scalar tensor per task, got "
            f"{tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__} "
            f"for the {local[0].shape[0]} tasks of this rank."
        )
    return losses.sum() / tasks[0].shape[0]


@torch.no_grad()
def all_reduce_gradients(
    parameters: Iterable[Tensor], *, group: dist.ProcessGroup | None = None
) -> None:
    """Sum ``.grad`` of every parameter over all ranks, in place (one all-reduce per dtype).

    A parameter without a gradient on this rank contributes zeros (its ``.grad`` is created), so
    every rank issues the same collectives. Call it after ``backward()`` of :func:`sharded_mean`
    and before the meta-optimizer's ``step()``; the parameters must be listed in the same order on
    every rank. Without an initialized process group it does nothing (one process).

    Raises:
        TypeError: if a parameter is not a tensor.
    """
    params = list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"`parameters[{i}]` must be a tensor, got {type(p).__name__}.")
    if not (dist.is_available() and dist.is_initialized()):
        return
    by_kind: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p in params:
        grad = p.grad
        if grad is None:
            grad = p.grad = torch.zeros_like(p)
        by_kind.setdefault((grad.dtype, grad.device), []).append(grad)
    for grads in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _worker(
    rank: int,
    fn: Callable[..., Any],
    args: Sequence[Any],
    world_size: int,
    backend: str,
    store: str,
    out: str,
    timeout_s: float,
) -> None:
    """One process of :func:`launch`: join the group, run ``fn``, save its result or its error."""
    dist.init_process_group(
        backend,
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save({"result": result}, os.path.join(out, f"rank{rank}.pt"))
    except BaseException:
        Path(out, f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    # Done, saved and out of the group: leave without interpreter finalization. There gloo's
    # threads can still hold tensors, and on torch 2.13 about one launch in six aborted a rank
    # (SIGABRT, "terminate called without an active exception") after its work was complete.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _describe_failure(
    processes: Sequence[Any], out: str, world_size: int, error: ProcessException
) -> str:
    """Name the rank that failed first: one that died without a Python error (a crash, a
    non-zero ``os._exit``), else the earliest saved traceback; peers that failed only because
    it left (a closed connection) or were terminated are listed after it."""
    for process in processes:
        process.join(5)
    errors = {
        r: Path(out, f"rank{r}.error")
        for r in range(world_size)
        if Path(out, f"rank{r}.error").exists()
    }
    crashed = [
        r
        for r, process in enumerate(processes)
        if r not in errors and process.exitcode not in (0, None, -15)  # -15: terminated by us
    ]
    if crashed:
        first = crashed[0]
        detail = f"It exited with code {processes[first].exitcode} without a Python traceback."
    elif errors:
        first = min(errors, key=lambda r: errors[r].stat().st_mtime_ns)
        detail = errors[first].read_text()
    else:  # pragma: no cover - torch reported a failure that left no trace
        first, detail = error.error_index, str(error)
    others = sorted(set(errors) - {first})
    after = f" Ranks {others} failed after it (most likely because it left)." if others else ""
    return f"Rank {first} of {world_size} failed; the other ranks were terminated.{after}\n{detail}"


def launch(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int,
    backend: str = "gloo",
    timeout_s: float = 120.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` new local processes; their results.

    Each process joins a process group (``backend``, a file store in a temporary folder, so no
    port is needed) with collective timeout ``timeout_s``, then calls ``fn``; results are saved
    with :func:`torch.save` and returned in rank order. ``fn`` and ``args`` must be picklable
    (``fn`` a module-level function): processes are started with ``spawn``.

    If a rank raises or dies, the others are terminated at once and :class:`RankFailedError`
    names the rank and carries its traceback; if the ranks have not all finished after
    ``timeout_s`` (plus start-up), they are terminated and the error says so. Nothing hangs.

    Raises:
        RankFailedError: as above.
        ValueError: if ``world_size < 1`` or ``timeout_s`` is not positive.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"`world_size` must be a positive int, got {world_size!r}.")
    if not timeout_s > 0:
        raise ValueError(f"`timeout_s` must be positive, got {timeout_s!r}.")
    with tempfile.TemporaryDirectory(prefix="mirroropt-launch-") as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "out")
        os.mkdir(out)
        context = mp.start_processes(
            _worker,
            args=(fn, tuple(args), world_size, backend, store, out, float(timeout_s)),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = timeout_s + 60.0  # start-up (importing torch) is not part of the collectives
        waited = 0.0
        try:
            while not context.join(timeout=1.0):
                waited += 1.0
                if waited > deadline:
                    raise RankFailedError(
                        f"The {world_size} processes did not finish within {deadline:.0f} s "
                        f"(timeout_s={timeout_s} + 60 s start-up); they were terminated."
                    )
        except ProcessException as error:
            raise RankFailedError(
                _describe_failure(context.processes, out, world_size, error)
            ) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
                    process.join(5)
        return [
            torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False)["result"]
            for r in range(world_size)
        ]
