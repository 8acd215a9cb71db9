"""Exact vmapped BatchNorm: the default vmap (BatchNorm's affine part split out) and the
per-task meta-gradients (``params``, vmapped or looped) equal the per-task loop; with ``params``
each task's graph is freed before the next (the memory-saving mode)."""

from __future__ import annotations

import gc
import weakref
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as tnf
from torch import Tensor, nn
from torch.func import functional_call

import mirroropt as mo
from mirroropt.maps import Diagonal, MirrorMap
from tests._models import conv4, image_tasks
from tests.registry import CASES, MapCase, perturbed

TASKS, SHOTS, STEPS = 3, 1, 2


def _problem(case: MapCase) -> tuple[nn.Module, MirrorMap, dict[str, Tensor], dict[str, Tensor]]:
    """Conv4-BN (float64), the case's map away from identity, and phi or z initialization."""
    model = conv4(norm="batch")
    params = dict(model.named_parameters())
    g_map = case.build_trained({n: p.shape for n, p in params.items()})
    start: dict[str, Tensor] = {}
    # phi-initialized where the map's domain holds the weights; else a learned z0 (MetaMiDA)
    if g_map.has_to_dual and not type(g_map).__name__ == "Entropic":
        return model, g_map, params, start
    gen = torch.Generator().manual_seed(3)
    start = {
        n: nn.Parameter(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for n, p in params.items()
    }
    return model, g_map, params, start


def _task_fn(model: nn.Module, g_map: MirrorMap, params: dict[str, Tensor], z0: dict, lr: Tensor):
    def task(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        loss = lambda p: tnf.cross_entropy(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
        if z0:
            phi = mo.adapt(g_map, loss, z=z0, lr=lr, steps=STEPS)
        else:
            phi = mo.adapt(g_map, loss, params, lr=lr, steps=STEPS)
        return tnf.cross_entropy(functional_call(model, phi, (x_q,)), y_q)

    return task


def _grads(loss: Tensor, leaves: list[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, leaves)]
    )


@pytest.mark.parametrize("path", ["default", "params", "params loop"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vmapped_batchnorm_equals_per_task_loop_for_every_map(case: MapCase, path: str) -> None:
    """Conv4-BN (float64), chunked: the default ``vmap`` (no ``params``) and the per-task
    meta-gradient paths (``params``, vmapped or looped) equal the per-task loop."""
    model, g_map, params, z0 = _problem(case)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    task = _task_fn(model, g_map, params, z0, lr)
    leaves = [*params.values(), *g_map.parameters(), *z0.values(), lr]
    data = image_tasks(TASKS, SHOTS)
    weights = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # a non-uniform grad_output

    by_loop = mo.map_tasks(task, *data, model=model, strategy="loop")
    if path.startswith("params"):
        strategy = "loop" if path == "params loop" else "auto"
        by_vmap = mo.map_tasks(
            task, *data, model=model, params=[model, g_map, z0, lr], chunk_size=2, strategy=strategy
        )
        assert by_vmap.grad_fn is not None
        assert "PrecomputedBackward" in type(by_vmap.grad_fn).__name__
    else:
        by_vmap = mo.map_tasks(task, *data, model=model, strategy="vmap", chunk_size=2)
    torch.testing.assert_close(by_vmap.detach(), by_loop.detach(), rtol=1e-12, atol=1e-12)
    expected = _grads((weights * by_loop).sum(), leaves)
    got = _grads((weights * by_vmap).sum(), leaves)
    assert float(expected.norm()) > 0
    assert float((got - expected).norm() / expected.norm()) < 1e-9


def test_backward_fills_grad_like_the_loop_and_chunking_does_not_matter() -> None:
    model = conv4(norm="batch")
    params = dict(model.named_parameters())
    g_map = perturbed(Diagonal(model), scale=0.1)
    task = _task_fn(model, g_map, params, {}, torch.tensor(0.1, dtype=torch.float64))
    data = image_tasks(4, SHOTS)
    meta = [*model.parameters(), *g_map.parameters()]

    results = []
    for kwargs in (
        {"strategy": "loop"},
        {},
        {"chunk_size": 3},
        {"params": [model, g_map]},
        {"params": [model, g_map], "chunk_size": 3},
    ):
        for p in meta:
            p.grad = None
        mo.map_tasks(task, *data, model=model, **kwargs).mean().backward()  # type: ignore[arg-type]
        results.append(torch.cat([p.grad.reshape(-1) for p in meta]))  # type: ignore[union-attr]
    for got in results[1:]:
        assert float((got - results[0]).norm() / results[0].norm()) < 1e-9


def test_plain_vmap_of_the_same_batchnorm_task_is_wrong() -> None:
    """The trap this path avoids: the outer gradient of vmap(task) is off by far more than 1e-9."""
    model = conv4(norm="batch")
    params = dict(model.named_parameters())
    g_map = perturbed(Diagonal(model), scale=0.1)
    task = _task_fn(model, g_map, params, {}, torch.tensor(0.1, dtype=torch.float64))
    data = image_tasks(TASKS, SHOTS)
    leaves = [*params.values(), *g_map.parameters()]
    exact = _grads(mo.map_tasks(task, *data, model=model, strategy="loop").mean(), leaves)
    trapped = _grads(torch.func.vmap(task)(*data).mean(), leaves)
    assert float((trapped - exact).norm() / exact.norm()) > 1e-6


@pytest.mark.parametrize("strategy", ["auto", "loop"])
def test_aux_outputs_are_stacked_and_detached(strategy: str) -> None:
    model = conv4(norm="batch")
    params = dict(model.named_parameters())

    def task(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> tuple[Tensor, dict]:
        logits = functional_call(model, params, (x_q,))
        return tnf.cross_entropy(logits, y_q), {"logits": logits}

    data = image_tasks(TASKS, SHOTS)
    loss, aux = mo.map_tasks(task, *data, model=model, params=model, strategy=strategy)  # type: ignore[arg-type]
    ref = [task(*(t[i] for t in data)) for i in range(TASKS)]
    torch.testing.assert_close(loss.detach(), torch.stack([r[0] for r in ref]).detach())
    assert aux["logits"].shape == (TASKS, 3 * SHOTS, 3) and not aux["logits"].requires_grad
    torch.testing.assert_close(aux["logits"], torch.stack([r[1]["logits"] for r in ref]).detach())


@pytest.mark.parametrize("strategy", ["auto", "loop"])
def test_params_gives_per_task_meta_gradients_for_any_model(strategy: str) -> None:
    """GroupNorm too: ``params`` computes the per-task meta-gradients (vmapped or looped), equal
    to the plain loop's backward for a non-uniform grad_output."""
    model = conv4(norm="group")
    params = dict(model.named_parameters())
    g_map = perturbed(Diagonal(model), scale=0.1)
    task = _task_fn(model, g_map, params, {}, torch.tensor(0.1, dtype=torch.float64))
    data = image_tasks(TASKS, SHOTS)
    leaves = [*params.values(), *g_map.parameters()]
    weights = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    out = mo.map_tasks(task, *data, model=model, params=[model, g_map], strategy=strategy)  # type: ignore[arg-type]
    assert "PrecomputedBackward" in type(out.grad_fn).__name__
    ref = mo.map_tasks(task, *data, model=model, strategy="loop")
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
    expected, got = _grads((weights * ref).sum(), leaves), _grads((weights * out).sum(), leaves)
    assert float((got - expected).norm() / expected.norm()) < 1e-9


class _Sentinel:
    pass


class _Mark(torch.autograd.Function):
    """Identity that parks a sentinel on its graph node: the sentinel lives as long as the graph."""

    generate_vmap_rule = True
    refs: ClassVar[list[weakref.ref]] = []

    @staticmethod
    def forward(x: Tensor) -> Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:  # type: ignore[override]
        ctx.sentinel = _Sentinel()
        _Mark.refs.append(weakref.ref(ctx.sentinel))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


@pytest.mark.parametrize(
    ("kwargs", "frees"),
    [
        ({"strategy": "loop"}, False),  # the plain loop keeps every task's graph for backward()
        ({"strategy": "loop", "params": True}, True),
        ({"chunk_size": 1, "params": True}, True),
    ],
    ids=["loop", "params-loop", "params-chunk-1"],
)
def test_params_frees_each_tasks_graph_before_the_next_task(kwargs: dict, frees: bool) -> None:
    """The memory-saving mode: with ``params`` a task's graph is gone when the next task starts."""
    model = conv4(norm="group")
    params = dict(model.named_parameters())
    g_map = Diagonal(model).double()
    inner = _task_fn(model, g_map, params, {}, torch.tensor(0.1).double())
    live: list[int] = []

    def task(*slices: Tensor) -> Tensor:
        gc.collect()
        live.append(sum(ref() is not None for ref in _Mark.refs))
        return _Mark.apply(inner(*slices))

    _Mark.refs.clear()
    kwargs = dict(kwargs)  # the parametrized dict stays as it is
    meta = [model, g_map] if kwargs.pop("params", False) else None
    out = mo.map_tasks(task, *image_tasks(TASKS, SHOTS), model=model, params=meta, **kwargs)
    assert len(live) == TASKS
    assert live == ([0] * TASKS if frees else list(range(TASKS)))
    out.sum().backward()  # and the result still backpropagates
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("strategy", ["auto", "loop"])
def test_higher_order_meta_gradients_are_refused(strategy: str) -> None:
    model = conv4(norm="batch")
    params = dict(model.named_parameters())
    g_map = Diagonal(model).double()
    task = _task_fn(model, g_map, params, {}, torch.tensor(0.1).double())
    out = mo.map_tasks(
        task,
        *image_tasks(TASKS, SHOTS),
        model=model,
        params=[model, g_map],
        strategy=strategy,  # type: ignore[arg-type]
    )
    with pytest.raises(RuntimeError, match=r"cannot be differentiated again \(create_graph=True"):
        torch.autograd.grad(out.mean(), list(params.values()), create_graph=True)


@pytest.mark.parametrize("strategy", ["auto", "loop"])
def test_a_tensor_requiring_grad_missing_from_params_is_refused(strategy: str) -> None:
    model = conv4(norm="batch")
    params = dict(model.named_parameters())
    g_map = perturbed(Diagonal(model), scale=0.1)
    task = _task_fn(model, g_map, params, {}, torch.tensor(0.1, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"depends on a tensor that requires grad but is not named"
    ):
        mo.map_tasks(task, *image_tasks(TASKS, SHOTS), model=model, params=model, strategy=strategy)  # type: ignore[arg-type]


def test_a_meta_parameter_passed_straight_into_a_transform_is_refused() -> None:
    model = conv4(norm="batch")
    params = dict(model.named_parameters())

    def task(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        loss = lambda p: tnf.cross_entropy(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
        grads = torch.func.grad(loss)(params)  # the originals, not a value computed from them
        phi = {n: params[n] - 0.1 * grads[n] for n in params}
        return tnf.cross_entropy(functional_call(model, phi, (x_q,)), y_q)

    with pytest.raises(ValueError, match=r"directly into a torch.func transform"):
        mo.map_tasks(task, *image_tasks(TASKS, SHOTS), model=model, params=model)


def test_argument_errors() -> None:
    model = conv4(norm="batch")
    data = image_tasks(TASKS, SHOTS)
    with pytest.raises(TypeError, match=r"`params\[1\]` must be a tensor, an nn.Module.*got str"):
        mo.map_tasks(lambda *t: t[0].sum(), *data, model=model, params=[model, "w"])
    with pytest.raises(ValueError, match=r"`params` must name at least one tensor that requires"):
        mo.map_tasks(lambda *t: t[0].sum(), *data, model=model, params=[torch.zeros(2)])
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive int or None, got 0"):
        mo.map_tasks(lambda *t: t[0].sum(), *data, model=model, params=model, chunk_size=0)
    with pytest.raises(ValueError, match=r"must return a scalar loss per task, got shape \(3, 1"):
        mo.map_tasks(lambda *t: t[0].sum(0)[0, 0, :3, None], *data, model=model, params=model)
    with pytest.raises(ValueError, match=r"must return a scalar loss tensor or a pair.*got list"):
        mo.map_tasks(lambda *t: [t[0].sum()], *data, model=model, params=model)


def test_batchnorm_that_tracks_running_statistics_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten()).double()
    params = dict(model.named_parameters())

    def task(x: Tensor) -> Tensor:
        return functional_call(model, params, (x,)).sum()

    x = torch.randn(2, 3, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"BatchNorm layers \['1'\] that update running stat"):
        mo.map_tasks(task, x, model=model, params=model)


def test_first_order_meta_gradients_match_the_loop() -> None:
    model = conv4(norm="batch")
    params = dict(model.named_parameters())
    g_map = perturbed(Diagonal(model), scale=0.1)
    data = image_tasks(TASKS, SHOTS)

    def task(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        loss = lambda p: tnf.cross_entropy(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
        phi = mo.adapt(g_map, loss, params, lr=0.1, steps=STEPS, first_order=True)
        return tnf.cross_entropy(functional_call(model, phi, (x_q,)), y_q)

    leaves = [*params.values(), *g_map.parameters()]
    expected = _grads(mo.map_tasks(task, *data, model=model, strategy="loop").mean(), leaves)
    got = _grads(
        mo.map_tasks(task, *data, model=model, params=[model, g_map], chunk_size=1).mean(), leaves
    )
    second_order = _task_fn(model, g_map, params, {}, torch.tensor(0.1, dtype=torch.float64))
    second = _grads(mo.map_tasks(second_order, *data, model=model, strategy="loop").mean(), leaves)
    assert float((got - expected).norm() / expected.norm()) < 1e-9
    assert float((second - expected).norm() / expected.norm()) > 1e-6  # first order differs
