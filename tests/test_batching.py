"""Batching tasks: vmap where exact, a loop for batch-statistics layers (the BatchNorm trap)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as tnf
from torch import Tensor, nn
from torch.func import functional_call

import mirroropt as mo
from mirroropt.maps import Diagonal
from tests._models import conv4, image_tasks
from tests.registry import perturbed


def _meta_gradient(model: nn.Module, strategy: str | None) -> list[Tensor]:
    """Second-order meta-gradient over 3 tasks (w.r.t. init and map), by map_tasks or a plain loop."""
    xs, ys, xq, yq = image_tasks(3, 2)
    g_map = perturbed(Diagonal(model), scale=0.1)
    params = {n: p for n, p in model.named_parameters()}

    def task(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        loss = lambda p: tnf.cross_entropy(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
        phi = mo.adapt(g_map, loss, params, lr=0.1, steps=2)
        return tnf.cross_entropy(functional_call(model, phi, (x_q,)), y_q)

    if strategy is None:
        meta = torch.stack([task(xs[i], ys[i], xq[i], yq[i]) for i in range(3)]).mean()
    else:
        meta = mo.map_tasks(task, xs, ys, xq, yq, model=model, strategy=strategy).mean()  # type: ignore[arg-type]
    return list(torch.autograd.grad(meta, [*params.values(), *g_map.parameters()]))


def _max_rel(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x - y).norm() / y.norm().clamp_min(1e-300)) for x, y in zip(a, b))


def test_batchnorm_conv4_auto_batching_equals_per_task_loop() -> None:
    model = conv4(norm="batch")
    assert mo.uses_batch_statistics(model) == ["1", "5", "9", "13"]
    assert _max_rel(_meta_gradient(model, "auto"), _meta_gradient(model, None)) < 1e-9


def test_groupnorm_conv4_vmap_equals_per_task_loop() -> None:
    model = conv4(norm="group")
    assert mo.uses_batch_statistics(model) == []
    assert _max_rel(_meta_gradient(model, "vmap"), _meta_gradient(model, None)) < 1e-9


def test_vmap_is_refused_for_batch_statistics_with_a_way_out() -> None:
    model = conv4(norm="batch")
    with pytest.raises(
        ValueError,
        match=r"normalizes with batch statistics in \['1', '5', '9', '13'\].*Use strategy='loop'",
    ):
        _meta_gradient(model, "vmap")


def test_which_layers_use_batch_statistics() -> None:
    bn = nn.BatchNorm2d(2)
    assert mo.uses_batch_statistics(nn.Sequential(bn)) == ["0"]
    bn.eval()
    assert mo.uses_batch_statistics(nn.Sequential(bn)) == []
    assert mo.uses_batch_statistics(
        nn.Sequential(nn.BatchNorm2d(2, track_running_stats=False).eval())
    ) == ["0"]
    assert mo.uses_batch_statistics(nn.Sequential(nn.Linear(2, 2), nn.InstanceNorm1d(2))) == ["1"]
    assert mo.uses_batch_statistics(nn.Sequential(nn.GroupNorm(1, 2), nn.LayerNorm(2))) == []


def test_structured_outputs_are_stacked() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    for strategy in ("vmap", "loop"):
        out = mo.map_tasks(
            lambda t: {"s": t.sum(), "pair": (t, t.max())}, x, model=None, strategy=strategy
        )
        assert torch.equal(out["s"], torch.tensor([1.0, 5.0, 9.0]))
        assert torch.equal(out["pair"][0], x)
        assert torch.equal(out["pair"][1], torch.tensor([1.0, 3.0, 5.0]))


def test_map_tasks_errors() -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(
        ValueError, match=r"`strategy` must be 'auto', 'vmap' or 'loop', got 'pmap'"
    ):
        mo.map_tasks(lambda t: t, x, model=None, strategy="pmap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`tasks` must contain at least one tensor"):
        mo.map_tasks(lambda t: t, model=None)
    with pytest.raises(ValueError, match=r"same leading \(task\) dimension; got sizes \[3, 2\]"):
        mo.map_tasks(lambda a, b: a, x, torch.zeros(2, 2), model=None)
    with pytest.raises(
        TypeError, match=r"`fn` must return a tensor or a tuple/list/dict of tensors, got str"
    ):
        mo.map_tasks(lambda t: "no", x, model=None, strategy="loop")


def _nan_task_batch(where: str) -> tuple[nn.Module, object, tuple[Tensor, ...]]:
    """A GroupNorm Conv4 (so "auto" vmaps) and 3 tasks with one NaN pixel in task 1."""
    model = conv4(norm="group")
    xs, ys, xq, yq = image_tasks(3, 2)
    (xs if where == "support" else xq)[1, 0, 0, 0, 0] = float("nan")
    g_map = Diagonal(model).double()
    params = dict(model.named_parameters())

    def task(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
        loss = lambda p: tnf.cross_entropy(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
        phi = mo.adapt(g_map, loss, params, lr=0.1, steps=2)
        return tnf.cross_entropy(functional_call(model, phi, (x_q,)), y_q)

    return model, task, (xs, ys, xq, yq)


@pytest.mark.parametrize("strategy", ["auto", "vmap", "loop"])
def test_non_finite_inner_gradient_is_caught_on_every_path_naming_task_and_step(
    strategy: str,
) -> None:
    # Reproducer (issue 11): under vmap the inner finite check is skipped, and a NaN meta-loss
    # came back silently while strategy="loop" raised.
    model, task, tasks = _nan_task_batch("support")
    with pytest.raises(
        mo.NonFiniteError,
        match=r"Task 1 of 3: The gradient of `loss_fn` at inner step 0 is not finite",
    ):
        mo.map_tasks(task, *tasks, model=model, strategy=strategy)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_non_finite_output_is_caught_naming_the_task(strategy: str) -> None:
    model, task, tasks = _nan_task_batch("query")
    with pytest.raises(ValueError, match=r"non-finite value for task\(s\) \[1\] of 3"):
        mo.map_tasks(task, *tasks, model=model, strategy=strategy)  # type: ignore[arg-type]
    out = mo.map_tasks(task, *tasks, model=model, strategy=strategy, check_finite=False)  # type: ignore[arg-type]
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()


def test_finite_check_is_skipped_under_an_outer_transform() -> None:
    x = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    # log(0) = -inf in task 0, but inside vmap the value cannot be inspected: no error, the
    # outer caller's check (here: the outer map_tasks) catches it once its transform returns
    inner = lambda row: mo.map_tasks(torch.log, row, model=None, strategy="vmap")  # noqa: E731
    out = torch.func.vmap(inner)(x)
    assert torch.isinf(out[0, 1])
    with pytest.raises(
        mo.NonFiniteError,
        match=r"Task 0 of 2: `fn` returned a non-finite value for task\(s\) \[1\] of 2",
    ):
        mo.map_tasks(inner, x, model=None, strategy="vmap")
