"""Evaluation: metric and losses at every inner step k = 0 … K over many test tasks, ± 95% CI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mirroropt._batching import map_tasks
from mirroropt._types import Params
from mirroropt.functional import adapt_trajectory
from mirroropt.workflow._learner import MetaLearner
from mirroropt.workflow._stats import mean_ci
from mirroropt.workflow._tasks import Benchmark, task_seed

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """Per-step evaluation curves over ``tasks`` test tasks.

    Every curve is a dict ``{"mean": [...], "ci95": [...]}`` indexed by inner step
    ``k = 0 … steps`` (``ci95`` is the half-width from :func:`mean_ci`).

    Attributes:
        metric_name: ``"accuracy"`` or ``"mse"`` (query set).
        metric: query metric after k steps.
        query_loss: query loss after k steps.
        support_loss: training (support) loss at φ_k — the training-loss-vs-step curve.
        tasks: number of evaluation tasks.
        label: a name for tables and plots.
    """

    metric_name: str
    metric: dict[str, list[float]]
    query_loss: dict[str, list[float]]
    support_loss: dict[str, list[float]]
    tasks: int
    label: str = ""

    @property
    def steps(self) -> int:
        return len(self.metric["mean"]) - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "metric_name": self.metric_name,
            "tasks": self.tasks,
            "metric": self.metric,
            "query_loss": self.query_loss,
            "support_loss": self.support_loss,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(
            data["metric_name"],
            data["metric"],
            data["query_loss"],
            data["support_loss"],
            data["tasks"],
            data.get("label", ""),
        )


def evaluate(
    learner: MetaLearner,
    benchmark: Benchmark,
    *,
    lr: float,
    steps: int,
    tasks: int = 600,
    seed: int = 0,
    batch_size: int = 25,
    split: str = "test",
    label: str = "",
    progress: bool = False,
    check_finite: bool = True,
) -> EvalResult:
    """Adapt to ``tasks`` tasks of ``split`` with K = ``steps`` inner steps and record every k.

    Uses :func:`mirroropt.adapt_trajectory` (first-order: evaluation needs no meta-gradient) and
    :func:`mirroropt.map_tasks` in batches of ``batch_size`` tasks. Batch ``i`` of the evaluation is
    ``benchmark.sample(split, task_seed(seed, split, i))``: the same tasks for every method given
    the same seed, which makes paired comparisons meaningful.

    With ``check_finite=False`` a task whose adapted model turns non-finite (a map that diverges
    beyond its training horizon, say at k = 8 > K) stays in the curves, whose means at those k
    become inf or NaN, instead of raising :class:`mirroropt.NonFiniteError`.

    Raises:
        ValueError: if ``tasks`` < 2 or ``batch_size`` < 1 or ``steps`` < 0.
    """
    if tasks < 2:
        raise ValueError(f"`tasks` must be ≥ 2 for a confidence interval, got {tasks}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be ≥ 1, got {batch_size}.")
    if steps < 0:
        raise ValueError(f"`steps` must be ≥ 0, got {steps}.")
    mirror_map = learner.inner_map()
    phi0, z0 = learner.start()

    def per_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        def support_loss(phi: Params) -> Tensor:
            return benchmark.loss(learner.predict(phi, xs), ys)

        traj = adapt_trajectory(
            mirror_map,
            support_loss,
            phi0,
            z=z0,
            lr=lr,
            steps=steps,
            first_order=True,
            check_finite=check_finite,
        )
        metric, qloss, sloss = [], [], []
        for phi in traj.phi:
            out = learner.predict(phi, xq)
            metric.append(benchmark.metric(out, yq))
            qloss.append(benchmark.loss(out, yq))
        sloss = [*traj.losses, support_loss(traj.phi[-1])]
        return torch.stack(metric), torch.stack(qloss), torch.stack(sloss)

    batches = range((tasks + batch_size - 1) // batch_size)
    if progress:
        from mirroropt.workflow._optional import require_tqdm

        batches = require_tqdm()(batches, desc=f"eval {label or ''}".strip(), dynamic_ncols=True)
    rows: list[tuple[Tensor, Tensor, Tensor]] = []
    with torch.no_grad():
        for i in batches:
            n = min(batch_size, tasks - i * batch_size)
            batch = benchmark.sample(split, task_seed(seed, split, i), n)
            rows.append(
                map_tasks(
                    per_task, *batch.tensors(), model=learner.model, check_finite=check_finite
                )
            )

    def curve(j: int) -> dict[str, list[float]]:
        values = torch.cat([r[j] for r in rows]).double()
        mean, half = mean_ci(values, dim=0)
        return {"mean": mean.tolist(), "ci95": half.tolist()}

    return EvalResult(benchmark.metric_name, curve(0), curve(1), curve(2), tasks, label)
