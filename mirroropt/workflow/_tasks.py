"""Task suites ("benchmarks" in the CLI): a model factory, a seeded task sampler and the task loss/metric, by name.

Not the speed scripts of `benchmarks/`; this module was `_benchmarks.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirroropt.models import Conv4, SinusoidMLP

__all__ = ["BENCHMARKS", "Benchmark", "TaskBatch", "build_benchmark", "task_seed"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskBatch:
    """``B`` tasks: support and query sets with a leading task dimension."""

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.x_support, self.y_support, self.x_query, self.y_query


def task_seed(seed: int, split: str, index: int, stream: int = 0) -> int:
    """A 63-bit seed for batch ``index`` of ``split``: batches are pure functions of their seeds.

    Training draws batch ``t`` from ``task_seed(seed, "train", t)``, so resuming at iteration
    ``t`` needs no sampler state, and two runs with equal seeds see identical tasks.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    words = np.random.SeedSequence([seed, SPLITS.index(split), index, stream]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & (2**63 - 1)


@dataclass
class Benchmark:
    """A few-shot benchmark.

    Attributes:
        name: e.g. ``"fontglot-5w1s"``.
        kind: ``"classification"`` (cross-entropy, metric = accuracy, higher is better) or
            ``"regression"`` (MSE, metric = MSE, lower is better).
        make_model: builds a freshly initialized backbone.
        sample: ``sample(split, seed, tasks) -> TaskBatch``, a pure function of its arguments
            (``split`` in ``"train"``, ``"val"``, ``"test"``; ``seed`` from :func:`task_seed`).
    """

    name: str
    kind: Literal["classification", "regression"]
    make_model: Callable[[], nn.Module]
    sample: Callable[[str, int, int], TaskBatch]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_name(self) -> str:
        return "accuracy" if self.kind == "classification" else "mse"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Task loss: cross-entropy or mean squared error."""
        if self.kind == "classification":
            return F.cross_entropy(output, target)
        return F.mse_loss(output, target)

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        """Accuracy (classification) or MSE (regression), a scalar tensor."""
        if self.kind == "classification":
            return (output.argmax(-1) == target).to(output.dtype).mean()
        return F.mse_loss(output, target)


def _fontglot(cfg: Any) -> Benchmark:
    from mirroropt.data import load_fontglot

    path = getattr(cfg, "fontglot", "") or None
    bench = _episodic(cfg, "fontglot", lambda split: load_fontglot(split, path=path), image_size=28)
    if path is not None:  # verify a user's file (checksum, arrays) before any work
        load_fontglot("train", path=path)
    return bench


def _omniglot(cfg: Any) -> Benchmark:
    from mirroropt.data import load_omniglot

    _need_root(cfg, "omniglot")
    split_of: dict[str, Literal["background", "evaluation"]] = {
        "train": "background",
        "val": "evaluation",
        "test": "evaluation",
    }
    return _episodic(
        cfg, "omniglot", lambda split: load_omniglot(cfg.data_root, split_of[split]), image_size=28
    )


def _miniimagenet(cfg: Any) -> Benchmark:
    from mirroropt.data import load_miniimagenet

    _need_root(cfg, "miniimagenet")
    return _episodic(
        cfg,
        "miniimagenet",
        lambda split: load_miniimagenet(cfg.data_root, split),  # type: ignore[arg-type]
        image_size=84,
    )


def _need_root(cfg: Any, name: str) -> None:
    if not cfg.data_root:
        raise ValueError(f"The {name} benchmark needs `--data-root` (the unpacked data set).")


def _episodic(
    cfg: Any, name: str, load: Callable[[Any], Any], *, image_size: Literal[28, 84]
) -> Benchmark:
    from mirroropt.data import Augmentation, sample_episodes

    datasets: dict[str, Any] = {}
    augmentation = Augmentation() if cfg.augment else None

    def get(split: str) -> Any:
        if split not in datasets:
            datasets[split] = load(split)
        return datasets[split]

    def sample(split: str, seed: int, tasks: int) -> TaskBatch:
        b = sample_episodes(
            get(split),
            n_way=cfg.n_way,
            k_shot=cfg.k_shot,
            q_query=cfg.q_query,
            batch_size=tasks,
            rng=np.random.default_rng(seed),
            augmentation=augmentation if split == "train" or cfg.augment_eval else None,
        )
        return TaskBatch(b.x_support, b.y_support, b.x_query, b.y_query)

    def make_model() -> nn.Module:
        channels = 3 if name == "miniimagenet" else 1
        return Conv4(
            cfg.n_way, in_channels=channels, width=cfg.width, norm=cfg.norm, image_size=image_size
        )

    label = f"{name}{'-aug' if cfg.augment else ''}-{cfg.n_way}w{cfg.k_shot}s"
    return Benchmark(label, "classification", make_model, sample)


def _sinusoid(cfg: Any) -> Benchmark:
    from mirroropt.data import sample_sinusoid_tasks

    def sample(split: str, seed: int, tasks: int) -> TaskBatch:
        b = sample_sinusoid_tasks(
            tasks, cfg.k_shot, cfg.q_query, generator=torch.Generator().manual_seed(seed)
        )
        return TaskBatch(b.x_support, b.y_support, b.x_query, b.y_query)

    return Benchmark(f"sinusoid-{cfg.k_shot}shot", "regression", SinusoidMLP, sample)


def _synthetic(cfg: Any) -> Benchmark:
    """Synthetic N-way K-shot images: each class a random smooth blob pattern, samples noisy.

    Needs no data files; meant for smoke tests and the CLI's ``--quick`` runs, not for claims.
    """
    side = 28

    def sample(split: str, seed: int, tasks: int) -> TaskBatch:
        gen = torch.Generator().manual_seed(seed)
        n, k, q = cfg.n_way, cfg.k_shot, cfg.q_query
        coarse = torch.rand(tasks, n, 1, 7, 7, generator=gen)
        protos = F.interpolate(coarse.reshape(tasks * n, 1, 7, 7), size=(side, side))
        protos = protos.reshape(tasks, n, 1, 1, side, side)
        noise = 0.35 * torch.randn(tasks, n, k + q, 1, side, side, generator=gen)
        x = (protos + noise).clamp(0.0, 1.0)
        y = torch.arange(n)[None, :, None].expand(tasks, n, k + q)
        xs = x[:, :, :k].reshape(tasks, n * k, 1, side, side)
        xq = x[:, :, k:].reshape(tasks, n * q, 1, side, side)
        ys = y[:, :, :k].reshape(tasks, n * k)
        yq = y[:, :, k:].reshape(tasks, n * q)
        return TaskBatch(xs.contiguous(), ys.contiguous(), xq.contiguous(), yq.contiguous())

    def make_model() -> nn.Module:
        return Conv4(cfg.n_way, width=cfg.width, norm=cfg.norm)

    return Benchmark(f"synthetic-{cfg.n_way}w{cfg.k_shot}s", "classification", make_model, sample)


#: Every benchmark by its command-line name.
BENCHMARKS: dict[str, Callable[[Any], Benchmark]] = {
    "fontglot": _fontglot,
    "omniglot": _omniglot,
    "miniimagenet": _miniimagenet,
    "sinusoid": _sinusoid,
    "synthetic": _synthetic,
}


def build_benchmark(cfg: Any, *, device: str | torch.device | None = None) -> Benchmark:
    """The :class:`Benchmark` named by ``cfg.benchmark`` (a :class:`TrainConfig`).

    Args:
        cfg: the run's configuration.
        device: where sampled task batches live (default: the CPU, where they are drawn); the
            tasks are the same on every device (they are drawn on the CPU from their seeds).

    Raises:
        ValueError: for an unknown name.
    """
    if cfg.benchmark not in BENCHMARKS:
        raise ValueError(f"`benchmark` must be one of {sorted(BENCHMARKS)}, got {cfg.benchmark!r}.")
    bench = BENCHMARKS[cfg.benchmark](cfg)
    bench.info = {"n_way": cfg.n_way, "k_shot": cfg.k_shot, "q_query": cfg.q_query}
    if device is not None and torch.device(device) != torch.device("cpu"):
        draw, target = bench.sample, torch.device(device)

        def sample(split: str, seed: int, tasks: int) -> TaskBatch:
            b = draw(split, seed, tasks)
            return TaskBatch(*(t.to(target, non_blocking=True) for t in b.tensors()))

        bench.sample = sample
        bench.info["device"] = str(target)
    return bench
