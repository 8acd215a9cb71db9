"""Meta-training on several processes (gloo, CPU): `train` and `torchrun -m mirroropt train`.

Two ranks give one process's meta-gradients and training run (float64, < 1e-12), resume
bit-exactly, only rank 0 writes, and a rank that fails stops every rank with an error naming it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import mirroropt
import mirroropt.distributed as md
from mirroropt.__main__ import main
from mirroropt.workflow import (
    TrainConfig,
    TrainingInterrupted,
    load_checkpoint,
    train,
)
from mirroropt.workflow._ranks import Ranks
from tests.workflow._poison import PoisonedBenchmark

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = dict(
    benchmark="synthetic", n_way=3, q_query=2, width=8, steps=2, lr=0.1, meta_batch=3, seed=0
)
#: (norm, meta-optimizer, meta step) per run: BatchNorm is the per-task loop of `map_tasks`,
#: GroupNorm its vmapped path; the adaptive step all-reduces two extra meta-gradients.
RUNS: dict[str, dict[str, Any]] = {
    "adam-group": dict(norm="group", map="diagonal"),  # Adam at the default meta_lr 1e-3
    "sgd-batch": dict(norm="batch", map="kronecker", meta_optimizer="sgd", meta_lr=0.1),
    "adaptive-group": dict(
        norm="group", map="identity", meta_optimizer="sgd", meta_step="adaptive"
    ),
}
ITERATIONS = 3


def config(name: str, world_size: int, iterations: int = ITERATIONS, **more: Any) -> TrainConfig:
    fields = {**BASE, **RUNS[name], "val_every": 2, "val_tasks": 2, **more}
    return TrainConfig(**fields, iterations=iterations, world_size=world_size)


class _StopOnRankOne(threading.Event):
    """A SIGTERM that only rank 1 receives, during meta-iteration 2."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank, self.checks = rank, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.rank == 1 and self.checks >= 2


def runs(rank: int, world_size: int, folder: str) -> dict[str, Any]:
    """Every scenario on this rank (also the 1-process reference with ``world_size=1``)."""
    torch.set_default_dtype(torch.float64)
    root = Path(folder)
    out: dict[str, Any] = {}
    for name in RUNS:
        ckpt = root / name / "resumed" / "checkpoint.pt"
        train(config(name, world_size, iterations=1), checkpoint=ckpt)
        if rank == 0:
            shutil.copy(ckpt, root / name / "first.pt")  # the first meta-gradient
        train(config(name, world_size), checkpoint=ckpt, resume=True)
        train(config(name, world_size), checkpoint=root / name / "straight" / "checkpoint.pt")
    # rank 1 gets a folder of its own: it must stay empty
    own = root / f"own{rank}" / "checkpoint.pt"
    train(config("adam-group", world_size, iterations=2, checkpoint_every=1), checkpoint=own)
    cfg = config("sgd-batch", world_size, iterations=3, checkpoint_every=1, val_every=0)
    try:
        train(
            cfg,
            checkpoint=root / "nan" / "checkpoint.pt",
            benchmark=PoisonedBenchmark(cfg, bad=1, task=2),  # type: ignore[arg-type]
        )  # a NaN in task 2: rank 1's block of 3 tasks over 2 ranks is tasks 1 and 2
    except mirroropt.NonFiniteError as error:
        out["nan"] = str(error)
    try:
        train(cfg, checkpoint=root / "stop" / "checkpoint.pt", stop=_StopOnRankOne(rank))
    except TrainingInterrupted as stopped:
        out["stop"] = stopped.iteration
    # a gradient on rank 0 only is summed; a parameter without one on every rank keeps None
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    if rank == 0:
        used.grad = torch.full((2,), 3.0)
    Ranks.current().sum_gradients([used, unused])
    out["grads"] = (used.grad, unused.grad)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[Any]]]:
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    ranks = md.launch(runs, str(two), world_size=2, timeout_s=120)
    previous = torch.get_default_dtype()
    try:
        reference = runs(0, 1, str(one))
    finally:
        torch.set_default_dtype(previous)
    yield one, two, [reference, *ranks]


def flat(state: dict[str, Any]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in state.values() if t.is_floating_point()])


