"""ConvexPotential: an ICNN conjugate h*, its gradient map, bounds, vmap, gradcheck, dual solver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import mirroropt
import mirroropt.maps._convex_potential as cp_module
from mirroropt.maps import MAPS, ConvexPotential
from mirroropt.maps._convex_potential import FLAT_MAX_NUMEL, GEMM_MIN_ROWS
from mirroropt.testing import (
    check_differentiable,
    check_gradient_field,
    check_lipschitz,
    check_monotone,
)
from mirroropt.testing.strategies import dual_points
from tests.maps._helpers import MapCall, tiny_problem
from tests.registry import SHAPES, perturbed

Params = dict[str, torch.Tensor]


def _trained(shapes: Any = SHAPES, scale: float = 1.0, seed: int = 1, hidden: int = 4) -> Any:
    return perturbed(ConvexPotential(shapes, hidden=hidden), scale, seed)


def _random(seed: int, bound: float = 4.0, shapes: Any = SHAPES) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: bound * (2 * torch.rand(s, generator=gen, dtype=torch.float64) - 1)
        for n, s in shapes.items()
    }


def _max_err(a: Params, b: Params) -> float:
    return max(float((a[n] - b[n]).detach().abs().max()) for n in a)


def _flat(p: Params) -> torch.Tensor:
    return torch.cat([p[n].reshape(-1) for n in SHAPES])


def _unflat(flat: torch.Tensor) -> Params:
    sizes = [s.numel() for s in SHAPES.values()]
    return {n: t.reshape(s) for (n, s), t in zip(SHAPES.items(), torch.split(flat, sizes))}


def _by_hand(g: ConvexPotential, z: Params, shapes: Any = SHAPES) -> Params:
    """∇h* with the ICNN's backward pass written out (no autograd): an independent evaluation."""
    out = {}
    for name, shape in shapes.items():
        k = name.replace(".", "-")
        mu = g.log_mu[k].exp()
        in0, bias0, in1, bias1 = g.in0[k], g.bias0[k], g.in1[k], g.bias1[k]
        mix, v = F.softplus(g.raw_mix[k]), F.softplus(g.raw_out[k])
        rows = z[name].reshape(shape[0] if len(shape) else 1, -1)
        x = torch.stack(
            [rows, rows.mean(1, keepdim=True).expand_as(rows), rows.mean().expand_as(rows)], -1
        )
        pre0 = x @ in0.T + bias0
        pre1 = F.softplus(pre0) @ mix.T + x @ in1.T + bias1
        d1 = torch.sigmoid(pre1) * v  # ∂F/∂pre1
        dx = (torch.sigmoid(pre0) * (d1 @ mix)) @ in0 + d1 @ in1  # ∂F/∂x, (rows, cols, 3)
        dz = (
            dx[..., 0]
            + dx[..., 1].sum(1, keepdim=True) / rows.shape[1]
            + dx[..., 2].sum() / rows.numel()
        )
        out[name] = mu * z[name] + dz.reshape(shape)
    return out


def test_registered_flags_and_parameter_count() -> None:
    assert MAPS["convex_potential"] is ConvexPotential
    assert not ConvexPotential.has_to_dual and ConvexPotential.is_gradient_field
    assert not ConvexPotential.is_linear
    g = ConvexPotential(SHAPES, hidden=5)
    assert sum(p.numel() for p in g.parameters()) == len(SHAPES) * (5 * 5 + 9 * 5 + 1)
    assert "hidden=5" in repr(g)
    with pytest.raises(NotImplementedError, match="no closed-form `to_dual`"):
        g.to_dual(_random(0))


def test_equals_autograd_of_its_potential_and_a_hand_written_gradient() -> None:
    g = _trained(scale=1.5)
    for seed in range(3):
        z = _random(seed)
        g_z = g.to_primal(z)
        assert _max_err(g_z, _by_hand(g, z)) < 1e-12
        zs = {n: t.clone().requires_grad_(True) for n, t in z.items()}
        auto = torch.autograd.grad(g.potential(zs), list(zs.values()))
        assert _max_err(g_z, dict(zip(zs, auto))) < 1e-12


