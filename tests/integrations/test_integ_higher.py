"""higher integration: innerloop_ctx(model, MirrorDescent(...)) against higher's SGD and the core."""

from __future__ import annotations

import importlib
import sys

import higher
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mirroropt
from mirroropt.integrations.higher import DifferentiableMirrorDescent, MirrorDescent
from mirroropt.maps import Diagonal, Identity, MirrorMap
from tests.integrations._common import (
    LR,
    MAP_BUILDERS,
    NONTRIVIAL,
    STEPS,
    assert_close,
    assert_equal,
    core_meta_grads,
    make_model,
    make_tasks,
    meta_params,
)


def higher_meta_grads(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    tasks: tuple[Tensor, ...],
    wrt: list[Tensor],
    *,
    steps: int = STEPS,
    override: dict | None = None,
) -> tuple[list[list[Tensor]], list[Tensor]]:
    """The usual higher MAML loop: fast weights per task and the meta-gradient of Σ query loss."""
    total = torch.zeros((), dtype=torch.float64)
    fast = []
    for x_s, y_s, x_q, y_q in zip(*tasks):
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False, override=override) as (
            fmodel,
            diffopt,
        ):
            for _ in range(steps):
                diffopt.step(F.mse_loss(fmodel(x_s), y_s))
            fast.append(list(fmodel.parameters()))
            total = total + F.mse_loss(fmodel(x_q), y_q)
    return fast, list(torch.autograd.grad(total, wrt))


def test_identity_equals_higher_sgd_to_the_bit() -> None:
    tasks = make_tasks()
    model = make_model()
    sgd_fast, sgd_grads = higher_meta_grads(
        model, torch.optim.SGD(model.parameters(), lr=LR), tasks, list(model.parameters())
    )
    opt = MirrorDescent(model.named_parameters(), Identity(model), lr=LR)
    md_fast, md_grads = higher_meta_grads(model, opt, tasks, list(model.parameters()))
    for a, b in zip(md_fast, sgd_fast):
        assert_equal(a, b)
    assert_equal(md_grads, sgd_grads)


@pytest.mark.parametrize("name", NONTRIVIAL)
def test_meta_gradients_equal_the_functional_core(name: str) -> None:
    tasks = make_tasks()
    model = make_model()
    mirror_map = MAP_BUILDERS[name](model)
    opt = MirrorDescent(model.named_parameters(), mirror_map, lr=LR)
    wrt = meta_params(model, mirror_map)
    _, grads = higher_meta_grads(model, opt, tasks, wrt)
    _, expected = core_meta_grads(model, mirror_map, tasks)
    assert_close(grads, expected)
    map_grads = grads[len(list(model.parameters())) :]
    assert map_grads and all(float(g.abs().max()) > 1e-6 for g in map_grads)


def test_learnable_lr_through_override_equals_the_core() -> None:
    tasks = make_tasks()
    model = make_model()
    mirror_map = MAP_BUILDERS["coupled"](model)
    lr = torch.tensor(LR, dtype=torch.float64, requires_grad=True)
    opt = MirrorDescent(model.named_parameters(), mirror_map, lr=LR)
    wrt = [*meta_params(model, mirror_map), lr]
    _, grads = higher_meta_grads(model, opt, tasks, wrt, override={"lr": [lr]})
    _, expected = core_meta_grads(model, mirror_map, tasks, lr=lr, extra=(lr,))
    assert_close(grads, expected)
    assert float(grads[-1].abs()) > 1e-6


def test_map_is_shared_by_reference_and_backward_accumulates_over_tasks() -> None:
    tasks = make_tasks()
    model = make_model()
    mirror_map = MAP_BUILDERS["coupled"](model)
    opt = MirrorDescent(model.named_parameters(), mirror_map, lr=LR)
    wrt = meta_params(model, mirror_map)
    for x_s, y_s, x_q, y_q in zip(*tasks):  # a meta-batch: one context and one backward per task
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            assert isinstance(diffopt, DifferentiableMirrorDescent)
            assert diffopt.mirror_map is mirror_map
            assert id(diffopt.mirror_map) == id(opt.mirror_map)
            for _ in range(STEPS):
                diffopt.step(F.mse_loss(fmodel(x_s), y_s))
            F.mse_loss(fmodel(x_q), y_q).backward()
    per_task = [
        core_meta_grads(model, mirror_map, tuple(t[i : i + 1] for t in tasks))[1]
        for i in range(tasks[0].shape[0])
    ]
    expected = [sum(gs) for gs in zip(*per_task)]
    assert_close([p.grad for p in wrt], expected)


