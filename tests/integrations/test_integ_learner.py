"""learn2learn-style wrapper: MirrorMAML.clone()/adapt(loss) against hand-written GD and the core."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mirroropt
from mirroropt.integrations import MAML, MirrorLearner, MirrorMAML
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


def learner_meta_grads(
    maml: MirrorMAML, tasks: tuple[Tensor, ...], wrt: list[Tensor], *, steps: int = STEPS
) -> tuple[list[MirrorLearner], list[Tensor]]:
    """The usual learn2learn loop: clone per task, adapt on support, sum query losses."""
    total = torch.zeros((), dtype=torch.float64)
    learners = []
    for x_s, y_s, x_q, y_q in zip(*tasks):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.mse_loss(learner(x_s), y_s))
        learners.append(learner)
        total = total + F.mse_loss(learner(x_q), y_q)
    return learners, list(torch.autograd.grad(total, wrt))


def reference_gd(
    model: nn.Module, tasks: tuple[Tensor, ...], *, first_order: bool, steps: int = STEPS
) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
    """Hand-written clone/adapt MAML with plain gradient descent, p - lr * g."""
    total = torch.zeros((), dtype=torch.float64)
    adapted = []
    for x_s, y_s, x_q, y_q in zip(*tasks):
        phi = dict(model.named_parameters())
        for _ in range(steps):
            loss = F.mse_loss(torch.func.functional_call(model, phi, (x_s,)), y_s)
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=not first_order)
            phi = {n: p - LR * g for (n, p), g in zip(phi.items(), grads)}
        adapted.append(phi)
        total = total + F.mse_loss(torch.func.functional_call(model, phi, (x_q,)), y_q)
    return adapted, list(torch.autograd.grad(total, list(model.parameters())))


@pytest.mark.parametrize("first_order", [False, True])
def test_identity_equals_hand_written_gd_to_the_bit(first_order: bool) -> None:
    tasks = make_tasks()
    model = make_model()
    expected_phi, expected_grads = reference_gd(model, tasks, first_order=first_order)
    for maml in (
        MAML(model, lr=LR, first_order=first_order),
        MirrorMAML(model, Identity(model), LR, first_order=first_order),
    ):
        learners, grads = learner_meta_grads(maml, tasks, list(model.parameters()))
        for learner, phi in zip(learners, expected_phi):
            assert_equal(list(learner.phi.values()), list(phi.values()))
        assert_equal(grads, expected_grads)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("name", NONTRIVIAL)
def test_meta_gradients_equal_the_functional_core(name: str, first_order: bool) -> None:
    tasks = make_tasks()
    model = make_model()
    mirror_map = MAP_BUILDERS[name](model)
    maml = MirrorMAML(model, mirror_map, LR, first_order=first_order)
    wrt = meta_params(model, mirror_map)
    _, grads = learner_meta_grads(maml, tasks, wrt)
    _, expected = core_meta_grads(model, mirror_map, tasks, first_order=first_order)
    assert_close(grads, expected)
    map_grads = grads[len(list(model.parameters())) :]
    assert map_grads and all(float(g.abs().max()) > 1e-6 for g in map_grads)
    assert {id(p) for p in maml.parameters()} == {id(p) for p in wrt}


def test_learnable_lr_parameter_is_meta_learned_like_the_core() -> None:
    tasks = make_tasks()
    model = make_model()
    mirror_map = MAP_BUILDERS["diagonal"](model)
    lr = nn.Parameter(torch.tensor(LR, dtype=torch.float64))
    maml = MirrorMAML(model, mirror_map, lr)
    assert any(p is lr for p in maml.parameters())
    wrt = [*meta_params(model, mirror_map), lr]
    _, grads = learner_meta_grads(maml, tasks, wrt)
    _, expected = core_meta_grads(model, mirror_map, tasks, lr=lr, extra=(lr,))
    assert_close(grads, expected)


def test_dual_initialization_reaches_its_meta_gradient() -> None:
    tasks = make_tasks(n=1)
    model = make_model()
    mirror_map = MAP_BUILDERS["coupled"](model)
    z0 = {n: (0.5 * p).detach().requires_grad_() for n, p in model.named_parameters()}
    learner = MirrorMAML(model, mirror_map, LR).clone(z=z0)
    x_s, y_s, x_q, y_q = (t[0] for t in tasks)
    for _ in range(STEPS):
        learner.adapt(F.mse_loss(learner(x_s), y_s))
    grads = torch.autograd.grad(F.mse_loss(learner(x_q), y_q), list(z0.values()))
    phi = mirroropt.adapt(
        mirror_map,
        lambda p: F.mse_loss(torch.func.functional_call(model, p, (x_s,)), y_s),
        z=z0,
        lr=LR,
        steps=STEPS,
    )
    expected = torch.autograd.grad(
        F.mse_loss(torch.func.functional_call(model, phi, (x_q,)), y_q), list(z0.values())
    )
    assert_close(list(grads), list(expected))


def test_adapting_never_touches_the_model() -> None:
    model = make_model()
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    learner = MirrorMAML(model, MAP_BUILDERS["coupled"](model), LR).clone()
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    for _ in range(STEPS):
        learner.adapt(F.mse_loss(learner(x_s), y_s))
    for n, p in model.named_parameters():
        assert p is before[n][0] and torch.equal(p, before[n][1])
        assert not hasattr(p, "_lr") and p.grad is None
    assert not any(torch.equal(learner.phi[n], before[n][1]) for n in before)
    assert set(vars(learner)) == {
        "module",
        "mirror_map",
        "lr",
        "first_order",
        "check_finite",
        "phi",
        "_z",  # z_k, or None for a linear map's primal loop (then `learner.z` is ∇h(φ_k))
        "_prepared",  # a memo of mirror_map.prepared(), keyed on the map's parameter versions
    }


def test_frozen_parameters_get_zero_gradients() -> None:
    model = make_model()
    model[0].bias.requires_grad_(False)
    learner = MAML(model, lr=LR).clone()
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    learner.adapt(F.mse_loss(learner(x_s), y_s))
    assert torch.equal(learner.phi["0.bias"], model[0].bias)


def test_forward_runs_the_model_at_its_own_parameters() -> None:
    model = make_model()
    x = torch.randn(4, 3, dtype=torch.float64)
    maml = MAML(model, lr=LR)
    assert torch.equal(maml(x), model(x))
    assert torch.equal(maml.clone()(x), model(x))


def test_errors_name_the_argument() -> None:
    model = make_model()
    mirror_map = Identity(model)
    with pytest.raises(TypeError, match=r"`model` must be an nn\.Module, got dict"):
        MirrorMAML({}, mirror_map, LR)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`mirror_map` must be a mirroropt\.maps\.MirrorMap"):
        MirrorMAML(model, model, LR)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`lr` must be positive and finite, got -0\.1"):
        MirrorMAML(model, mirror_map, -0.1)
    with pytest.raises(ValueError, match=r"`model.named_parameters\(\)` does not fit Identity"):
        MirrorMAML(model, Identity({"w": torch.zeros(1)}), LR)
    learner = MirrorMAML(model, mirror_map, LR).clone()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"`loss` must be a scalar tensor, got float"):
        learner.adapt(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`loss` must be a scalar tensor, got shape \(4, 2\)"):
        learner.adapt(learner(x))
    with pytest.raises(ValueError, match=r"`loss` does not depend on the learner's parameters"):
        learner.adapt(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"gradient of `loss` is not finite"):
        learner.adapt(learner(x).sum() * float("inf"))
    unchecked = MirrorMAML(model, mirror_map, LR, check_finite=False).clone()
    unchecked.adapt(unchecked(x).sum() * float("inf"))  # let through, as asked
    assert not torch.isfinite(unchecked.phi["0.bias"]).all()


class _NoDual(MirrorMap):
    """A map without ``to_dual`` (identity in value), to check the dual-initialization error."""

    has_to_dual = False

    def to_primal(self, z: dict[str, Tensor]) -> dict[str, Tensor]:
        return dict(z)


def test_maps_without_to_dual_need_a_dual_initialization() -> None:
    model = make_model()
    maml = MirrorMAML(model, _NoDual(model), LR)
    with pytest.raises(TypeError, match=r"no closed-form to_dual.*dual initialization `z`"):
        maml.clone()
    z0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = maml.clone(z=z0)
    assert_equal(list(learner.phi.values()), list(z0.values()))


def test_diagonal_learner_is_meta_sgd_in_closed_form() -> None:
    """One step of Diagonal is φ − lr · d ⊙ ∇L(φ) (Meta-SGD), checked against the formula."""
    model = make_model()
    mirror_map = MAP_BUILDERS["diagonal"](model)
    assert isinstance(mirror_map, Diagonal)
    learner = MirrorMAML(model, mirror_map, LR).clone()
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    loss = F.mse_loss(learner(x_s), y_s)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    learner.adapt(loss)
    expected = [p - LR * d * g for p, d, g in zip(model.parameters(), mirror_map.scales(), grads)]
    assert_close(list(learner.phi.values()), expected, rtol=1e-14)


def test_prepared_map_is_reused_across_steps_and_refreshed_after_a_meta_step() -> None:
    """The learner caches mirror_map.prepared() per task; an in-place meta-step invalidates it."""
    from mirroropt.maps import Kronecker

    model = make_model()
    g_map = Kronecker(model).to(next(model.parameters()).dtype)
    calls = []
    original = g_map.prepared

    def counting() -> Any:
        calls.append(1)
        return original()

    g_map.prepared = counting  # type: ignore[method-assign]
    maml = MirrorMAML(model, g_map, LR)
    x_s, y_s, x_q, y_q = (t[0] for t in make_tasks())
    learner = maml.clone()
    for _ in range(STEPS):
        learner.adapt(F.mse_loss(learner(x_s), y_s))
    assert len(calls) == 1
    reference = mirroropt.adapt(
        g_map,
        lambda p: F.mse_loss(torch.func.functional_call(model, p, (x_s,)), y_s),
        dict(model.named_parameters()),
        lr=LR,
        steps=STEPS,
    )
    for n in reference:
        torch.testing.assert_close(learner.phi[n], reference[n], rtol=1e-12, atol=1e-12)
    F.mse_loss(learner(x_q), y_q).backward()
    before = len(calls)
    with torch.no_grad():
        for p in g_map.parameters():
            p.add_(0.01 * p.grad)  # type: ignore[operator]
    learner.adapt(F.mse_loss(learner(x_s), y_s))
    assert len(calls) == before + 1
