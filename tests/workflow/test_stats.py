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


# Student t 97.5% points (tables; e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2), dof 1 … 6 and 30
T975 = {
    1: 12.706204736174698,
    2: 4.302652729911275,
    3: 3.182446305284263,
    4: 2.776445105197799,
    5: 2.570581835636314,
    6: 2.446911851144969,
    30: 2.042272456301238,
}


@pytest.mark.parametrize("dof", sorted(T975))
def test_t_quantile_and_cdf_match_tables(dof: int) -> None:
    from mirroropt.workflow._stats import t_cdf, t_quantile

    assert t_quantile(0.975, dof) == pytest.approx(T975[dof], rel=1e-9)
    assert t_cdf(T975[dof], dof) == pytest.approx(0.975, abs=1e-10)
    assert t_cdf(-T975[dof], dof) == pytest.approx(0.025, abs=1e-10)
    assert t_cdf(0.0, dof) == pytest.approx(0.5, abs=1e-15)


def test_seed_ci_is_the_t_interval_not_the_normal_one() -> None:
    from mirroropt.workflow._stats import seed_ci

    values = [0.825, 0.716, 0.865]  # MAML k = 5 over three seeds (issue 8's other set)
    mean, half = seed_ci(values)
    sd = float(np.std(values, ddof=1))
    assert mean == pytest.approx(np.mean(values), rel=1e-12)
    assert half == pytest.approx(4.302652729911275 * sd / math.sqrt(3), rel=1e-9)
    assert half > 2.0 * 1.96 * sd / math.sqrt(3)  # the normal interval would be far too narrow
    with pytest.raises(ValueError, match=r"`values` needs at least 2 seeds for an interval, got 1"):
        seed_ci([0.5])


def test_paired_t_test_by_hand() -> None:
    from mirroropt.workflow._stats import paired_t_test

    a, b = [0.9, 0.8, 0.85, 0.7], [0.8, 0.78, 0.8, 0.71]
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / 2.0)
    r = paired_t_test(a, b)
    assert r["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert r["t"] == pytest.approx(t, rel=1e-12)
    # dof 3: P(T ≥ |t|) from the closed form ½ − (θ + sinθ cosθ)/π, θ = atan(t/√3)
    theta = math.atan(abs(t) / math.sqrt(3))
    assert r["p"] == pytest.approx(1 - 2 * (theta + math.sin(theta) * math.cos(theta)) / math.pi)
    assert r["ci95"] == pytest.approx(3.182446305284263 * d.std(ddof=1) / 2.0, rel=1e-9)
    assert paired_t_test([1.0, 2.0], [1.0, 2.0])["p"] == 1.0
    with pytest.raises(ValueError, match=r"`a` and `b` must pair up, got 2 and 3 values"):
        paired_t_test([1.0, 2.0], [1.0, 2.0, 3.0])


def test_paired_t_test_of_a_diverged_run_is_no_test() -> None:
    # a seed whose adapted model diverged has an infinite MSE: no p-value, never "significant"
    from mirroropt.workflow._stats import paired_t_test

    r = paired_t_test([0.1, math.inf, 0.2], [0.3, 0.3, 0.3])
    assert r["mean"] == math.inf and math.isnan(r["p"]) and math.isnan(r["ci95"])
    assert math.isnan(paired_t_test([0.1, math.nan], [0.3, 0.3])["p"])
