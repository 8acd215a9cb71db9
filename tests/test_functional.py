"""The functional core: closed forms, parity with hand-written MAML, differentiability, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as tnf
from torch import Tensor
from torch.func import functional_call, grad, vmap

import mirroropt as mo
from mirroropt import functional as F
from mirroropt.maps import Diagonal, Identity
from tests._models import mlp, regression_tasks
from tests.registry import perturbed


def _params(model: torch.nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}


def _mse(model: torch.nn.Module, x: Tensor, y: Tensor):
    return lambda p: tnf.mse_loss(functional_call(model, p, (x,)), y)


# -- closed forms ---------------------------------------------------------------------------------


def test_identity_adapt_is_gradient_descent_step_by_step() -> None:
    model = mlp()
    xs, ys, _, _ = regression_tasks(1, 10)
    phi = _params(model)
    loss = _mse(model, xs[0], ys[0])
    out = mo.adapt(Identity(model), loss, phi, lr=0.01, steps=3)
    ref = {n: t.detach() for n, t in phi.items()}
    for _ in range(3):
        g = grad(loss)(ref)
        ref = {n: torch.add(ref[n], g[n], alpha=-0.01) for n in ref}
    for n in ref:
        assert torch.equal(out[n].detach(), ref[n])


def test_diagonal_equals_closed_form_in_dual_and_primal() -> None:
    model = mlp()
    xs, ys, _, _ = regression_tasks(1, 10)
    loss = _mse(model, xs[0], ys[0])
    g_map = perturbed(Diagonal(model))
    d = dict(zip(g_map.names, g_map.scales()))
    phi0 = _params(model)
    traj = mo.adapt_trajectory(g_map, loss, phi0, lr=0.02, steps=3)
    phi, z = dict(phi0), {n: phi0[n] / d[n] for n in phi0}
    for k in range(3):
        gk = grad(loss)(phi)
        z = {n: z[n] - 0.02 * gk[n] for n in z}  # dual: z − α g
        phi_next = {n: phi[n] - 0.02 * d[n] * gk[n] for n in phi}  # primal: φ − α d ⊙ g
        for n in phi:
            torch.testing.assert_close(traj.z[k + 1][n], z[n], rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(traj.phi[k + 1][n], phi_next[n], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(traj.grads[k][n], gk[n], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(traj.losses[k], loss(phi), rtol=1e-13, atol=0)
        phi = phi_next


def test_diagonal_per_tensor_scales_whole_tensors() -> None:
    g_map = Diagonal({"a": (2, 2), "b": (3,)}, per="tensor").double()
    with torch.no_grad():
        g_map.log_scale["a"].fill_(math.log(3.0))
    z = {"a": torch.ones(2, 2, dtype=torch.float64), "b": torch.ones(3, dtype=torch.float64)}
    out = g_map.to_primal(z)
    torch.testing.assert_close(
        out["a"], torch.full((2, 2), 3.0, dtype=torch.float64), rtol=1e-15, atol=0
    )
    assert torch.equal(out["b"], z["b"])
    assert g_map.log_scale["a"].shape == ()


def test_steps_zero_returns_the_initialization() -> None:
    phi = {"w": torch.randn(3)}
    out = mo.adapt(Diagonal(phi), lambda p: p["w"].sum(), phi, lr=0.1, steps=0)
    assert out["w"] is phi["w"]


def test_step_with_per_tensor_lr_mapping() -> None:
    g_map = Identity({"a": (2,), "b": (2,)})
    z = {"a": torch.ones(2), "b": torch.ones(2)}
    grads = {"a": torch.ones(2), "b": torch.ones(2)}
    out = F.step(g_map, z, grads, {"a": 0.5, "b": torch.tensor(0.25)})
    assert torch.equal(out["a"], torch.full((2,), 0.5))
    assert torch.equal(out["b"], torch.full((2,), 0.75))


# -- parity with a hand-written torch.func MAML ----------------------------------------------------


def _handwritten_maml(model, params, xs, ys, xq, yq, lr, steps):
    """PyTorch's functorch MAML example pattern: functional_call, grad, vmap, {k: p - lr * g}."""

    def inner(x_s, y_s, x_q, y_q):
        p = params
        for _ in range(steps):
            g = grad(lambda q: tnf.mse_loss(functional_call(model, q, (x_s,)), y_s))(p)
            p = {k: p[k] - lr * g[k] for k in p}
        return tnf.mse_loss(functional_call(model, p, (x_q,)), y_q)

    return vmap(inner)(xs, ys, xq, yq).mean()


