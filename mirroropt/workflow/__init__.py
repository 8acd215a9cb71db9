"""The meta-learning workflow: benchmarks, meta-training, evaluation, meta-objectives, reports.

Used by ``python -m mirroropt train|eval|demo|reproduce``; every piece is also a function::

    cfg = TrainConfig(benchmark="fontglot", map="diagonal", iterations=300)
    run = train(cfg, checkpoint="runs/diag.pt", progress=True)
    result = evaluate(run.learner, run.benchmark, lr=cfg.lr, steps=10, tasks=600)
    write_report({"Meta-SGD": result}, "runs/diag")

Plots and progress bars need the optional extra ``mirroropt[workflow]`` (matplotlib, tqdm),
imported lazily.
"""

from __future__ import annotations

from mirroropt.workflow._checkpoint import CheckpointError
from mirroropt.workflow._evaluate import EvalResult, evaluate
from mirroropt.workflow._learner import MetaLearner, TrainConfig, build_learner, meta_loss
from mirroropt.workflow._malloc import keep_freed_memory
from mirroropt.workflow._report import markdown_table, plot_curves, plot_training, write_report
from mirroropt.workflow._stats import mean_ci
from mirroropt.workflow._tasks import (
    BENCHMARKS,
    Benchmark,
    TaskBatch,
    build_benchmark,
    task_seed,
)
from mirroropt.workflow._train import (
    AdaptiveMetaStep,
    TrainingInterrupted,
    TrainResult,
    load_checkpoint,
    make_meta_optimizer,
    save_checkpoint,
    train,
)
from mirroropt.workflow.objectives import (
    bregman_divergence,
    check_metamd_supported,
    dual_norm_sq,
    metamd_bound,
)

__all__ = [
    "BENCHMARKS",
    "AdaptiveMetaStep",
    "Benchmark",
    "CheckpointError",
    "EvalResult",
    "MetaLearner",
    "TaskBatch",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "bregman_divergence",
    "build_benchmark",
    "build_learner",
    "check_metamd_supported",
    "dual_norm_sq",
    "evaluate",
    "keep_freed_memory",
    "load_checkpoint",
    "make_meta_optimizer",
    "markdown_table",
    "mean_ci",
    "meta_loss",
    "metamd_bound",
    "plot_curves",
    "plot_training",
    "save_checkpoint",
    "task_seed",
    "train",
    "write_report",
]
