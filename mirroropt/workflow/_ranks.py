r"""Meta-training over :mod:`torch.distributed` ranks: this rank's block of a meta-batch, and the
few collectives that keep every rank's meta-step identical and its failures shared.

:func:`~mirroropt.workflow.train` run by W processes (``torchrun --nproc_per_node W -m mirroropt
train``) draws the whole meta-batch of B tasks on every rank from the same seed and keeps the
contiguous block :math:`S_r` of :func:`mirroropt.distributed.shard_bounds`; rank r
back-propagates its share :math:`\frac1B\sum_{i\in S_r}\ell_i` and the sum of the W gradients,
all-reduced, is the meta-gradient :math:`\nabla\frac1B\sum_{i=1}^B\ell_i` on every rank, so every
rank takes the same meta-step. One more all-reduce per iteration, of W + 3 numbers, carries the
loss and metric shares (for the log), the ``stop`` flag (SIGTERM) and whether a rank failed, so
that every rank stops at the same iteration, and a rank whose tasks raise stops all of them with
an error naming it instead of leaving them waiting in a collective.

With one process (no process group) nothing here communicates.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mirroropt._utils import NonFiniteError
from mirroropt.distributed import RankFailedError, rank_and_world_size, shard_bounds
from mirroropt.workflow._tasks import TaskBatch

__all__ = ["Ranks", "is_collective_failure"]

_OK, _NON_FINITE, _FAILED = 0.0, 1.0, 2.0
_TASK = re.compile(r"^Task (\d+) of (\d+): ")


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed or timed out (a peer left or hung), not a
    failure of this rank's own work."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "NCCL", "Connection closed by peer", "Timed out")
    )


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` of ``world_size`` (``0`` of ``1`` without a process group)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """The default process group's rank and size (``0`` of ``1`` when not initialized)."""
        rank, world_size = rank_and_world_size()
        return cls(rank, world_size)

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _device(self) -> torch.device:
        """Where collective buffers live: NCCL reduces CUDA tensors, gloo CPU tensors."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def bounds(self, num_tasks: int) -> tuple[int, int]:
        """This rank's block ``[start, stop)`` of ``num_tasks`` tasks (``shard_bounds``)."""
        return shard_bounds(num_tasks, self.rank, self.world_size)

    def shard(self, batch: TaskBatch) -> tuple[TaskBatch, int, int]:
        """This rank's block ``[start, stop)`` of ``batch``'s tasks, and the bounds."""
        start, stop = self.bounds(batch.x_support.shape[0])
        return TaskBatch(*(t[start:stop] for t in batch.tensors())), start, stop

    def agree(
        self,
        error: Exception | None,
        *,
        stop: bool,
        value: Tensor | None,
        metric: Tensor | None,
        block: tuple[int, int, int] = (0, 0, 0),
        what: str = "",
    ) -> tuple[float, float, bool]:
        """Share this rank's outcome: ``(Σ value shares, Σ metric shares, any rank stopping)``.

        Raises on every rank when any rank failed: its own error on the failing rank (a
        :class:`~mirroropt.NonFiniteError` names the task in the whole meta-batch, from
        ``block = (start, stop, B)``), on the others a ``NonFiniteError`` or
        :class:`~mirroropt.distributed.RankFailedError` naming the first failing rank.
        """
        if not self.distributed:
            if error is not None:
                raise error
            assert value is not None and metric is not None
            return float(value.detach()), float(metric.detach()), stop
        w = self.world_size
        status = torch.zeros(w + 3, dtype=torch.float64, device=self._device())
        if error is not None:
            status[self.rank] = _NON_FINITE if isinstance(error, NonFiniteError) else _FAILED
        else:
            assert value is not None and metric is not None
            status[w + 1] = value.detach().to(torch.float64).reshape(())
            status[w + 2] = metric.detach().to(torch.float64).reshape(())
        status[w] = float(stop)
        dist.all_reduce(status, op=dist.ReduceOp.SUM)
        codes = status[:w].tolist()
        failed = [r for r, code in enumerate(codes) if code != _OK]
        if error is not None:
            if isinstance(error, NonFiniteError):
                raise NonFiniteError(self._global_task(str(error), block)) from error
            raise error
        if failed:
            first = failed[0]
            if codes[first] == _NON_FINITE:
                raise NonFiniteError(
                    f"rank {first} of {w} found a non-finite value in its block of tasks (its own "
                    f"message names the task and the inner step)"
                )
            raise RankFailedError(
                f"rank {first} of {w} raised {what}and every rank stops (its own message says why)."
            )
        return float(status[w + 1]), float(status[w + 2]), bool(status[w] > 0)

    def _global_task(self, message: str, block: tuple[int, int, int]) -> str:
        """``Task i of n: …`` of this rank's block as the task of the whole meta-batch."""
        start, _, total = block
        match = _TASK.match(message)
        where = f"rank {self.rank} of {self.world_size}"
        if match is None or not total:
            return f"on {where}: {message}"
        index = start + int(match.group(1))
        return f"Task {index} of {total} (on {where}): {message[match.end() :]}"

    def sync(self) -> None:
        """Wait until every rank is here (after rank 0 wrote a checkpoint: when :func:`train`
        returns or stops on any rank, its checkpoint is on disk)."""
        if self.distributed:
            dist.all_reduce(torch.zeros(1, device=self._device()))

    @torch.no_grad()
    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) ``.grad`` of ``params`` in place; a parameter that has no gradient on
        any rank keeps ``None`` (so the meta-optimizer skips it, as with one process)."""
        if not self.distributed:
            return
        has = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.float64, device=self._device()
        )
        dist.all_reduce(has, op=dist.ReduceOp.SUM)
        used = [p for p, n in zip(params, has.tolist()) if n > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_kind: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for p in used:
            assert p.grad is not None
            by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in by_kind.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    @torch.no_grad()
    def sum(self, tensors: list[Tensor]) -> list[Tensor]:
        """The sums over ranks of ``tensors`` (new tensors; the inputs unchanged)."""
        if not self.distributed or not tensors:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset : offset + t.numel()].view_as(t).clone())
            offset += t.numel()
        return out

    def from_main(self, fn: Callable[[], float], *, what: str) -> float:
        """``fn()`` computed on rank 0 only and broadcast to every rank (an error on rank 0 stops
        every rank: the others raise :class:`~mirroropt.distributed.RankFailedError`)."""
        if not self.distributed:
            return fn()
        message = torch.zeros(2, dtype=torch.float64, device=self._device())
        error: Exception | None = None
        if self.main:
            try:
                message[1] = fn()
            except Exception as caught:
                error = caught
                message[0] = _FAILED
        dist.broadcast(message, src=0)
        if error is not None:
            raise error
        if float(message[0]) != _OK:
            raise RankFailedError(
                f"rank 0 of {self.world_size} raised in {what} and every rank stops (its own "
                f"message says why)."
            )
        return float(message[1])