def test_dual_state_keeps_its_graph_across_steps() -> None:
    model = make_model()
    mirror_map = MAP_BUILDERS["coupled"](model)
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    opt = MirrorDescent(model.named_parameters(), mirror_map, lr=LR)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(STEPS):
            diffopt.step(F.mse_loss(fmodel(x_s), y_s))
        z = [diffopt.state[0][i]["z"] for i in range(len(list(model.parameters())))]
        phi = dict(zip(mirror_map.names, fmodel.parameters()))
    assert all(t.grad_fn is not None for t in z)
    # the state is the dual of the fast weights …
    assert_close(z, list(mirror_map.to_dual(phi).values()))
    # … and differentiates back to the initialization and to the map through all steps
    first = next(model.parameters())
    grads = torch.autograd.grad(sum(t.sum() for t in z), [first, *mirror_map.parameters()])
    assert all(float(g.abs().max()) > 0 for g in grads)


def test_test_mode_detaches_the_dual_state() -> None:
    model = make_model()
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    opt = MirrorDescent(model.named_parameters(), MAP_BUILDERS["coupled"](model), lr=LR)
    with higher.innerloop_ctx(model, opt, track_higher_grads=False) as (fmodel, diffopt):
        diffopt.step(F.mse_loss(fmodel(x_s), y_s))
        diffopt.step(F.mse_loss(fmodel(x_s), y_s))
        assert all(diffopt.state[0][i]["z"].grad_fn is None for i in range(4))


def test_a_module_in_a_param_group_is_refused() -> None:
    model = make_model()
    mirror_map = Diagonal(model).double()
    opt = MirrorDescent(
        [{"params": list(model.named_parameters()), "mirror_map": mirror_map}], mirror_map, lr=LR
    )
    with pytest.raises(TypeError, match=r"holds an nn\.Module under 'mirror_map'.*deep-copies"):
        with higher.innerloop_ctx(model, opt):
            pass


def test_a_dual_initialization_is_refused() -> None:
    model = make_model()
    mirror_map = Identity(model)
    z0 = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    opt = MirrorDescent(model.named_parameters(), mirror_map, lr=LR, z0=z0)
    with pytest.raises(TypeError, match=r"dual initialization `z0`.*MirrorMAML"):
        with higher.innerloop_ctx(model, opt):
            pass


def test_other_optimizers_are_refused() -> None:
    model = make_model()
    with pytest.raises(TypeError, match=r"`other` must be a mirroropt\.MirrorDescent, got SGD"):
        DifferentiableMirrorDescent(torch.optim.SGD(model.parameters(), lr=LR), model.parameters())


def test_non_finite_inner_gradient_is_an_error() -> None:
    model = make_model()
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    opt = MirrorDescent(model.named_parameters(), Identity(model), lr=LR)
    with higher.innerloop_ctx(model, opt) as (fmodel, diffopt):
        with pytest.raises(ValueError, match=r"gradient of the inner loss is not finite"):
            diffopt.step(F.mse_loss(fmodel(x_s), y_s) * float("inf"))


def test_missing_higher_raises_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "higher", None)
    monkeypatch.setitem(sys.modules, "higher.optim", None)
    monkeypatch.delitem(sys.modules, "mirroropt.integrations.higher")
    with pytest.raises(
        ImportError, match=r"needs the optional dependency `higher`.*mirroropt\[higher\]"
    ):
        importlib.import_module("mirroropt.integrations.higher")


