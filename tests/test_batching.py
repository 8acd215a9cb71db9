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
    """Relative error of the whole meta-gradient vector (a conv bias before BatchNorm has an
    exactly-zero gradient, so per-tensor relative errors there compare rounding to rounding)."""
    diff = torch.cat([(x - y).reshape(-1) for x, y in zip(a, b)])
    return float(diff.norm() / torch.cat([y.reshape(-1) for y in b]).norm())


def test_batchnorm_conv4_auto_batching_equals_per_task_loop() -> None:
    model = conv4(norm="batch")
    assert mo.uses_batch_statistics(model) == ["1", "5", "9", "13"]
    assert _max_rel(_meta_gradient(model, "auto"), _meta_gradient(model, None)) < 1e-9


def test_groupnorm_conv4_vmap_equals_per_task_loop() -> None:
    model = conv4(norm="group")
    assert mo.uses_batch_statistics(model) == []
    assert _max_rel(_meta_gradient(model, "vmap"), _meta_gradient(model, None)) < 1e-9


def test_vmap_of_a_batchnorm_model_is_exact() -> None:
    """Was refused (the BatchNorm trap); with BatchNorm's affine part split out it is exact."""
    model = conv4(norm="batch")
    assert _max_rel(_meta_gradient(model, "vmap"), _meta_gradient(model, None)) < 1e-9


def test_auto_vmaps_a_batchnorm_model() -> None:
    """``auto`` calls ``fn`` once (batched), not once per task, for a Conv4 with BatchNorm."""
    model = conv4(norm="batch")
    calls = []

    def task(x: Tensor) -> Tensor:
        calls.append(x.shape)
        return functional_call(model, dict(model.named_parameters()), (x,)).sum()

    xs = image_tasks(3, 2)[0]
    out = mo.map_tasks(task, xs, model=model)
    assert len(calls) == 1 and out.shape == (3,)


def _eager_batch_norm(x: Tensor, mean: Tensor | None, var: Tensor | None, w, b, training, eps):
    """BatchNorm written out (the reference for the split form)."""
    dims = [0, *range(2, x.dim())]
    shape = (-1, *([1] * (x.dim() - 2)))
    if training or mean is None:
        mean, var = x.mean(dims), x.var(dims, correction=0)
    y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)  # type: ignore[union-attr]
    return y * (1 if w is None else w.reshape(shape)) + (0 if b is None else b.reshape(shape))


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 4), (4, 3, 2, 5)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_the_split_batch_norm_equals_the_fused_one(shape, affine: bool, training: bool) -> None:
    from mirroropt._batching import _batch_norm_affine_outside

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    w, b = (torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(2))
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    stats = (None, None) if training else (mean, var)
    wb = (w, b) if affine else (None, None)
    got = _batch_norm_affine_outside(x, *stats, *wb, training, 0.1, 1e-3)
    torch.testing.assert_close(got, tnf.batch_norm(x, *stats, *wb, training, 0.1, 1e-3))
    torch.testing.assert_close(got, _eager_batch_norm(x, *stats, *wb, training, 1e-3))


def test_a_direct_torch_batch_norm_call_is_split_too() -> None:
    """A model calling ``torch.batch_norm`` itself (not ``F.batch_norm``) is exact under vmap."""

    class RawBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 4))
            self.bias = nn.Parameter(torch.linspace(-0.2, 0.3, 4))
            self.out = nn.Linear(4, 1)
            self.flag = nn.BatchNorm1d(
                4, affine=False, track_running_stats=False
            )  # batch statistics

        def forward(self, x: Tensor) -> Tensor:
            h = torch.batch_norm(
                self.lin(x), self.weight, self.bias, None, None, True, 0.1, 1e-5, False
            )
            return self.out(torch.tanh(h))

    torch.manual_seed(0)
    model = RawBN().double()
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    xs, ys = (torch.randn(3, 6, k, generator=gen, dtype=torch.float64) for k in (3, 1))

    def task(x: Tensor, y: Tensor) -> Tensor:
        loss = lambda p: tnf.mse_loss(functional_call(model, p, (x,)), y)  # noqa: E731
        return loss(mo.adapt(mo.maps.Identity(model), loss, params, lr=0.3, steps=2))

    by_vmap = torch.autograd.grad(
        mo.map_tasks(task, xs, ys, model=model, strategy="vmap").mean(), list(params.values())
    )
    by_loop = torch.autograd.grad(
        mo.map_tasks(task, xs, ys, model=model, strategy="loop").mean(), list(params.values())
    )
    assert _max_rel(list(by_vmap), list(by_loop)) < 1e-9
    trapped = torch.autograd.grad(torch.func.vmap(task)(xs, ys).mean(), list(params.values()))
    assert _max_rel(list(trapped), list(by_loop)) > 1e-6  # the trap the split avoids


def test_a_gradient_of_the_vmapped_batchnorm_meta_gradient_is_refused() -> None:
    """Third-order derivatives through vmapped batch statistics are wrong on torch 2.13 (2.9e-3
    relative with the split form, measured): ``create_graph=True`` on the meta-loss raises, the
    loop supports it, and GroupNorm's vmap matches the loop there."""
    xs, ys, xq, yq = image_tasks(3, 2)

    def curvature(model: nn.Module, strategy: str) -> list[Tensor]:
        g_map = perturbed(Diagonal(model), scale=0.1)
        params = dict(model.named_parameters())

        def task(x_s: Tensor, y_s: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
            loss = lambda p: tnf.cross_entropy(functional_call(model, p, (x_s,)), y_s)  # noqa: E731
            phi = mo.adapt(g_map, loss, params, lr=0.1, steps=2)
            return tnf.cross_entropy(functional_call(model, phi, (x_q,)), y_q)

        meta = mo.map_tasks(task, xs, ys, xq, yq, model=model, strategy=strategy).mean()  # type: ignore[arg-type]
        grads = torch.autograd.grad(meta, list(params.values()), create_graph=True)
        return list(torch.autograd.grad(sum((g**2).sum() for g in grads), list(g_map.parameters())))

    with pytest.raises(RuntimeError, match=r"create_graph=True.*refused; use strategy='loop'"):
        curvature(conv4(norm="batch"), "vmap")
    assert all(bool(torch.isfinite(g).all()) for g in curvature(conv4(norm="batch"), "loop"))
    group = conv4(norm="group")
    assert _max_rel(curvature(group, "vmap"), curvature(group, "loop")) < 1e-9


def test_vmap_is_refused_for_layers_it_cannot_batch_with_a_way_out() -> None:
    """InstanceNorm, and BatchNorm updating running statistics, still loop under ``auto``."""
    for layer, name in ((nn.BatchNorm2d(4), "BatchNorm"), (nn.InstanceNorm2d(4), "InstanceNorm")):
        model = conv4(norm="batch")
        model[5] = layer.double()
        with pytest.raises(ValueError, match=r"statistics in \['5'\].*Use strategy='loop'"):
            _meta_gradient(model, "vmap")
        if name == "InstanceNorm":  # (running-statistic updates make the loop differ per call)
            assert _max_rel(_meta_gradient(model, "auto"), _meta_gradient(model, None)) < 1e-9


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