def test_gemm_path_for_large_tensors_matches() -> None:
    """Tensors with ≥ GEMM_MIN_ROWS coordinates take F.linear; same gradient as by hand."""
    shapes = {"big.weight": torch.Size((64, 70)), "fc.bias": torch.Size((4,))}
    g = _trained(shapes, scale=1.0, seed=9)
    z = _random(12, shapes=shapes)
    assert shapes["big.weight"].numel() >= GEMM_MIN_ROWS > shapes["fc.bias"].numel()
    assert _max_err(g.to_primal(z), _by_hand(g, z, shapes)) < 1e-12


def test_potential_is_strongly_convex_along_segments() -> None:
    """h*(y) ≥ h*(x) + ⟨g(x), y − x⟩ + μ/2 ‖y − x‖² (first-order strong convexity)."""
    g = _trained(scale=1.5, seed=2)
    mu = g.monotonicity_modulus()
    with torch.no_grad():
        for seed in range(5):
            x, y = _random(2 * seed), _random(2 * seed + 1)
            gap = (
                g.potential(y)
                - g.potential(x)
                - (_flat(g.to_primal(x)) * _flat(y) - _flat(g.to_primal(x)) * _flat(x)).sum()
            )
            assert float(gap) >= 0.5 * mu * float(((_flat(y) - _flat(x)) ** 2).sum()) * (1 - 1e-9)


def test_dense_jacobian_is_symmetric_with_spectrum_in_the_stated_bounds() -> None:
    g = _trained(scale=1.0, seed=3)
    z = _random(4)
    jac = torch.func.jacrev(lambda f: _flat(g.to_primal(_unflat(f))))(_flat(z)).detach()
    assert float((jac - jac.T).abs().max()) < 1e-12
    eig = torch.linalg.eigvalsh(jac)
    assert float(eig.min()) >= g.monotonicity_modulus() * (1 - 1e-9)
    assert float(eig.max()) <= g.lipschitz_constant() * (1 + 1e-9)
    # coordinates of one tensor are coupled (row and tensor means): not a diagonal map
    offdiag = jac - torch.diag(torch.diagonal(jac))
    assert float(offdiag.abs().max()) > 1e-3


@given(st.lists(dual_points(SHAPES, bound=4.0), min_size=3, max_size=3))
def test_strongly_monotone_lipschitz_and_gradient_field_after_perturbation(
    points: list[Params],
) -> None:
    g = _trained(scale=1.0, seed=5)
    points = [{k: v + 0.5 * i for k, v in p.items()} for i, p in enumerate(points)]
    mu = g.monotonicity_modulus()
    assert check_monotone(g, points).measured >= mu * (1 - 1e-9)
    assert check_lipschitz(g, points).measured <= g.lipschitz_constant() * (1 + 1e-9)
    assert check_gradient_field(g, points[:1], probes=2).passed


def _quadratic_loss(target: Params) -> Callable[[Params], torch.Tensor]:
    def loss(p: Params) -> torch.Tensor:
        return sum(((p[n] - target[n]) ** 2 * (1 + p[n] ** 2)).sum() for n in p)  # type: ignore[return-value]

    return loss


def test_identity_at_initialization_equals_gradient_descent() -> None:
    g = ConvexPotential(SHAPES).double()
    z = _random(7)
    assert all(torch.equal(g.to_primal(z)[n], z[n]) for n in SHAPES)
    loss = _quadratic_loss(_random(8))
    phi = _random(9, bound=1.0)
    mirror = mirroropt.adapt(g, loss, z=phi, lr=0.05, steps=3)
    plain = dict(phi)
    for _ in range(3):  # hand-written gradient descent
        grads = torch.func.grad(loss)(plain)
        plain = {n: plain[n] - 0.05 * grads[n] for n in plain}
    assert _max_err(mirror, plain) < 1e-12


def test_gradcheck_through_two_adapt_steps_from_z() -> None:
    """float64 gradcheck of φ_K w.r.t. every map parameter, the dual initialization z_0 and lr."""
    z0, x, y = tiny_problem()
    g = perturbed(ConvexPotential(z0, hidden=2), scale=0.8, seed=5)

    def loss_fn(p: Params) -> torch.Tensor:
        return ((torch.tanh(x @ p["w"].T + p["b"]) - y) ** 2).mean()

    assert check_differentiable(g, loss_fn, z=z0, lr=0.4, steps=2).passed


