"""mirroropt.distributed: 2 gloo processes give one process's meta-gradients; failures stop."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

import mirroropt
import mirroropt.distributed as md
from mirroropt.maps import Diagonal, Kronecker
from tests.integrations._common import make_model, make_tasks, perturb

MAPS = {"diagonal": lambda m: perturb(Diagonal(m)), "kronecker": lambda m: perturb(Kronecker(m))}
TASKS = 5  # uneven over 2 ranks: blocks of 2 and 3


def meta_training(rank: int, world_size: int, map_name: str, iterations: int = 3) -> dict:
    """A float64 meta-training run on this rank: the first meta-gradient and the final weights.

    ``rank``/``world_size`` are passed explicitly so that the same function is the 1-process
    reference when called without a process group."""
    model = make_model()
    mirror_map = MAPS[map_name](model)
    wrt = [*model.parameters(), *mirror_map.parameters()]
    meta_opt = torch.optim.SGD(wrt, lr=0.1, momentum=0.9)

    def task_loss(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        def support(p: dict[str, Tensor]) -> Tensor:
            return F.mse_loss(functional_call(model, p, (x_s,)), y_s)

        phi = mirroropt.adapt(mirror_map, support, dict(model.named_parameters()), lr=0.3, steps=2)
        return F.mse_loss(functional_call(model, phi, (x_q,)), y_q)

    first: list[Tensor] = []
    for it in range(iterations):
        tasks = make_tasks(TASKS, seed=10 + it)  # the same meta-batch on every rank
        meta_opt.zero_grad()
        md.sharded_mean(task_loss, *tasks, model=model, rank=rank, world_size=world_size).backward()
        md.all_reduce_gradients(wrt)
        if it == 0:
            first = [p.grad.clone() for p in wrt]  # type: ignore[union-attr]
        meta_opt.step()
    return {"grads": first, "weights": [p.detach().clone() for p in wrt]}


def fail_on_rank_one(rank: int, world_size: int, how: str) -> None:
    if rank == 1:
        if how == "raise":
            raise ValueError("rank 1 fails on purpose")
        if how == "hang":
            time.sleep(600)  # never reaches the collective; rank 0's gloo timeout ends the run
        os._exit(3)
    dist.all_reduce(torch.ones(1))  # rank 0 waits here for rank 1, which never comes


def rel_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    return max(float((a - e).abs().max() / e.abs().max()) for a, e in zip(actual, expected))


@pytest.mark.parametrize("map_name", ["diagonal", "kronecker"])
def test_two_gloo_processes_give_the_meta_gradients_of_one(map_name: str) -> None:
    ranks = md.launch(meta_training, map_name, world_size=2, timeout_s=120)
    one = meta_training(0, 1, map_name)
    assert all(g.dtype == torch.float64 for g in one["grads"])
    assert all(float(g.abs().max()) > 1e-6 for g in one["grads"])
    for result in ranks:
        assert rel_error(result["grads"], one["grads"]) < 1e-12
        assert rel_error(result["weights"], one["weights"]) < 1e-12  # the same training run
    # after the all-reduce every rank holds the same bits
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        assert torch.equal(a, b)
    # and the ranks really split the work: a rank alone sees only part of the meta-batch
    half = meta_training(0, 2, map_name, iterations=1)  # no process group: no all-reduce
    assert rel_error(half["grads"], one["grads"]) > 1e-3


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("raise", r"(?s)Rank 1 of 2 failed.*ValueError: rank 1 fails on purpose"),
        ("exit", r"(?s)Rank 1 of 2 failed.*exited with code 3"),
        ("hang", r"(?s)Rank 0 of 2 failed.*all_reduce.*[Tt]imed out"),
    ],
)
def test_a_failing_rank_stops_the_run_with_its_error(how: str, message: str) -> None:
    """A rank that raises, crashes or hangs ends the run with an error naming it; the hang is
    bounded by the collective timeout (5 s here), not by the test's patience."""
    with pytest.raises(md.RankFailedError, match=message) as info:
        md.launch(fail_on_rank_one, how, world_size=2, timeout_s=5)
    assert "terminated" in str(info.value)


