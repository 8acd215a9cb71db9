"""GPU-readiness of the inner loop: value checks read the device once per call, not per step."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import mirroropt as mo
from mirroropt.maps import Diagonal

SYNCS = {torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist}


class _CountSyncs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in SYNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _syncs(steps: int) -> int:
    w = torch.randn(5, dtype=torch.float64)
    g = Diagonal({"w": w}).double()
    lr = torch.tensor(0.1, dtype=torch.float64)
    with _CountSyncs() as counter:
        mo.adapt(g, lambda p: (p["w"] ** 2).sum(), {"w": w}, lr=lr, steps=steps)
    return counter.count


def test_host_device_syncs_do_not_grow_with_the_number_of_steps() -> None:
    assert _syncs(1) == _syncs(7)
    assert _syncs(7) <= 2  # the lr check and the finite-gradient check, once each


def test_a_non_finite_gradient_at_a_later_step_is_reported_with_its_step() -> None:
    phi = {"a": torch.tensor([1.0, 2.0]), "w": torch.tensor([0.5, 0.2])}
    g = Diagonal(phi)
    # the gradient sqrt'(w) is finite at step 0; the step takes w to a negative value: NaN at step 1
    with pytest.raises(ValueError, match=r"at inner step 1 is not finite for \['w'\]"):
        mo.adapt(g, lambda p: p["a"].sum() + torch.sqrt(p["w"]).sum(), phi, lr=1.0, steps=3)
