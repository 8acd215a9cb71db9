"""Sinusoid regression tasks from the MAML paper (Finn, Abbeel & Levine, 2017)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SinusoidBatch", "SinusoidTaskSampler", "sample_sinusoid_tasks", "sinusoid_targets"]


@dataclass(frozen=True)
class SinusoidBatch:
    """A batch of sinusoid regression tasks.

    Attributes:
        x_support: ``[tasks, shots, 1]`` inputs of the support (inner-loop) set.
        y_support: ``[tasks, shots, 1]`` targets ``A sin(x - φ)``.
        x_query: ``[tasks, queries, 1]`` inputs of the query (outer-loop) set.
        y_query: ``[tasks, queries, 1]`` targets.
        amplitude: ``[tasks]`` amplitude ``A`` of each task.
        phase: ``[tasks]`` phase ``φ`` of each task.
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor


def sinusoid_targets(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``y = A sin(x - φ)`` with ``A``, ``φ`` broadcast over the trailing dims of ``x``.

    Args:
        x: ``[tasks, n, 1]`` inputs.
        amplitude: ``[tasks]``.
        phase: ``[tasks]``.

    Returns:
        ``[tasks, n, 1]`` targets.
    """
    return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])


def sample_sinusoid_tasks(
    tasks: int,
    shots: int,
    queries: int,
    *,
    generator: torch.Generator,
    amplitude_range: tuple[float, float] = (0.1, 5.0),
    phase_range: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
    dtype: torch.dtype = torch.float32,
) -> SinusoidBatch:
    """Draw a batch of sinusoid tasks as in MAML §5.1.

    Each task is ``y = A sin(x - φ)`` with ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``; support and query
    inputs are drawn independently from ``U[-5, 5]``. Noise-free, as in the paper.

    Args:
        tasks: number of tasks ``B`` (≥ 1).
        shots: support points per task ``K`` (≥ 1).
        queries: query points per task (≥ 1).
        generator: the ``torch.Generator`` that supplies all randomness.
        amplitude_range, phase_range, x_range: ``(low, high)`` of the uniform distributions.
        dtype: floating dtype of every returned tensor.

    Returns:
        A :class:`SinusoidBatch` with ``x_support``/``y_support`` ``[B, K, 1]``,
        ``x_query``/``y_query`` ``[B, queries, 1]``, ``amplitude`` and ``phase`` ``[B]``.

    Raises:
        ValueError: if a count is < 1 or a range has ``low > high``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> b = sample_sinusoid_tasks(4, 10, 5, generator=g)
        >>> tuple(b.x_support.shape), tuple(b.y_query.shape)
        ((4, 10, 1), (4, 5, 1))

    References:
        Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks. ICML 2017. arXiv:1703.03400.
    """
    for arg, value in (("tasks", tasks), ("shots", shots), ("queries", queries)):
        if int(value) != value or value < 1:
            raise ValueError(f"`{arg}` must be an integer ≥ 1, got {value}.")
    for arg, (low, high) in (
        ("amplitude_range", amplitude_range),
        ("phase_range", phase_range),
        ("x_range", x_range),
    ):
        if not low <= high:
            raise ValueError(f"`{arg}` must be (low, high) with low ≤ high, got {(low, high)}.")

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        u = torch.rand(shape, generator=generator, dtype=dtype)
        return low + (high - low) * u

    amplitude = uniform((tasks,), *amplitude_range)
    phase = uniform((tasks,), *phase_range)
    x_support = uniform((tasks, shots, 1), *x_range)
    x_query = uniform((tasks, queries, 1), *x_range)
    return SinusoidBatch(
        x_support=x_support,
        y_support=sinusoid_targets(x_support, amplitude, phase),
        x_query=x_query,
        y_query=sinusoid_targets(x_query, amplitude, phase),
        amplitude=amplitude,
        phase=phase,
    )


class SinusoidTaskSampler:
    """Seeded, iterable source of :class:`SinusoidBatch` (a thin shell on
    :func:`sample_sinusoid_tasks`).

    The sampler owns one ``torch.Generator`` seeded with ``seed``; two samplers with the same
    arguments yield identical batches.

    Args:
        tasks, shots, queries: as in :func:`sample_sinusoid_tasks`.
        seed: seed of the sampler's generator.
        **kwargs: ranges and dtype, passed to :func:`sample_sinusoid_tasks`.

    Example:
        >>> sampler = SinusoidTaskSampler(tasks=25, shots=10, queries=10, seed=0)
        >>> batch = next(iter(sampler))
        >>> tuple(batch.amplitude.shape)
        (25,)
    """

    def __init__(
        self,
        tasks: int,
        shots: int,
        queries: int,
        *,
        seed: int,
        amplitude_range: tuple[float, float] = (0.1, 5.0),
        phase_range: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._kwargs = dict(
            amplitude_range=amplitude_range, phase_range=phase_range, x_range=x_range, dtype=dtype
        )
        self.tasks, self.shots, self.queries = tasks, shots, queries
        self.generator = torch.Generator().manual_seed(seed)
        # Validate eagerly, with a throwaway generator so that the stream is untouched.
        sample_sinusoid_tasks(
            tasks, shots, queries, generator=torch.Generator().manual_seed(0), **self._kwargs
        )

    def sample(self) -> SinusoidBatch:
        """Draw the next batch."""
        return sample_sinusoid_tasks(
            self.tasks, self.shots, self.queries, generator=self.generator, **self._kwargs
        )

    def __iter__(self) -> SinusoidTaskSampler:
        return self

    def __next__(self) -> SinusoidBatch:
        return self.sample()
