"""A benchmark that turns one meta-iteration's training batch non-finite, for the NaN tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mirroropt.workflow import TrainConfig, build_benchmark
from mirroropt.workflow._tasks import task_seed


class PoisonedBenchmark:
    """``build(cfg)`` with one NaN pixel in task ``task`` of meta-iteration ``bad``'s batch
    (0-based: the batch that meta-iteration ``bad + 1`` trains on)."""

    def __init__(
        self, cfg: TrainConfig, bad: int, task: int = 1, build: Callable[..., Any] = build_benchmark
    ) -> None:
        self.inner = build(cfg)
        self.bad_seed, self.task = task_seed(cfg.seed, "train", bad), task

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def sample(self, split: str, seed: int, tasks: int) -> object:
        batch = self.inner.sample(split, seed, tasks)
        if split == "train" and seed == self.bad_seed:
            batch.x_support[self.task, 0, 0, 0, 0] = float("nan")
        return batch
