"""Checks run before any work: every argument against the data, the model and the run folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mirroropt.workflow._learner import MetaLearner, TrainConfig, build_learner
from mirroropt.workflow._tasks import SPLITS, Benchmark

__all__ = ["check_benchmark", "check_map_applies", "check_out_dir", "preflight"]


def check_out_dir(out: str | os.PathLike[str], *, argument: str = "--out") -> Path:
    """``out`` as a folder path; raise if it exists and is not a folder.

    Raises:
        ValueError: if ``out`` is an existing file (or other non-folder).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"`{argument}` {str(path)!r} is a file, not a folder; give a folder path.")
    return path


def check_benchmark(bench: Benchmark) -> None:
    """Draw one task from every split, so an episode shape no split can serve fails now.

    (``n_way`` above a split's number of classes, ``k_shot + q_query`` above its samples per
    class, ...) instead of after training, when evaluation reaches that split.

    Raises:
        ValueError: naming the split and what it lacks.
    """
    for split in SPLITS:
        try:
            bench.sample(split, 0, 1)
        except ValueError as error:
            raise ValueError(
                f"{bench.name}: the {split!r} split cannot serve tasks: {error}"
            ) from None


def check_map_applies(cfg: TrainConfig, bench: Benchmark) -> MetaLearner:
    """Build the learner and map its initialization to the dual once, eagerly.

    A map whose domain the backbone's parameters leave (the entropic map needs non-negative
    parameters; a Conv4's weights are signed) is refused here, before any meta-iteration.

    Raises:
        ValueError: ``--map NAME cannot be used on BENCHMARK: <reason>``.
    """
    learner = build_learner(cfg, bench)
    phi0, _ = learner.start()
    try:
        if phi0 is not None:
            with torch.no_grad():
                learner.mirror_map.to_dual(phi0)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--map {cfg.map} cannot be used on {bench.name}: {error}") from None
    return learner


def preflight(cfg: TrainConfig, bench: Benchmark) -> None:
    """:func:`check_benchmark` and :func:`check_map_applies`: everything ``train`` can check first."""
    check_benchmark(bench)
    check_map_applies(cfg, bench)