def meta_gradient(payload: dict[str, Any]) -> torch.Tensor:
    """The first meta-gradient, from the meta-optimizer's state after one step: SGD's momentum
    buffer is the gradient, Adam's first moment (1 − β₁) times it."""
    parts = []
    for state in payload["optimizer"]["state"].values():
        if "momentum_buffer" in state:
            parts.append(state["momentum_buffer"].reshape(-1))
        else:
            parts.append(state["exp_avg"].reshape(-1) / 0.1)
    return torch.cat(parts)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_give_the_meta_gradients_and_the_run_of_one_process(
    folders: tuple[Path, Path, list[Any]], name: str
) -> None:
    one, two, _ = folders
    g1, g2 = (meta_gradient(load_checkpoint(f / name / "first.pt")) for f in (one, two))
    assert g1.dtype == torch.float64 and float(g1.abs().max()) > 1e-6
    assert rel(g2, g1) < 1e-12
    a, b = (load_checkpoint(f / name / "straight" / "checkpoint.pt") for f in (one, two))
    assert rel(flat(b["learner"]), flat(a["learner"])) < 1e-12  # the same training run
    assert not torch.equal(
        flat(b["learner"]), flat(load_checkpoint(two / name / "first.pt")["learner"])
    )
    for r1, r2 in zip(a["history"], b["history"]):
        assert abs(r2["loss"] - r1["loss"]) < 1e-12 * abs(r1["loss"])
        assert abs(r2["metric"] - r1["metric"]) < 1e-12
    assert b["validation"] == a["validation"] and b["best"] == a["best"]
    assert (a["config"]["world_size"], b["config"]["world_size"]) == (1, 2)


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_resume_bit_exactly(folders: tuple[Path, Path, list[Any]], name: str) -> None:
    _, two, _ = folders
    resumed = load_checkpoint(two / name / "resumed" / "checkpoint.pt")
    straight = load_checkpoint(two / name / "straight" / "checkpoint.pt")
    assert resumed["iteration"] == straight["iteration"] == ITERATIONS
    for key, value in straight["learner"].items():
        assert torch.equal(resumed["learner"][key], value), key
    for key, state in straight["optimizer"]["state"].items():
        for field, value in state.items():
            assert torch.equal(
                torch.as_tensor(resumed["optimizer"]["state"][key][field]), torch.as_tensor(value)
            )
    assert resumed["history"] == straight["history"]


def test_only_rank_zero_writes(folders: tuple[Path, Path, list[Any]]) -> None:
    _, two, _ = folders
    assert sorted(p.name for p in (two / "own0").iterdir()) == [
        "checkpoint.best.pt",
        "checkpoint.pt",
    ]
    assert not (two / "own1").exists()


def test_a_non_finite_task_on_one_rank_stops_every_rank(
    folders: tuple[Path, Path, list[Any]],
) -> None:
    _, two, (reference, rank0, rank1) = folders
    step = r"Training stopped at meta-iteration 2 of 3: "
    kept = r".*kept the last good checkpoint .*checkpoint.pt \(iteration 1\)"
    assert re.match(
        step + r"Task 2 of 3: The gradient of `loss_fn` at inner step 0", reference["nan"]
    )
    # the failing rank names the task in the whole meta-batch, the other one names that rank
    assert re.match(step + r"Task 2 of 3 \(on rank 1 of 2\): The gradient .*" + kept, rank1["nan"])
    assert re.match(step + r"rank 1 of 2 found a non-finite value" + kept, rank0["nan"])
    assert load_checkpoint(two / "nan" / "checkpoint.pt")["iteration"] == 1


def test_a_stop_on_one_rank_stops_every_rank_after_the_same_iteration(
    folders: tuple[Path, Path, list[Any]],
) -> None:
    _, two, (_, rank0, rank1) = folders
    assert rank0["stop"] == rank1["stop"] == 2
    assert load_checkpoint(two / "stop" / "checkpoint.pt")["iteration"] == 2


def test_gradients_summed_over_ranks_skip_parameters_no_rank_has_a_gradient_for(
    folders: tuple[Path, Path, list[Any]],
) -> None:
    for result in folders[2]:
        used, unused = result["grads"]
        assert used.tolist() == [3.0, 3.0] and unused is None