def test_identity_meta_gradient_matches_handwritten_torch_func_maml() -> None:
    model = mlp()
    xs, ys, xq, yq = regression_tasks(4, 10)
    params = _params(model)
    ref = torch.autograd.grad(
        _handwritten_maml(model, params, xs, ys, xq, yq, 0.01, 3), list(params.values())
    )
    g_map = Identity(model)

    def task(x_s, y_s, x_q, y_q):
        phi = mo.adapt(g_map, _mse(model, x_s, y_s), params, lr=0.01, steps=3)
        return tnf.mse_loss(functional_call(model, phi, (x_q,)), y_q)

    meta = mo.map_tasks(task, xs, ys, xq, yq, model=model).mean()
    ours = torch.autograd.grad(meta, list(params.values()))
    for a, b in zip(ours, ref):
        # ours updates with torch.add(z, g, alpha=-lr) (SGD's kernel), the reference with p - lr * g:
        # the two round differently in the last bit, nothing more.
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
        assert a.abs().max() > 0


def test_outer_torch_func_grad_equals_outer_autograd() -> None:
    model = mlp()
    xs, ys, xq, yq = regression_tasks(1, 10)
    g_map = perturbed(Diagonal(model))
    params = _params(model)

    def meta(p: dict[str, Tensor]) -> Tensor:
        phi = mo.adapt(g_map, _mse(model, xs[0], ys[0]), p, lr=0.05, steps=2)
        return tnf.mse_loss(functional_call(model, phi, (xq[0],)), yq[0])

    by_func = grad(meta)(params)
    by_autograd = torch.autograd.grad(meta(params), list(params.values()))
    for (n, a), b in zip(by_func.items(), by_autograd):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15, msg=n)


def test_first_order_meta_gradient_is_query_gradient_at_adapted_point() -> None:
    model = mlp()
    xs, ys, xq, yq = regression_tasks(1, 10)
    params = _params(model)
    phi = mo.adapt(
        Identity(model), _mse(model, xs[0], ys[0]), params, lr=0.05, steps=3, first_order=True
    )
    query = _mse(model, xq[0], yq[0])
    fo = torch.autograd.grad(query(phi), list(params.values()))
    at_phi = grad(query)({n: t.detach() for n, t in phi.items()})
    for a, n in zip(fo, params):
        torch.testing.assert_close(a, at_phi[n], rtol=1e-12, atol=1e-15)
    second = torch.autograd.grad(
        query(mo.adapt(Identity(model), _mse(model, xs[0], ys[0]), params, lr=0.05, steps=3)),
        list(params.values()),
    )
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(fo, second))


def test_first_order_still_differentiates_through_the_map() -> None:
    model = mlp()
    xs, ys, xq, yq = regression_tasks(1, 10)
    g_map = Diagonal(model).double()
    phi = mo.adapt(
        g_map, _mse(model, xs[0], ys[0]), _params(model), lr=0.05, steps=2, first_order=True
    )
    _mse(model, xq[0], yq[0])(phi).backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in g_map.parameters())


# -- differentiability: gradcheck in float64 through K unrolled steps ------------------------------