def test_shards_partition_the_meta_batch() -> None:
    for num_tasks in range(1, 12):
        for world_size in range(1, num_tasks + 1):
            blocks = [md.shard_bounds(num_tasks, r, world_size) for r in range(world_size)]
            covered = [i for start, stop in blocks for i in range(start, stop)]
            assert covered == list(range(num_tasks))
            sizes = [stop - start for start, stop in blocks]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_shares_sum_to_the_meta_batch_mean() -> None:
    x = torch.randn(7, 3, dtype=torch.float64)

    def fn(t: Tensor) -> Tensor:
        return t.pow(2).sum()

    mean = mirroropt.map_tasks(fn, x, model=None).mean()
    assert torch.equal(md.sharded_mean(fn, x, model=None), mean)  # one process: the mean itself
    shares = [md.sharded_mean(fn, x, model=None, rank=r, world_size=3) for r in range(3)]
    assert float(abs(sum(shares) - mean)) < 1e-14 * float(mean)
    (local,) = md.shard_tasks(x, rank=2, world_size=3)
    assert torch.equal(local, x[4:])


def test_the_memory_saving_mode_passes_through_and_its_shares_sum_to_the_meta_gradient() -> None:
    """``params`` + ``strategy="loop"`` (one task's graph at a time) on each rank's block: the
    ranks' gradients sum to the one-process meta-gradient of the plain path."""
    model = make_model()
    mirror_map = MAPS["kronecker"](model)
    wrt = [*model.parameters(), *mirror_map.parameters()]

    def task_loss(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        def support(p: dict[str, Tensor]) -> Tensor:
            return F.mse_loss(functional_call(model, p, (x_s,)), y_s)

        phi = mirroropt.adapt(mirror_map, support, dict(model.named_parameters()), lr=0.3, steps=2)
        return F.mse_loss(functional_call(model, phi, (x_q,)), y_q)

    tasks = make_tasks(TASKS, seed=3)
    expected = torch.autograd.grad(md.sharded_mean(task_loss, *tasks, model=model), wrt)
    summed = [torch.zeros_like(p) for p in wrt]
    for rank in range(2):
        share = md.sharded_mean(
            task_loss, *tasks, model=model, strategy="loop", params=[model, mirror_map],
            rank=rank, world_size=2,
        )  # fmt: skip
        node, names = share.grad_fn, list[str]()  # share = losses.sum() / B: two nodes down
        while node is not None and len(names) < 3:
            names.append(type(node).__name__)
            node = node.next_functions[0][0] if node.next_functions else None
        assert any("PrecomputedBackward" in n for n in names), names
        summed = [a + b for a, b in zip(summed, torch.autograd.grad(share, wrt))]
    for got, want in zip(summed, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_without_a_process_group_it_is_one_process() -> None:
    assert md.rank_and_world_size() == (0, 1)
    p = torch.ones(2, requires_grad=True)
    p.grad = torch.full((2,), 3.0)
    md.all_reduce_gradients([p])
    assert p.grad.tolist() == [3.0, 3.0]


def test_errors_name_the_argument() -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"`num_tasks`=3 tasks cannot be sharded over 4 ranks"):
        md.shard_tasks(x, rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"`rank` must be an int in \[0, 2\), got 2"):
        md.shard_bounds(3, 2, 2)
    with pytest.raises(ValueError, match=r"`world_size` must be a positive int, got 0"):
        md.shard_bounds(3, 0, 0)
    with pytest.raises(ValueError, match=r"Pass both `rank` and `world_size` or neither"):
        md.shard_tasks(x, rank=1)
    with pytest.raises(ValueError, match=r"same leading \(task\) dimension; got sizes \[3, 2\]"):
        md.shard_tasks(x, torch.zeros(2), rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"at least one tensor"):
        md.shard_tasks(rank=0, world_size=1)
    with pytest.raises(
        ValueError, match=r"`fn` must return a scalar tensor per task, got \(3, 2\)"
    ):
        md.sharded_mean(lambda t: t, x, model=None)
    with pytest.raises(TypeError, match=r"`parameters\[1\]` must be a tensor, got float"):
        md.all_reduce_gradients([torch.zeros(1), 1.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"`world_size` must be a positive int, got 0"):
        md.launch(fail_on_rank_one, "raise", world_size=0)
    with pytest.raises(ValueError, match=r"`timeout_s` must be positive, got 0"):
        md.launch(fail_on_rank_one, "raise", world_size=1, timeout_s=0)
