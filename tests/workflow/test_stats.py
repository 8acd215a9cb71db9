"""mean_ci against the direct normal-approximation formula (documented in its docstring)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirroropt.workflow import mean_ci


def test_matches_direct_formula_with_unbiased_std() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.6, 0.2, size=(137, 4))
    mean, half = mean_ci(torch.from_numpy(x))
    z975 = 1.959963984540054  # Φ⁻¹(0.975)
    expected = z975 * x.std(axis=0, ddof=1) / math.sqrt(137)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(half.numpy(), expected, rtol=1e-12)


def test_two_point_closed_form_and_other_dim_and_confidence() -> None:
    # values {0, 1}: s = √½, half-width = z · √½ / √2 = z / 2
    m, h = mean_ci(torch.tensor([[0.0, 1.0]]), dim=1)
    assert float(m) == 0.5 and float(h) == pytest.approx(1.959963984540054 / 2, rel=1e-6)
    _, h90 = mean_ci(torch.tensor([0.0, 1.0]), confidence=0.9)
    assert float(h90) == pytest.approx(1.6448536269514722 / 2, rel=1e-6)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"`values` needs at least 2 entries along dim 0, got 1"):
        mean_ci(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"`confidence` must be a float in \(0, 1\), got 1.5"):
        mean_ci(torch.tensor([1.0, 2.0]), confidence=1.5)
    with pytest.raises(
        TypeError, match=r"`values` must be a floating-point tensor, got torch.int64"
    ):
        mean_ci(torch.tensor([1, 2]))