def test_gradcheck_diagonal_through_three_steps_wrt_init_map_and_lr() -> None:
    g_map = _DiagonalCall(Diagonal({"w": (3, 2), "b": (3,)}).double())
    x = torch.randn(5, 2, dtype=torch.float64)
    y = torch.randn(5, 3, dtype=torch.float64)

    def loss(p: dict[str, Tensor]) -> Tensor:
        return ((torch.tanh(x @ p["w"].T + p["b"]) - y) ** 2).mean()

    def f(w: Tensor, b: Tensor, log_w: Tensor, log_b: Tensor, lr: Tensor) -> Tensor:
        # functional_call swaps the map's log-scales in for the call, so gradcheck sees them.
        swapped = {"m.log_scale.w": log_w, "m.log_scale.b": log_b}
        return functional_call(g_map, swapped, ({"w": w, "b": b}, lr, loss))

    inputs = (
        torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
        torch.randn(3, dtype=torch.float64, requires_grad=True),
        (0.2 * torch.randn(3, 2, dtype=torch.float64)).requires_grad_(),
        (0.2 * torch.randn(3, dtype=torch.float64)).requires_grad_(),
        torch.tensor(0.3, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5)


class _DiagonalCall(torch.nn.Module):
    """Runs adapt with a map whose parameters functional_call can swap in (for gradcheck)."""

    def __init__(self, m: Diagonal) -> None:
        super().__init__()
        self.m = m

    def forward(self, phi: dict[str, Tensor], lr: Tensor, loss) -> Tensor:
        out = mo.adapt(self.m, loss, phi, lr=lr, steps=3)
        return torch.stack([out["w"].sum() * 0.7 + (out["w"] ** 2).sum(), out["b"].pow(3).sum()])


# -- vmap over tasks ------------------------------------------------------------------------------


def test_vmap_over_tasks_equals_per_task_loop_for_values_and_meta_gradients() -> None:
    model = mlp()
    xs, ys, xq, yq = regression_tasks(3, 8)
    g_map = perturbed(Diagonal(model))
    params = _params(model)

    def task(x_s, y_s, x_q, y_q):
        phi = mo.adapt(g_map, _mse(model, x_s, y_s), params, lr=0.02, steps=2)
        return tnf.mse_loss(functional_call(model, phi, (x_q,)), y_q)

    leaves = [*params.values(), *g_map.parameters()]
    by_vmap = mo.map_tasks(task, xs, ys, xq, yq, model=model, strategy="vmap")
    by_loop = mo.map_tasks(task, xs, ys, xq, yq, model=model, strategy="loop")
    torch.testing.assert_close(by_vmap, by_loop, rtol=1e-12, atol=0)
    ga = torch.autograd.grad(by_vmap.mean(), leaves)
    gb = torch.autograd.grad(by_loop.mean(), leaves)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


# -- errors name the argument, what was expected and what came -------------------------------------


@pytest.fixture
def setup() -> tuple[Identity, dict[str, Tensor]]:
    phi = {"w": torch.zeros(2), "b": torch.zeros(1)}
    return Identity(phi), phi


def _loss(p: dict[str, Tensor]) -> Tensor:
    return (p["w"] ** 2).sum() + p["b"].sum()


@pytest.mark.parametrize(
    ("lr", "error", "match"),
    [
        (0.0, ValueError, r"`lr` must be positive and finite, got 0.0"),
        (-0.1, ValueError, r"`lr` must be positive and finite, got -0.1"),
        (float("nan"), ValueError, r"`lr` must be positive and finite, got nan"),
        (torch.tensor(-1.0), ValueError, r"`lr` must be positive and finite"),
        (
            torch.tensor(1),
            TypeError,
            r"`lr` must be a floating-point tensor, got dtype torch.int64",
        ),
        (True, TypeError, r"`lr` must be a positive number or tensor, got bool"),
        ("0.1", TypeError, r"`lr` must be a positive number or tensor, got str"),
        ({"w": 0.1}, ValueError, r"`lr` is a mapping but has no step size for \['b'\]"),
        ({"w": 0.1, "b": -1.0}, ValueError, r"`lr\['b'\]` must be positive and finite, got -1.0"),
    ],
)
def test_bad_lr(setup, lr, error, match) -> None:
    g_map, phi = setup
    with pytest.raises(error, match=match):
        mo.adapt(g_map, _loss, phi, lr=lr, steps=1)


def test_bad_arguments(setup) -> None:
    g_map, phi = setup
    with pytest.raises(ValueError, match=r"Give exactly one of `phi` .* got both"):
        mo.adapt(g_map, _loss, phi, z=phi, lr=0.1, steps=1)
    with pytest.raises(ValueError, match=r"Give exactly one of `phi` .* got neither"):
        mo.adapt(g_map, _loss, lr=0.1, steps=1)
    with pytest.raises(ValueError, match=r"`steps` must be a non-negative int, got -1"):
        mo.adapt(g_map, _loss, phi, lr=0.1, steps=-1)
    with pytest.raises(ValueError, match=r"`steps` must be a non-negative int, got 2.0"):
        mo.adapt(g_map, _loss, phi, lr=0.1, steps=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`loss_fn` must be callable, got int"):
        mo.adapt(g_map, 3, phi, lr=0.1, steps=1)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"`mirror_map` must be a mirroropt.maps.MirrorMap, got Linear"
    ):
        mo.adapt(torch.nn.Linear(1, 1), _loss, phi, lr=0.1, steps=1)  # type: ignore[arg-type]


def test_parameters_that_do_not_fit_the_map(setup) -> None:
    g_map, phi = setup
    with pytest.raises(
        ValueError, match=r"`phi` does not fit Identity.*missing \['b'\], unexpected \['c'\]"
    ):
        mo.adapt(g_map, _loss, {"w": phi["w"], "c": phi["b"]}, lr=0.1, steps=1)
    with pytest.raises(
        ValueError, match=r"`phi\['w'\]` has shape \(3,\), but Identity was built for shape \(2,\)"
    ):
        mo.adapt(g_map, _loss, {"w": torch.zeros(3), "b": phi["b"]}, lr=0.1, steps=1)
    with pytest.raises(ValueError, match=r"`z` mixes dtypes/devices: 'b' is torch.float64"):
        mo.adapt(g_map, _loss, z={"w": phi["w"], "b": phi["b"].double()}, lr=0.1, steps=1)
    with pytest.raises(TypeError, match=r"`z\['w'\]` must be a tensor, got list"):
        mo.to_primal(g_map, {"w": [0.0, 0.0], "b": phi["b"]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"`z` must be a dict name → tensor, got list"):
        mo.to_primal(g_map, [phi["w"]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`grads\['b'\]` has shape \(2,\)"):
        mo.step(g_map, phi, {"w": phi["w"], "b": torch.zeros(2)}, 0.1)


def test_map_dtype_must_match_parameters() -> None:
    g_map = Diagonal({"w": (2,)})  # float32 parameters
    with pytest.raises(
        ValueError,
        match=r"`phi` is torch.float64 on cpu, but Diagonal's parameters are torch.float32",
    ):
        mo.adapt(
            g_map,
            lambda p: p["w"].sum(),
            {"w": torch.zeros(2, dtype=torch.float64)},
            lr=0.1,
            steps=1,
        )


def test_non_finite_gradient_is_an_error_not_a_silent_nan(setup) -> None:
    g_map, phi = setup
    with pytest.raises(
        ValueError, match=r"gradient of `loss_fn` at inner step 0 is not finite for \['w'\]"
    ):
        mo.adapt(
            g_map,
            lambda p: torch.sqrt(p["w"]).sum() + p["b"].sum(),
            {"w": torch.tensor([1.0, 0.0]), "b": phi["b"]},
            lr=0.1,
            steps=2,
        )
    out = mo.adapt(
        g_map,
        lambda p: torch.sqrt(p["w"]).sum() + p["b"].sum(),
        phi,
        lr=0.1,
        steps=1,
        check_finite=False,
    )
    assert not torch.isfinite(out["w"]).any()


def test_init_rejects_maps_without_to_dual() -> None:
    class NoDual(mo.MirrorMap):
        def to_primal(self, z):
            return dict(z)

    g_map = NoDual({"w": (2,)})
    with pytest.raises(
        TypeError, match=r"\(NoDual\) has no closed-form to_dual.*pass a dual initialization `z`"
    ):
        mo.adapt(g_map, lambda p: p["w"].sum(), {"w": torch.zeros(2)}, lr=0.1, steps=1)
    with pytest.raises(NotImplementedError, match=r"NoDual has no closed-form `to_dual`"):
        g_map.to_dual({"w": torch.zeros(2)})
    out = mo.adapt(g_map, lambda p: p["w"].sum(), z={"w": torch.zeros(2)}, lr=0.5, steps=2)
    assert torch.equal(out["w"], torch.full((2,), -1.0))


def test_map_construction_errors() -> None:
    with pytest.raises(TypeError, match=r"`params` must be an nn.Module, a mapping .* got int"):
        Identity(3)
    with pytest.raises(ValueError, match=r"`params` must name at least one tensor, got none"):
        Identity({})
    with pytest.raises(TypeError, match=r"`params\['w'\]` must be a tensor or a shape, got str"):
        Identity({"w": "big"})
    with pytest.raises(TypeError, match=r"iterable with items of type \['Tensor'\]"):
        Identity([torch.zeros(2)])
    with pytest.raises(ValueError, match=r"`per` must be 'coordinate' or 'tensor', got 'row'"):
        Diagonal({"w": (2,)}, per="row")  # type: ignore[arg-type]
    assert Identity(torch.nn.Linear(2, 3).named_parameters()).shapes == {
        "weight": (3, 2),
        "bias": (3,),
    }


def test_tensor_lr_must_be_scalar_or_exactly_the_tensors_shape() -> None:
    # Reproducer (issue 11): lr of shape (1, 1) silently reshaped a bias from (4,) to (1, 4);
    # other shapes gave raw broadcasting errors.
    from mirroropt.maps import Identity

    shapes = {"w": (4, 3), "b": (4,)}
    g_map = Identity(shapes)
    z = {n: torch.ones(s, dtype=torch.float64) for n, s in shapes.items()}
    grads = {n: torch.full(s, 2.0, dtype=torch.float64) for n, s in shapes.items()}
    with pytest.raises(ValueError, match=r"`lr` must be a 0-d \(scalar\) tensor; for per-tensor"):
        mo.step(g_map, z, grads, torch.full((1, 1), 0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`lr` must be a 0-d .* got shape \(4,\)"):
        mo.adapt(g_map, lambda p: p["b"].sum(), z, lr=torch.ones(4, dtype=torch.float64), steps=1)
    with pytest.raises(
        ValueError,
        match=r"`lr\['b'\]` must be a 0-d \(scalar\) tensor or one of the tensor's "
        r"shape \(4,\), got shape \(1, 4\)",
    ):
        mo.step(g_map, z, grads, {"w": 0.1, "b": torch.ones(1, 4, dtype=torch.float64)})
    per_coordinate = {
        "w": torch.linspace(0.1, 1.2, 12, dtype=torch.float64).reshape(4, 3),
        "b": torch.tensor(0.5, dtype=torch.float64),
    }
    new = mo.step(g_map, z, grads, per_coordinate)
    assert new["b"].shape == (4,)
    assert torch.equal(new["w"], 1.0 - per_coordinate["w"] * 2.0)  # Meta-SGD's z - α ⊙ g
    assert torch.equal(new["b"], torch.zeros(4, dtype=torch.float64))


# -- linear maps step in the primal -----------------------------------------------------------------


def _counting_to_dual(monkeypatch: pytest.MonkeyPatch, g_map: mo.maps.MirrorMap) -> list[int]:
    calls = [0]
    original = g_map.to_dual

    def to_dual(phi):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(phi)

    monkeypatch.setattr(g_map, "to_dual", to_dual)
    return calls


@pytest.mark.parametrize("name", ["identity", "diagonal", "kronecker"])
@pytest.mark.parametrize("scalar_lr", [0.05, "tensor"])
def test_a_linear_map_from_phi0_steps_in_the_primal_with_the_dual_loops_iterates_and_grads(
    name: str, scalar_lr: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """φ_{k+1} = φ_k − α g(∇L) (no z₀ = ∇h(φ₀)) equals the dual loop g(z_k − α∇L): value and
    meta-gradient (map, φ₀, a learned α) to 1e-12 in float64; a per-coordinate α (which does
    not commute with P) keeps the dual loop."""
    model = mlp()
    xs, ys, xq, yq = regression_tasks(1, 10)
    g_map = perturbed(mo.maps.MAPS[name](model))
    phi0 = _params(model)
    lr = (
        torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        if scalar_lr == "tensor"
        else 0.05
    )
    loss, query = _mse(model, xs[0], ys[0]), _mse(model, xq[0], yq[0])
    leaves = [*phi0.values(), *g_map.parameters(), *([lr] if isinstance(lr, Tensor) else [])]
    dual = mo.adapt_trajectory(g_map, loss, phi0, lr=lr, steps=3).phi[-1]  # records z: dual loop
    expected = torch.autograd.grad(query(dual), leaves, allow_unused=True, materialize_grads=True)
    calls = _counting_to_dual(monkeypatch, g_map)
    primal = mo.adapt(g_map, loss, phi0, lr=lr, steps=3)
    assert calls[0] == 0  # no to_dual: the primal loop ran
    got = torch.autograd.grad(query(primal), leaves, allow_unused=True, materialize_grads=True)
    for n in phi0:
        torch.testing.assert_close(primal[n], dual[n], rtol=1e-12, atol=1e-12)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    per_coord = {n: torch.full_like(p, 0.05) for n, p in phi0.items()}
    mo.adapt(g_map, loss, phi0, lr=per_coord, steps=1)
    assert calls[0] == 1  # a per-coordinate step size: the dual loop, from z₀ = ∇h(φ₀)


@pytest.mark.parametrize("name", ["diagonal", "kronecker"])
def test_the_learner_of_a_linear_map_steps_in_the_primal_and_reads_z_as_grad_h(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mirroropt.integrations import MirrorMAML

    model = mlp().double()
    xs, ys, _, _ = regression_tasks(1, 10)
    g_map = perturbed(mo.maps.MAPS[name](model))
    loss = _mse(model, xs[0], ys[0])
    traj = mo.adapt_trajectory(g_map, loss, dict(model.named_parameters()), lr=0.05, steps=3)
    calls = _counting_to_dual(monkeypatch, g_map)
    learner = MirrorMAML(model, g_map, 0.05).clone()
    for _ in range(3):
        learner.adapt(tnf.mse_loss(learner(xs[0]), ys[0]))
    assert calls[0] == 0
    z = learner.z
    assert calls[0] == 1  # read through ∇h(φ_k)
    for n in traj.phi[-1]:
        torch.testing.assert_close(learner.phi[n], traj.phi[-1][n], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(z[n], traj.z[-1][n], rtol=1e-10, atol=1e-12)
