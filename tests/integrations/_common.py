"""Shared fixtures for the integration tests: a tiny float64 model, tasks, maps, core references."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import mirroropt
from mirroropt.maps import Diagonal, Identity, MirrorMap
from tests.integrations._maps import CoupledShift
from tests.registry import perturbed

LR = 0.3
STEPS = 3


def make_model(seed: int = 0) -> nn.Module:
    """A 2-layer tanh MLP, float64 (small enough for exact and gradcheck tests)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def make_tasks(n: int = 3, seed: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_spt, y_spt, x_qry, y_qry) with a leading task dimension n, regression targets."""
    gen = torch.Generator().manual_seed(seed)
    x_spt = torch.randn(n, 6, 3, generator=gen, dtype=torch.float64)
    x_qry = torch.randn(n, 6, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(n, 3, 2, generator=gen, dtype=torch.float64)
    return x_spt, torch.tanh(x_spt @ w), x_qry, torch.tanh(x_qry @ w)


def perturb(map_: MirrorMap, seed: int = 2, scale: float = 0.3) -> MirrorMap:
    """The registry's seeded perturbation, with this file's defaults."""
    return perturbed(map_, scale=scale, seed=seed)


#: name → builder of a (perturbed, float64) map for a model.
MAP_BUILDERS: dict[str, Callable[[nn.Module], MirrorMap]] = {
    "identity": lambda m: Identity(m),
    "diagonal": lambda m: perturb(Diagonal(m)),
    "coupled": lambda m: perturb(CoupledShift(m)),
}
NONTRIVIAL = ["diagonal", "coupled"]


def meta_params(model: nn.Module, mirror_map: MirrorMap) -> list[Tensor]:
    return list(model.parameters()) + list(mirror_map.parameters())


def core_meta_grads(
    model: nn.Module,
    mirror_map: MirrorMap,
    tasks: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    lr: float | Tensor = LR,
    steps: int = STEPS,
    first_order: bool = False,
    extra: tuple[Tensor, ...] = (),
) -> tuple[Tensor, list[Tensor]]:
    """Σ_tasks query loss after ``mirroropt.adapt``, and its gradient w.r.t. model + map (+extra)."""
    phi0 = dict(model.named_parameters())
    total = torch.zeros((), dtype=torch.float64)
    for x_s, y_s, x_q, y_q in zip(*tasks):
        phi = mirroropt.adapt(
            mirror_map,
            lambda p, x=x_s, y=y_s: F.mse_loss(torch.func.functional_call(model, p, (x,)), y),
            phi0,
            lr=lr,
            steps=steps,
            first_order=first_order,
        )
        total = total + F.mse_loss(torch.func.functional_call(model, phi, (x_q,)), y_q)
    wrt = meta_params(model, mirror_map) + list(extra)
    return total, list(torch.autograd.grad(total, wrt))


def assert_close(actual: list[Tensor], expected: list[Tensor], rtol: float = 1e-10) -> None:
    """Relative agreement of every tensor, measured against the largest entry of the reference."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        a, e = a.detach(), e.detach()
        scale = e.abs().max().clamp_min(1e-300)
        assert float((a - e).abs().max() / scale) <= rtol, (a, e)


def assert_equal(actual: list[Tensor], expected: list[Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e), (a - e).abs().max()


class CountCalls(TorchFunctionMode):
    """Counts the calls of ``funcs`` (torch functions and tensor methods) made inside it."""

    def __init__(self, funcs: Collection[Any]) -> None:
        super().__init__()
        self.funcs = funcs
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in self.funcs:
            self.count += 1
        return func(*args, **(kwargs or {}))
