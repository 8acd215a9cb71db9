"""TorchOpt integration: MetaMirrorDescent against torchopt.MetaSGD and the functional core."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchopt
from torch import Tensor, nn
from torchopt.base import UninitializedState

from mirroropt.integrations.torchopt import MetaMirrorDescent, MirrorState
from mirroropt.maps import (
    ConvexPotential,
    Diagonal,
    ElementwiseConvex,
    Identity,
    Kronecker,
    MirrorMap,
)
from tests.integrations._common import (
    LR,
    STEPS,
    CountCalls,
    assert_close,
    assert_equal,
    core_meta_grads,
    make_model,
    make_tasks,
    meta_params,
    perturb,
)

BUILDERS: dict[str, Callable[[nn.Module], MirrorMap]] = {
    "diagonal": lambda m: perturb(Diagonal(m)),
    "kronecker": lambda m: perturb(Kronecker(m), scale=0.2),
    "elementwise_convex": lambda m: perturb(ElementwiseConvex(m)),  # nonlinear: the dual loop
}


def torchopt_meta_grads(
    model: nn.Module,
    make_opt: Callable[[nn.Module], torchopt.MetaOptimizer],
    tasks: tuple[Tensor, ...],
    wrt: list[Tensor],
    *,
    steps: int = STEPS,
) -> tuple[list[list[Tensor]], list[Tensor]]:
    """TorchOpt's MAML loop (examples/few-shot/maml_omniglot.py): one inner optimizer, the model
    and its state saved by reference before the tasks and recovered after each one; the
    meta-gradient of Σ query loss is accumulated by one ``backward()`` per task."""
    for p in wrt:
        p.grad = None
    inner_opt = make_opt(model)
    net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner_opt, by="reference")
    fast = []
    for x_s, y_s, x_q, y_q in zip(*tasks):
        for _ in range(steps):
            inner_opt.step(F.mse_loss(model(x_s), y_s))
        fast.append([t.detach().clone() for t in model.parameters()])
        F.mse_loss(model(x_q), y_q).backward()
        torchopt.recover_state_dict(model, net_state)
        torchopt.recover_state_dict(inner_opt, opt_state)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in wrt]
    return fast, grads


def test_identity_equals_torchopt_meta_sgd_to_the_bit() -> None:
    tasks = make_tasks()
    model = make_model()
    wrt = list(model.parameters())
    sgd_fast, sgd_grads = torchopt_meta_grads(
        model, lambda m: torchopt.MetaSGD(m, lr=LR), tasks, wrt
    )
    md_fast, md_grads = torchopt_meta_grads(
        model, lambda m: MetaMirrorDescent(m, Identity(m), lr=LR), tasks, wrt
    )
    for a, b in zip(md_fast, sgd_fast):
        assert_equal(a, b)
    assert_equal(md_grads, sgd_grads)
    assert all(float(g.abs().max()) > 0 for g in md_grads)


def test_identity_equals_meta_sgd_in_float32_too() -> None:
    tasks = tuple(t.float() for t in make_tasks())
    model = make_model().float()
    wrt = list(model.parameters())
    sgd = torchopt_meta_grads(model, lambda m: torchopt.MetaSGD(m, lr=0.1), tasks, wrt)
    md = torchopt_meta_grads(model, lambda m: MetaMirrorDescent(m, Identity(m), lr=0.1), tasks, wrt)
    assert_equal(md[1], sgd[1])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_meta_gradients_equal_the_functional_core(name: str) -> None:
    tasks = make_tasks()
    model = make_model()
    mirror_map = BUILDERS[name](model)
    wrt = meta_params(model, mirror_map)
    _, grads = torchopt_meta_grads(
        model, lambda m: MetaMirrorDescent(m, mirror_map, lr=LR), tasks, wrt
    )
    _, expected = core_meta_grads(model, mirror_map, tasks)
    assert_close(grads, expected)
    map_grads = grads[len(list(model.parameters())) :]
    assert map_grads and all(float(g.abs().max()) > 1e-6 for g in map_grads)


def test_learnable_lr_gets_the_core_meta_gradient() -> None:
    tasks = make_tasks()
    model = make_model()
    mirror_map = BUILDERS["diagonal"](model)
    lr = torch.tensor(LR, dtype=torch.float64, requires_grad=True)
    wrt = [*meta_params(model, mirror_map), lr]
    _, grads = torchopt_meta_grads(
        model, lambda m: MetaMirrorDescent(m, mirror_map, lr=lr), tasks, wrt
    )
    _, expected = core_meta_grads(model, mirror_map, tasks, lr=lr, extra=(lr,))
    assert_close(grads, expected)
    assert float(grads[-1].abs()) > 1e-6


def test_the_dual_lives_in_the_state_dict_and_recover_resets_it() -> None:
    model = make_model()
    mirror_map = BUILDERS["diagonal"](model)
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    opt = MetaMirrorDescent(model, mirror_map, lr=LR)
    start = torchopt.extract_state_dict(opt, by="reference")
    assert opt.state_dict() == (UninitializedState(),)
    phi0 = dict(model.named_parameters())
    for _ in range(STEPS):
        opt.step(F.mse_loss(model(x_s), y_s))
    (state,) = opt.state_dict()
    assert isinstance(state, MirrorState) and all(t.grad_fn is not None for t in state.z)
    # the state is the dual of the adapted parameters, in name order
    assert_close(list(state.z), list(mirror_map.to_dual(dict(model.named_parameters())).values()))
    # extract_state_dict copies it as a MirrorState; recovering the saved start resets the dual
    copied = torchopt.extract_state_dict(opt, by="deepcopy")
    assert isinstance(copied[0], MirrorState)
    assert all(a is not b and torch.equal(a, b) for a, b in zip(copied[0].z, state.z))
    torchopt.recover_state_dict(opt, start)
    assert opt.state_dict() == (UninitializedState(),)
    torchopt.recover_state_dict(opt, copied)
    assert opt.state_dict()[0] is copied[0]
    assert all(p is not phi0[n] for n, p in model.named_parameters())  # adapted in place


def test_a_recovered_task_starts_again_from_the_dual_of_its_parameters() -> None:
    """Two tasks with a reset in between = the second task with a fresh optimizer."""
    tasks = make_tasks(2)
    model = make_model()
    mirror_map = BUILDERS["diagonal"](model)
    opt = MetaMirrorDescent(model, mirror_map, lr=LR)
    net_state = torchopt.extract_state_dict(model, by="reference")
    opt_state = torchopt.extract_state_dict(opt, by="reference")
    for i in range(2):
        for _ in range(STEPS):
            opt.step(F.mse_loss(model(tasks[0][i]), tasks[1][i]))
        if i == 1:
            after_reset = [p.detach().clone() for p in model.parameters()]
        torchopt.recover_state_dict(model, net_state)
        torchopt.recover_state_dict(opt, opt_state)
    fresh = MetaMirrorDescent(model, mirror_map, lr=LR)
    for _ in range(STEPS):
        fresh.step(F.mse_loss(model(tasks[0][1]), tasks[1][1]))
    assert_equal(after_reset, [p.detach() for p in model.parameters()])


def test_maps_without_to_dual_are_refused() -> None:
    model = make_model()
    with pytest.raises(TypeError, match=r"ConvexPotential.*no closed-form to_dual.*clone\(z=z0\)"):
        MetaMirrorDescent(model, ConvexPotential(model).double(), lr=LR)


def test_wrong_arguments_are_refused() -> None:
    model = make_model()
    with pytest.raises(TypeError, match=r"`module` must be an nn\.Module, got dict"):
        MetaMirrorDescent(dict(model.named_parameters()), Identity(model), lr=LR)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`mirror_map` must be a mirroropt\.maps\.MirrorMap"):
        MetaMirrorDescent(model, model, lr=LR)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`lr` must be positive and finite, got -1"):
        MetaMirrorDescent(model, Identity(model), lr=-1.0)
    with pytest.raises(ValueError, match=r"module\.named_parameters\(\)"):
        MetaMirrorDescent(model, Identity(nn.Linear(3, 5)), lr=LR)
    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match=r"shares a parameter under two names"):
        MetaMirrorDescent(tied, Identity(tied), lr=LR)


def test_wrong_step_and_state_arguments_are_refused() -> None:
    model = make_model()
    opt = MetaMirrorDescent(model, Identity(model), lr=LR)
    with pytest.raises(TypeError, match=r"`loss` must be a scalar tensor, got float"):
        opt.step(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`loss` must be a scalar tensor, got shape \(6, 2\)"):
        opt.step(model(make_tasks()[0][0]))
    with pytest.raises(ValueError, match=r"`state_dict` must be \(MirrorState\(z\),\) with 4"):
        opt.load_state_dict((MirrorState((torch.zeros(1),)),))
    with pytest.raises(TypeError, match=r"adapts exactly the module it was built with"):
        opt.add_param_group(model)
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    with pytest.raises(ValueError, match=r"gradient of `loss` is not finite"):
        opt.step(F.mse_loss(model(x_s), y_s) * float("inf"))


def test_missing_torchopt_raises_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchopt", None)
    monkeypatch.setitem(sys.modules, "torchopt.base", None)
    monkeypatch.delitem(sys.modules, "mirroropt.integrations.torchopt")
    with pytest.raises(
        ImportError, match=r"needs the optional dependency `torchopt`.*mirroropt\[torchopt\]"
    ):
        importlib.import_module("mirroropt.integrations.torchopt")


def test_the_map_is_prepared_once_per_inner_loop_and_afresh_for_each_task() -> None:
    """Kronecker's factors are computed at each task's first step only (not at every step, and no
    inverse factors for z₀ = ∇h(φ₀): a linear map steps in the primal); a meta-step made in place
    mid-loop is picked up at the next step."""
    model = make_model()
    mirror_map = BUILDERS["kronecker"](model)
    with CountCalls({torch.linalg.eigh}) as once:
        mirror_map.prepared()
    assert once.count > 0
    tasks = make_tasks(2)
    wrt = meta_params(model, mirror_map)
    for steps in (1, STEPS):
        with CountCalls({torch.linalg.eigh}) as counter:
            _, grads = torchopt_meta_grads(
                model, lambda m: MetaMirrorDescent(m, mirror_map, lr=LR), tasks, wrt, steps=steps
            )
        assert counter.count == 2 * once.count
    _, expected = core_meta_grads(model, mirror_map, tasks)
    assert_close(grads, expected)

    x_s, y_s, _, _ = (t[0] for t in tasks)
    opt = MetaMirrorDescent(model, mirror_map, lr=LR)
    net_state = torchopt.extract_state_dict(model, by="reference")
    opt.step(F.mse_loss(model(x_s), y_s))
    with torch.no_grad():
        for p in mirror_map.parameters():
            p.mul_(1.5)  # an in-place meta-step in the middle of the inner loop
    phi = dict(model.named_parameters())
    loss = F.mse_loss(model(x_s), y_s)
    g = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()), retain_graph=True)))
    expected_phi = {n: phi[n] - LR * d for n, d in mirror_map.to_primal(g).items()}
    with CountCalls({torch.linalg.eigh}) as counter:
        opt.step(loss)
    assert counter.count == once.count
    assert_close(list(model.parameters()), list(expected_phi.values()))
    torchopt.recover_state_dict(model, net_state)


def test_a_primal_loop_reports_its_dual_and_a_loaded_dual_continues_it() -> None:
    """A linear map's loop keeps no z; state_dict() gives z_k = ∇h(φ_k), and a loop recovered
    from it continues in the dual with the primal loop's iterates."""
    model = make_model()
    mirror_map = BUILDERS["kronecker"](model)
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    opt = MetaMirrorDescent(model, mirror_map, lr=LR)
    net_state = torchopt.extract_state_dict(model, by="reference")
    for _ in range(2):
        opt.step(F.mse_loss(model(x_s), y_s))
    (state,) = opt.state_dict()
    assert isinstance(state, MirrorState) and all(t.grad_fn is not None for t in state.z)
    assert_close(list(state.z), list(mirror_map.to_dual(dict(model.named_parameters())).values()))
    mid = torchopt.extract_state_dict(model, by="reference")
    opt.step(F.mse_loss(model(x_s), y_s))
    primal = [p.detach().clone() for p in model.parameters()]
    torchopt.recover_state_dict(model, mid)
    opt.load_state_dict((state,))
    opt.step(F.mse_loss(model(x_s), y_s))
    assert isinstance(opt.state_groups[0], MirrorState)  # the dual loop, from the loaded z
    assert_close([p.detach() for p in model.parameters()], primal)
    torchopt.recover_state_dict(model, net_state)