def test_vmap_over_tasks_equals_loop_with_meta_gradients(layout: list[int]) -> None:
    """The map inside vmap over tasks and in an outer backward, either layout."""
    z0, _, _ = tiny_problem(1)
    g = perturbed(ConvexPotential(z0, hidden=3), scale=0.8, seed=7)
    theta = {n: torch.nn.Parameter(t.clone()) for n, t in z0.items()}
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(4, 10, 2, generator=gen, dtype=torch.float64)
    ys = torch.randn(4, 10, 3, generator=gen, dtype=torch.float64)

    def task(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def loss_fn(p: Params) -> torch.Tensor:
            return ((torch.tanh(x[:5] @ p["w"].T + p["b"]) - y[:5]) ** 2).mean()

        phi = mirroropt.adapt(g, loss_fn, z=theta, lr=0.3, steps=2)
        return ((torch.tanh(x[5:] @ phi["w"].T + phi["b"]) - y[5:]) ** 2).mean()

    wrt = [*g.parameters(), *theta.values()]
    results = []
    for strategy in ("vmap", "loop"):
        losses = mirroropt.map_tasks(task, xs, ys, model=None, strategy=strategy)
        results.append((losses.detach(), torch.autograd.grad(losses.mean(), wrt)))
    (l_v, g_v), (l_l, g_l) = results
    assert float((l_v - l_l).abs().max()) < 1e-12
    assert max(float((a - b).abs().max()) for a, b in zip(g_v, g_l)) < 1e-10
    assert max(float(a.abs().max()) for a in g_v) > 1e-4  # the meta-gradient is not trivially 0
    assert bool(layout) == (cp_module.FLAT_MAX_NUMEL > 0)


def test_solve_dual_and_dual_init() -> None:
    g = _trained(scale=1.0, seed=6)
    z_true = _random(10)
    with torch.no_grad():
        phi = g.to_primal(z_true)
    z = g.solve_dual(phi)
    with torch.no_grad():
        assert _max_err(g.to_primal(z), phi) < 1e-10  # default tol in float64
    assert _max_err(z, z_true) < 1e-8  # μ-strong convexity: |z - z*| ≤ |g(z) - φ| / μ
    z0 = g.dual_init(phi, tol=1e-12)
    assert all(isinstance(t, torch.nn.Parameter) and t.is_leaf for t in z0.values())
    start = mirroropt.adapt(
        g, lambda p: sum((t**2).sum() for t in p.values()), z=z0, lr=0.1, steps=0
    )
    assert _max_err(start, phi) < 1e-12
    # float32 reaches its own default tolerance
    g32 = _trained(scale=1.0, seed=6).float()
    with torch.no_grad():
        phi32 = g32.to_primal({n: t.float() for n, t in z_true.items()})
    z32 = g32.solve_dual(phi32)
    with torch.no_grad():
        assert _max_err(g32.to_primal(z32), phi32) <= 1e-4


def test_errors() -> None:
    with pytest.raises(ValueError, match="`hidden` must be at least 1, got 0"):
        ConvexPotential(SHAPES, hidden=0)
    with pytest.raises(TypeError, match="`hidden` must be an int, got float"):
        ConvexPotential(SHAPES, hidden=2.0)  # type: ignore[arg-type]
    g = _trained(scale=2.0, seed=8)
    phi = _random(11)
    with pytest.raises(ValueError, match="`steps` must be a positive int, got 0"):
        g.solve_dual(phi, steps=0)
    with pytest.raises(ValueError, match="`cg_steps` must be a positive int, got -1"):
        g.solve_dual(phi, cg_steps=-1)
    with pytest.raises(ValueError, match="`tol` must be a positive number, got 0"):
        g.solve_dual(phi, tol=0.0)
    with pytest.raises(ValueError, match=r"`phi` does not fit ConvexPotential"):
        g.solve_dual({"fc.bias": phi["fc.bias"]})
    with pytest.raises(RuntimeError, match=r"did not reach `tol`=1e-12 in `steps`=1 Newton steps"):
        g.solve_dual(phi, steps=1, cg_steps=1, tol=1e-12)
    with pytest.raises(TypeError, match="has no closed-form to_dual"):
        mirroropt.adapt(g, _quadratic_loss(phi), phi, lr=0.1, steps=1)


def test_functorch_meta_gradient_equals_autograd() -> None:
    """torch.func.grad over map weights and the dual initialization equals autograd."""
    start, x, y = tiny_problem(3)
    g = perturbed(ConvexPotential(start), scale=0.8, seed=3)

    def loss_fn(p: Params) -> torch.Tensor:
        return ((torch.tanh(x @ p["w"].T + p["b"]) - y) ** 2).mean()

    shell = MapCall(g, lambda m, z: mirroropt.adapt(m, loss_fn, z=z, lr=0.3, steps=2))

    def meta(weights: Params, z: Params) -> torch.Tensor:
        return loss_fn(torch.func.functional_call(shell, weights, (z,)))

    weights = {f"map.{n}": p.detach() for n, p in g.named_parameters()}
    by_func = torch.func.grad(meta, argnums=(0, 1))(weights, start)
    leaves = {n: t.clone().requires_grad_(True) for n, t in start.items()}
    by_autograd = torch.autograd.grad(
        meta(dict(shell.named_parameters()), leaves), [*g.parameters(), *leaves.values()]
    )
    flat_func = [*by_func[0].values(), *by_func[1].values()]
    assert max(float((a - b).abs().max()) for a, b in zip(flat_func, by_autograd)) < 1e-12
    assert min(float(a.abs().max()) for a in by_autograd) > 0


def test_sigmoid_weights_match_softplus_at_init_and_stay_bounded() -> None:
    shapes = {"w": torch.zeros(3, 4), "b": torch.zeros(3)}
    soft = ConvexPotential(shapes).double()
    sig = ConvexPotential(shapes, weights="sigmoid").double()
    for name in shapes:
        for a, b in zip(soft._weights(name), sig._weights(name)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)  # float32-stored raw weights
    with torch.no_grad():  # push every raw weight far out: the paper's form stays bounded
        for p in sig.parameters():
            p.fill_(50.0)
    with torch.no_grad():
        _, in0, _, mix, in1, _, out = sig._weights("w")
    h = sig.hidden
    assert float(in0.abs().max()) <= 1.0 and float(in1.abs().max()) <= 1.0
    assert float(mix.max()) <= 1.0 / h and float(out.max()) <= 2.0 / h
    with pytest.raises(ValueError, match=r"`weights` must be 'softplus' or 'sigmoid', got 'relu'"):
        ConvexPotential(shapes, weights="relu")  # type: ignore[arg-type]


def _autograd_to_primal(g: ConvexPotential, z: Params) -> Params:
    """The reference: ∇h* by torch.func.grad of the potential (what to_primal used to run)."""
    return torch.func.grad(g.potential)(z)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_closed_form_gradient_equals_autograd_gradient_of_the_potential(scale: float) -> None:
    g = _trained(scale=scale) if scale else ConvexPotential(SHAPES, hidden=4).double()
    for seed, bound in ((0, 4.0), (1, 60.0)):  # 60 pushes pre-activations past the threshold
        z = _random(seed, bound)
        closed, reference = g.to_primal(z), _autograd_to_primal(g, z)
        for n in SHAPES:
            torch.testing.assert_close(closed[n], reference[n], rtol=1e-12, atol=1e-12)


def test_meta_gradients_through_the_closed_form_match_autograd() -> None:
    """First and second derivatives w.r.t. z and every ICNN weight, through two inner steps."""
    g = _trained(scale=1.0)
    z0 = {n: t.requires_grad_() for n, t in _random(2, 2.0).items()}
    target = _random(3, 1.0)
    leaves = [*z0.values(), *g.parameters()]

    def meta_loss(to_primal: Callable[[Params], Params]) -> torch.Tensor:
        z = dict(z0)
        for _ in range(2):
            phi = to_primal(z)
            z = {n: z[n] - 0.1 * 2 * (phi[n] - target[n]) for n in z}
        phi = to_primal(z)
        return sum(((phi[n] - target[n]) ** 2).sum() for n in phi)  # type: ignore[return-value]

    closed = torch.autograd.grad(meta_loss(g.to_primal), leaves)
    reference = torch.autograd.grad(meta_loss(lambda z: _autograd_to_primal(g, z)), leaves)
    for a, b in zip(closed, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert max(float(b.abs().max()) for b in reference[len(z0) :]) > 1e-3  # weights do move


#: Tensors of equal shape share one batched evaluation (T > 1 in `_icnn_gradient`).
GROUPED = {
    "a.weight": torch.Size((2, 3)),
    "a.bias": torch.Size((2,)),
    "b.weight": torch.Size((2, 3)),
    "b.bias": torch.Size((2,)),
    "s": torch.Size(()),
}


@pytest.fixture(params=["grouped", "flat"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Small tensors of several shapes: one evaluation per shape ("grouped", FLAT_MAX_NUMEL = 0),
    or one over all their coordinates ("flat", the default). Yields the flat evaluations' sizes."""
    if request.param == "grouped":
        monkeypatch.setattr(cp_module, "FLAT_MAX_NUMEL", 0)
    calls: list[int] = []
    flat = cp_module._icnn_gradient_flat

    def counted(z: torch.Tensor, layout: Any) -> torch.Tensor:
        calls.append(z.shape[-1])
        return flat(z, layout)

    monkeypatch.setattr(cp_module, "_icnn_gradient_flat", counted)
    return calls


@pytest.mark.parametrize("weights", ["softplus", "sigmoid"])
def test_grouped_closed_form_equals_autograd_and_passes_gradcheck(
    weights: str, layout: list[int]
) -> None:
    """The folded closed form (diag(v)W, diag(v)B1 precomputed) for groups of equal shapes and
    for the flat layout of small tensors: equal to autograd of the potential, and
    gradcheck/gradgradcheck w.r.t. z and every weight."""
    g = perturbed(ConvexPotential(GROUPED, hidden=2, weights=weights), scale=1.0, seed=7)  # type: ignore[arg-type]
    for seed, bound in ((0, 3.0), (1, 60.0)):
        z = _random(seed, bound, GROUPED)
        closed, reference = g.to_primal(z), _autograd_to_primal(g, z)
        for n in GROUPED:
            torch.testing.assert_close(closed[n], reference[n], rtol=1e-12, atol=1e-12)
        assert _max_err(closed, z) > 1e-2  # not the identity
    names = list(GROUPED)
    weights_ = list(g.parameters())
    z = [t.requires_grad_() for t in _random(2, 2.0, GROUPED).values()]

    def primal(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zs, ws = inputs[: len(names)], inputs[len(names) :]
        params = dict(zip((n for n, _ in g.named_parameters()), ws))
        out = torch.func.functional_call(g, params, (dict(zip(names, zs)),))
        return tuple(out[n] for n in names)

    inputs = (*z, *[w.detach().clone().requires_grad_() for w in weights_])
    assert torch.autograd.gradcheck(primal, inputs)
    assert torch.autograd.gradgradcheck(primal, inputs)
    # the flat layout took every tensor (all have ≤ FLAT_MAX_NUMEL coordinates): 6 + 2 + 6 + 2 + 1
    assert (not layout) == (cp_module.FLAT_MAX_NUMEL == 0) and set(layout) <= {17}


def test_flat_layout_takes_only_small_tensors_of_several_shapes(layout: list[int]) -> None:
    """A big kernel keeps its own evaluation, a 0-size tensor and the small ones are right too."""
    shapes = {
        "big.weight": torch.Size((8, FLAT_MAX_NUMEL // 8 + 1)),
        "big.bias": torch.Size((8,)),
        "empty": torch.Size((0, 3)),
        "fc.weight": torch.Size((3, 5)),
        "fc.bias": torch.Size((3,)),
        "scale": torch.Size(()),
    }
    g = _trained(shapes, scale=1.0, seed=4, hidden=3)
    z = _random(5, 3.0, shapes)
    closed, reference = g.to_primal(z), _autograd_to_primal(g, z)
    for n in shapes:
        torch.testing.assert_close(closed[n], reference[n], rtol=1e-12, atol=1e-12)
    nonempty = {n: s for n, s in shapes.items() if s.numel()}
    assert _max_err({n: closed[n] for n in nonempty}, _by_hand(g, z, nonempty)) < 1e-12
    assert closed["empty"].shape == (0, 3)
    grouped = cp_module.FLAT_MAX_NUMEL == 0
    assert layout == ([] if grouped else [8 + 15 + 3 + 1])
