"""Every map's prepared() equals its to_primal, in values and in meta-gradients (float64)."""

from __future__ import annotations

import pytest
import torch

from tests.registry import CASES, SHAPES, MapCase


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_prepared_equals_to_primal_with_its_meta_gradients(case: MapCase) -> None:
    g = case.build_trained(SHAPES)
    gen = torch.Generator().manual_seed(5)
    z = {
        n: (2 * torch.rand(s, generator=gen, dtype=torch.float64) - 1).requires_grad_()
        for n, s in SHAPES.items()
    }
    prepared = g.prepared()
    leaves = [*z.values(), *g.parameters()]
    weights = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    results = []
    for to_primal in (g.to_primal, prepared):
        out = to_primal(z)
        twice = to_primal({n: out[n] * 0.5 for n in out})  # the same prepared map, applied again
        loss = sum((weights[n] * (out[n] + twice[n])).sum() for n in SHAPES)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)  # type: ignore[arg-type]
        flat = [torch.zeros_like(p) if gr is None else gr for gr, p in zip(grads, leaves)]
        results.append((out, flat))
    (out_a, grads_a), (out_b, grads_b) = results
    for n in SHAPES:
        torch.testing.assert_close(out_b[n], out_a[n], rtol=1e-13, atol=1e-13)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-12)