def test_maps_keep_working_for_plain_mirror_descent_after_registration() -> None:
    """Registering with higher changes nothing for the eager optimizer (sanity: one SGD step)."""
    model = make_model()
    reference = make_model()
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    for m, opt in (
        (model, MirrorDescent(model.named_parameters(), Identity(model), lr=LR)),
        (reference, torch.optim.SGD(reference.parameters(), lr=LR)),
    ):
        F.mse_loss(m(x_s), y_s).backward()
        opt.step()
    assert_equal(list(model.parameters()), list(reference.parameters()))
    assert isinstance(mirroropt.MirrorDescent, type) and MirrorDescent is mirroropt.MirrorDescent
    assert isinstance(Identity(model), MirrorMap)


@pytest.mark.parametrize("lr", ["number", "tensor"])
def test_a_linear_map_steps_in_the_primal_with_the_dual_loops_iterates_and_meta_gradients(
    lr: str,
) -> None:
    """Diagonal with a scalar step size: φ_{k+1} = φ_k − α g(∇L), no z in the state, and the same
    fast weights and meta-gradients as the dual loop z_{k+1} = z_k − α∇L, φ = g(z) written out."""
    tasks = make_tasks()
    model = make_model()
    mirror_map = MAP_BUILDERS["diagonal"](model)
    step = torch.tensor(LR, dtype=torch.float64, requires_grad=True) if lr == "tensor" else LR
    override = {"lr": [step]} if lr == "tensor" else None
    opt = MirrorDescent(model.named_parameters(), mirror_map, lr=LR)
    wrt = [*meta_params(model, mirror_map), *([step] if lr == "tensor" else [])]
    fast, grads = higher_meta_grads(model, opt, tasks, wrt, override=override)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        diffopt.step(F.mse_loss(fmodel(tasks[0][0]), tasks[1][0]))
        assert all("z" not in diffopt.state[0][i] for i in range(4))

    names = mirror_map.names
    total = torch.zeros((), dtype=torch.float64)
    expected_fast = []
    for x_s, y_s, x_q, y_q in zip(*tasks):
        phi = dict(model.named_parameters())
        z = mirror_map.to_dual(phi)
        for _ in range(STEPS):
            loss = F.mse_loss(torch.func.functional_call(model, phi, (x_s,)), y_s)
            g = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
            z = {n: z[n] - step * gi for n, gi in zip(names, g)}
            phi = mirror_map.to_primal(z)
        expected_fast.append([phi[n] for n in names])
        total = total + F.mse_loss(torch.func.functional_call(model, phi, (x_q,)), y_q)
    expected = list(torch.autograd.grad(total, wrt))
    for a, b in zip(fast, expected_fast):
        assert_close(a, b)
    assert_close(grads, expected)


def test_a_step_size_turned_per_coordinate_mid_loop_continues_in_the_dual() -> None:
    """Primal stepping needs a scalar step size; one set per coordinate later (by the user, on a
    param group) switches to z = ∇h(φ_k) and the dual loop, with the dual loop's iterates."""
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    model = make_model()
    mirror_map = MAP_BUILDERS["diagonal"](model)
    named = list(model.named_parameters())
    opt = MirrorDescent([{"params": [pair]} for pair in named], mirror_map, lr=LR)
    gen = torch.Generator().manual_seed(5)
    per_coord = {n: LR * (1 + torch.rand(p.shape, generator=gen, dtype=p.dtype)) for n, p in named}
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for k in range(STEPS):
            if k == 1:
                for group, (n, _) in zip(diffopt.param_groups, named):
                    group["lr"] = per_coord[n]
            diffopt.step(F.mse_loss(fmodel(x_s), y_s))
        got = list(fmodel.parameters())
        assert all("z" in diffopt.state[i][0] for i in range(len(named)))

    names = mirror_map.names
    phi = dict(named)
    z = mirror_map.to_dual(phi)
    for k in range(STEPS):
        loss = F.mse_loss(torch.func.functional_call(model, phi, (x_s,)), y_s)
        g = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
        z = {n: z[n] - (LR if k == 0 else per_coord[n]) * gi for n, gi in zip(names, g)}
        phi = mirror_map.to_primal(z)
    assert_close(got, [phi[n] for n in names])