def test_resuming_on_another_world_size_is_refused(
    folders: tuple[Path, Path, list[Any]], tmp_path: Path
) -> None:
    _, two, _ = folders
    ckpt = tmp_path / "checkpoint.pt"
    shutil.copy(two / "sgd-batch" / "straight" / "checkpoint.pt", ckpt)
    with pytest.raises(
        ValueError,
        match=r"was trained on 2 process\(es\) \(world_size\); resuming on 1 would change its "
        r"results .*: resume with torchrun --nproc_per_node 2\.",
    ):
        train(config("sgd-batch", 1, iterations=4), checkpoint=ckpt, resume=True)


def test_world_size_must_match_the_process_group_and_the_meta_batch() -> None:
    with pytest.raises(
        ValueError, match=r"`world_size` is 2 in the config but 1 process\(es\) run it"
    ):
        train(config("sgd-batch", 2))
    with pytest.raises(ValueError, match=r"`meta_batch` \(1\) must be at least `world_size` \(2\)"):
        TrainConfig(meta_batch=1, world_size=2)
    with pytest.raises(ValueError, match=r"`world_size` must be a positive int, got 0"):
        TrainConfig(world_size=0)


# ------------------------------------------------------------------------------------------------
# the command line under torchrun

TINY = [
    "--benchmark", "synthetic", "--n-way", "3", "--q-query", "2", "--width", "4", "--steps", "2",
    "--lr", "0.1", "--meta-batch", "3", "--no-progress", "--checkpoint-every", "1",
]  # fmt: skip


def torchrun(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    return subprocess.run(
        [*command, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_torchrun_cli_trains_like_one_process_and_only_rank_zero_writes(tmp_path: Path) -> None:
    argv = [*TINY, "--meta-optimizer", "sgd", "--meta-lr", "0.1", "--iterations", "3"]
    argv += ["--val-every", "2", "--val-tasks", "2", "--eval-tasks", "2", "--max-steps", "1"]
    done = torchrun("-m", "mirroropt", "train", *argv, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained iterations 1–3 in") == 1  # one rank printed
    assert "on 2 processes into" in done.stdout
    assert main(["train", *argv, "--out", str(tmp_path / "one")]) == 0
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "one").iterdir())
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("one", "two"))
    assert (a["config"]["world_size"], b["config"]["world_size"]) == (1, 2)
    # float32: equal up to the order of the meta-gradient's additions
    assert rel(flat(b["learner"]), flat(a["learner"])) < 1e-5
    assert b["best"]["iteration"] == a["best"]["iteration"]
    with pytest.raises(SystemExit, match=r"was trained on 2 process\(es\) \(world_size\)"):
        main(["train", *argv, "--out", str(tmp_path / "two"), "--resume"])


def test_torchrun_cli_stops_every_rank_when_one_raises(tmp_path: Path) -> None:
    harness = str(Path(__file__).with_name("_torchrun_main.py"))
    done = torchrun(
        harness, "--fail-rank", "1", "--fail-at", "2", "--",
        "train", *TINY, "--iterations", "4", "--out", str(tmp_path), "--dist-timeout", "60",
    )  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("mirroropt train")]
    assert (
        "mirroropt train: error: rank 1 of 2 failed: RuntimeError: injected failure on rank 1"
        in lines
    )
    assert (
        "mirroropt train: error: rank 0 of 2: rank 1 of 2 raised at meta-iteration 2 and every "
        "rank stops (its own message says why)." in lines
    )
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 1  # the last good one


def test_only_train_runs_under_torchrun(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit, match=r"only `train` runs on several processes"):
        main(["eval", "--checkpoint", str(tmp_path / "c.pt")])
    monkeypatch.delenv("RANK")
    with pytest.raises(SystemExit, match=r"WORLD_SIZE='2' is set but RANK/LOCAL_RANK are missing"):
        main(["train", *TINY, "--out", str(tmp_path)])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)  # WORLD_SIZE and RANK set by hand
    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY, "--out", str(tmp_path), "--iterations", "1"])
    assert exc.value.code == 1
    assert re.fullmatch(
        r"mirroropt train: error: rank 1 of 2 could not join the gloo process group \(start it "
        r"with torchrun\): .*MASTER_ADDR.*\n",
        capsys.readouterr().err,
    )
    assert not any(tmp_path.iterdir())
