"""MirrorDescent, the torch.optim shell: parity with SGD and with the functional core."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as tnf
from torch import Tensor
from torch.func import functional_call

import mirroropt as mo
from mirroropt.maps import Diagonal, Identity
from tests._models import mlp, regression_tasks
from tests.registry import perturbed


def _train(
    model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, *, closure: bool
) -> list[Tensor]:
    xs, ys, _, _ = regression_tasks(steps, 10)
    losses = []
    for k in range(steps):

        def f(k: int = k) -> Tensor:
            opt.zero_grad()
            loss = tnf.mse_loss(model(xs[k]), ys[k])
            loss.backward()
            return loss

        if closure:
            losses.append(opt.step(f))
        else:
            losses.append(f())
            opt.step()
    return losses


@pytest.mark.parametrize("closure", [False, True])
def test_identity_equals_torch_sgd_bit_for_bit(closure: bool) -> None:
    a, b = mlp(), mlp()
    sgd = torch.optim.SGD(a.parameters(), lr=0.01)
    md = mo.MirrorDescent(b.named_parameters(), Identity(b), lr=0.01)
    la = _train(a, sgd, 6, closure=closure)
    lb = _train(b, md, 6, closure=closure)
    for x, y in zip(la, lb):
        assert torch.equal(x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_param_groups_with_own_lr_equal_sgd_groups() -> None:
    a, b = mlp(), mlp()
    named = lambda m, i: [(f"{i}.{n}", p) for n, p in m[i].named_parameters()]  # noqa: E731
    groups = lambda m: [  # noqa: E731
        {"params": named(m, 0), "lr": 0.05},
        {"params": named(m, 2) + named(m, 4)},
    ]
    sgd = torch.optim.SGD(groups(a), lr=0.01)
    md = mo.MirrorDescent(groups(b), Identity(b), lr=0.01)
    _train(a, sgd, 4, closure=False)
    _train(b, md, 4, closure=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_shell_equals_functional_core_for_a_nonidentity_map() -> None:
    model = mlp()
    g_map = perturbed(Diagonal(model))
    xs, ys, _, _ = regression_tasks(1, 10)
    loss = lambda p: tnf.mse_loss(functional_call(model, p, (xs[0],)), ys[0])  # noqa: E731
    phi0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    core = mo.adapt(g_map, loss, phi0, lr=0.03, steps=4)
    opt = mo.MirrorDescent(model.named_parameters(), g_map, lr=0.03)
    for _ in range(4):
        opt.zero_grad()
        tnf.mse_loss(model(xs[0]), ys[0]).backward()
        opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), core[n].detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(
            opt.state[p]["z"],
            core[n].detach() / g_map.scales()[g_map.names.index(n)].detach(),
            rtol=1e-12,
            atol=1e-14,
        )


def test_state_dict_round_trip_resumes_exactly() -> None:
    model = mlp()
    g_map = perturbed(Diagonal(model))
    opt = mo.MirrorDescent(model.named_parameters(), g_map, lr=0.02)
    _train(model, opt, 3, closure=False)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 3, closure=False)
    resumed = mlp(seed=5)
    resumed.load_state_dict(saved_model)
    opt2 = mo.MirrorDescent(resumed.named_parameters(), g_map, lr=0.5)
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups[0]["lr"] == 0.02
    _train(resumed, opt2, 3, closure=False)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_map_is_held_by_reference_not_copied() -> None:
    model = mlp()
    g_map = Diagonal(model).double()
    opt = mo.MirrorDescent(model.named_parameters(), g_map, lr=0.1)
    assert opt.mirror_map is g_map
    assert all("mirror_map" not in group for group in opt.param_groups)


def test_parameter_without_grad_keeps_its_dual() -> None:
    model = torch.nn.Linear(2, 1).double()
    opt = mo.MirrorDescent(model.named_parameters(), Identity(model), lr=0.1)
    bias = model.bias.detach().clone()
    model.weight.grad = torch.ones_like(model.weight)
    opt.step()
    assert torch.equal(model.bias, bias)
    assert torch.equal(model.weight.grad, torch.ones_like(model.weight))


def test_errors_name_the_argument() -> None:
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"`lr` must be positive and finite, got -0.1"):
        mo.MirrorDescent(model.named_parameters(), Identity(model), lr=-0.1)
    with pytest.raises(
        TypeError, match=r"`mirror_map` must be a mirroropt.maps.MirrorMap, got dict"
    ):
        mo.MirrorDescent(model.named_parameters(), {}, lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`params` has 1 tensors but `mirror_map` was built for 2"
    ):
        mo.MirrorDescent([("weight", model.weight)], Identity(model), lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"`params\['weight'\]` has shape \(1, 2\), but Identity was built for shape \(2, 2\)",
    ):
        mo.MirrorDescent(
            model.named_parameters(), Identity({"weight": (2, 2), "bias": (1,)}), lr=0.1
        )
    with pytest.raises(
        ValueError,
        match=r"`params` does not fit Identity.*missing \['w'\], unexpected \['weight'\]",
    ):
        mo.MirrorDescent(model.named_parameters(), Identity({"w": (1, 2), "bias": (1,)}), lr=0.1)

    class NoDual(mo.MirrorMap):
        def to_primal(self, z):
            return dict(z)

    with pytest.raises(
        TypeError, match=r"\(NoDual\) has no closed-form to_dual; pass a dual initialization `z0`"
    ):
        mo.MirrorDescent(model.named_parameters(), NoDual(model), lr=0.1)
    z0 = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    opt = mo.MirrorDescent(model.named_parameters(), NoDual(model), lr=0.1, z0=z0)
    assert torch.equal(model.weight.detach(), torch.zeros(1, 2))  # φ₀ = g(z₀), before any step
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert torch.equal(model.weight.detach(), torch.full((1, 2), -0.1))


def test_non_finite_gradient_raises_and_leaves_parameters_untouched() -> None:
    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()
    opt = mo.MirrorDescent(model.named_parameters(), Identity(model), lr=0.1)
    model.weight.grad = torch.tensor([[float("nan"), 0.0]])
    model.bias.grad = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"The gradient in `params` is not finite for \['weight'\]"
    ):
        opt.step()
    assert torch.equal(model.weight.detach(), before)


def test_resume_is_order_independent_for_a_map_without_to_dual() -> None:
    # Reproducer (issue 11): building MirrorDescent(..., z0=...) after model.load_state_dict
    # wrote g(z0) over the loaded weights; the resumed steps then ended 1e-2 off.
    from mirroropt.maps import ConvexPotential

    model = mlp()
    g_map = perturbed(ConvexPotential(model, hidden=2), scale=0.3)
    gen = torch.Generator().manual_seed(2)
    z0 = {
        n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in model.named_parameters()
    }
    opt = mo.MirrorDescent(model.named_parameters(), g_map, lr=0.02, z0=z0)
    _train(model, opt, 2, closure=False)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 3, closure=False)
    for order in ("model first", "optimizer first"):
        resumed = mlp(seed=7)
        if order == "model first":
            resumed.load_state_dict(saved_model)
            opt2 = mo.MirrorDescent(resumed.named_parameters(), g_map, lr=0.02, z0=z0)
        else:
            opt2 = mo.MirrorDescent(resumed.named_parameters(), g_map, lr=0.02, z0=z0)
            resumed.load_state_dict(saved_model)
        opt2.load_state_dict(saved_opt)
        for p, q in zip(resumed.parameters(), saved_model.values()):
            assert torch.equal(p.detach(), q), order  # φ = g(z) of the loaded duals
        _train(resumed, opt2, 3, closure=False)
        for p, q in zip(model.parameters(), resumed.parameters()):
            assert torch.equal(p, q), order


def test_unnamed_parameters_are_matched_by_identity_or_refused() -> None:
    # Reproducer (issue 11): unnamed tensors were matched to the map by position, so two
    # same-shaped tensors given in another order were silently swapped.
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    g_map = Diagonal(net)
    swapped = [net[1].weight, net[0].weight, net[0].bias, net[1].bias]
    opt = mo.MirrorDescent(swapped, g_map, lr=0.1)
    assert opt._names[net[1].weight] == "1.weight"  # by identity, whatever the order
    assert opt._names[net[0].weight] == "0.weight"
    other = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    with pytest.raises(
        TypeError, match=r"`params` must be named.*got 4 tensor\(s\) it cannot name"
    ):
        mo.MirrorDescent(other.parameters(), g_map, lr=0.1)  # same shapes, not the map's tensors
    with pytest.raises(TypeError, match=r"`params` must be named"):
        mo.MirrorDescent(
            net.parameters(), Diagonal({n: p.shape for n, p in net.named_parameters()}), lr=0.1
        )
    named = dict(net.named_parameters())
    opt = mo.MirrorDescent([(n, named[n]) for n in reversed(list(named))], g_map, lr=0.1)
    assert opt._names[net[1].weight] == "1.weight"
    assert copy.deepcopy(g_map).source_name(net[0].weight) is None  # copies know no tensors


def test_frozen_parameters_are_refused() -> None:
    # Reproducer (issue 11): with a coupled map (BlockIAF), a requires_grad=False head moved by
    # 0.071 in 10 steps.
    from mirroropt.maps import BlockIAF

    model = mlp()
    model[4].requires_grad_(False)
    with pytest.raises(ValueError, match=r"`params` \['4.weight', '4.bias'\] do not require grad"):
        mo.MirrorDescent(model.named_parameters(), BlockIAF(model).double(), lr=0.1)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = mo.MirrorDescent(trainable, Identity(dict(trainable)), lr=0.1)
    model[2].weight.requires_grad_(False)  # frozen after construction: refused at the step
    with pytest.raises(ValueError, match=r"`params` \['2.weight'\] do not require grad"):
        opt.step()


def test_integer_parameters_are_refused_at_construction() -> None:
    # Reproducer (issue 11): accepted, then "alpha must not be a floating point number" at step.
    w = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"`params` must be floating point, got torch.int64"):
        mo.MirrorDescent([("w", w)], Identity({"w": w}), lr=0.1)


def test_tensor_lr_must_be_a_scalar() -> None:
    model = torch.nn.Linear(2, 1).double()
    with pytest.raises(ValueError, match=r"`lr` must be a 0-d \(scalar\) tensor.*shape \(1, 1\)"):
        mo.MirrorDescent(model.named_parameters(), Identity(model), lr=torch.ones(1, 1))
