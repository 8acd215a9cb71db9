import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mirroropt.data import SinusoidTaskSampler, sample_sinusoid_tasks, sinusoid_targets


def test_shapes_bounds_and_exact_targets() -> None:
    b = sample_sinusoid_tasks(64, 10, 7, generator=torch.Generator().manual_seed(0))
    assert b.x_support.shape == (64, 10, 1) and b.y_support.shape == (64, 10, 1)
    assert b.x_query.shape == (64, 7, 1) and b.y_query.shape == (64, 7, 1)
    assert b.amplitude.shape == (64,) and b.phase.shape == (64,)
    assert bool((b.amplitude >= 0.1).all() and (b.amplitude <= 5.0).all())
    assert bool((b.phase >= 0).all() and (b.phase <= math.pi).all())
    for x in (b.x_support, b.x_query):
        assert bool((x >= -5).all() and (x <= 5).all())
    # y = A sin(x - φ) exactly (same float ops), per task, computed independently here.
    for t in range(64):
        a, p = float(b.amplitude[t]), float(b.phase[t])
        ref = a * torch.sin(b.x_support[t] - p)
        torch.testing.assert_close(b.y_support[t], ref, rtol=1e-6, atol=1e-6)
    # Support and query inputs are drawn independently (not the same points).
    assert not torch.equal(b.x_support[:, :7], b.x_query)


def test_distribution_covers_ranges() -> None:
    b = sample_sinusoid_tasks(4000, 1, 1, generator=torch.Generator().manual_seed(1))
    # Uniform on [0.1, 5]: mean 2.55, spread near both ends.
    assert abs(float(b.amplitude.mean()) - 2.55) < 0.1
    assert float(b.amplitude.min()) < 0.2 and float(b.amplitude.max()) > 4.9
    assert abs(float(b.phase.mean()) - math.pi / 2) < 0.1
    assert abs(float(b.x_support.mean())) < 0.2 and float(b.x_support.max()) > 4.9


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    tasks=st.integers(1, 8),
    shots=st.integers(1, 12),
    queries=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_shapes_and_targets(tasks: int, shots: int, queries: int, seed: int) -> None:
    b = sample_sinusoid_tasks(tasks, shots, queries, generator=torch.Generator().manual_seed(seed))
    assert b.x_query.shape == (tasks, queries, 1)
    torch.testing.assert_close(b.y_query, sinusoid_targets(b.x_query, b.amplitude, b.phase))
    assert bool((b.y_query.abs() <= b.amplitude[:, None, None] + 1e-6).all())


def test_sampler_is_seeded() -> None:
    a = SinusoidTaskSampler(tasks=5, shots=3, queries=2, seed=7)
    b = SinusoidTaskSampler(tasks=5, shots=3, queries=2, seed=7)
    c = SinusoidTaskSampler(tasks=5, shots=3, queries=2, seed=8)
    a1, a2, b1, c1 = next(a), next(a), next(b), next(c)
    assert torch.equal(a1.x_support, b1.x_support) and torch.equal(a1.phase, b1.phase)
    assert not torch.equal(a1.x_support, a2.x_support)
    assert not torch.equal(a1.amplitude, c1.amplitude)


def test_dtype_and_custom_range() -> None:
    b = sample_sinusoid_tasks(
        3, 4, 4, generator=torch.Generator().manual_seed(0), x_range=(0.0, 1.0), dtype=torch.float64
    )
    assert b.x_support.dtype == torch.float64
    assert bool((b.x_support >= 0).all() and (b.x_support <= 1).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tasks": 0}, r"`tasks` must be an integer ≥ 1, got 0"),
        ({"shots": -1}, r"`shots` must be an integer ≥ 1, got -1"),
        ({"queries": 0}, r"`queries` must be an integer ≥ 1"),
        ({"amplitude_range": (5.0, 0.1)}, r"`amplitude_range` must be \(low, high\)"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    args = {"tasks": 2, "shots": 2, "queries": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        sample_sinusoid_tasks(generator=torch.Generator(), **args)
    if set(kwargs) <= {"tasks", "shots", "queries"}:
        with pytest.raises(ValueError, match=match):
            SinusoidTaskSampler(seed=0, **args)
