"""BlockIAF: structure, inverse, identity initialization, differentiability and monotonicity.

The monotonicity finding (see the class docstring): the unconstrained flow (the paper's) is not
monotone once its cross-block weights are large, and never on all of R^d (its Jacobian has the
block ``diag(z_B) ∂s_B/∂z_j``, unbounded in ``|z_B|``); ``monotone=True`` is strongly monotone with
its stated modulus after any perturbation of its weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call

from mirroropt import MirrorDescent, adapt, adapt_trajectory, map_tasks
from mirroropt.maps import MAPS, BlockIAF, Identity
from mirroropt.maps._block_iaf import (
    _batched_mode_product,
    _merged_modes,
    _merged_size,
    _mode_product,
    _squared_spectral_norms,
)
from mirroropt.testing import (
    PropertyError,
    check_gradient_field,
    check_lipschitz,
    check_monotone,
    check_reduces_to_gd,
    check_round_trip,
)
from mirroropt.testing.strategies import dual_points
from tests.registry import perturbed as _perturbed_map

SMALL = {"w": torch.Size((2, 3)), "b": torch.Size((2,)), "s": torch.Size(())}
LAYERS = {
    "conv.weight": torch.Size((3, 2, 3, 3)),
    "conv.bias": torch.Size((3,)),
    "fc.weight": torch.Size((4, 5)),
    "fc.bias": torch.Size((4,)),
}


def perturbed(g: BlockIAF, scale: float, seed: int = 1) -> BlockIAF:
    """The registry's seeded perturbation (float64), typed for BlockIAF."""
    out = _perturbed_map(g, scale=scale, seed=seed)
    assert isinstance(out, BlockIAF)
    return out


def _rand(shapes: dict[str, torch.Size], seed: int, bound: float = 4.0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: bound * (2 * torch.rand(s, generator=gen, dtype=torch.float64) - 1)
        for n, s in shapes.items()
    }


def _flat(shapes: dict[str, torch.Size], p: dict[str, Tensor]) -> Tensor:
    return torch.cat([p[n].reshape(-1) for n in shapes])


def _unflat(shapes: dict[str, torch.Size], x: Tensor) -> dict[str, Tensor]:
    out, i = {}, 0
    for n, s in shapes.items():
        out[n] = x[i : i + s.numel()].reshape(s)
        i += s.numel()
    return out


def _jacobian(g: BlockIAF, z: dict[str, Tensor]) -> Tensor:
    shapes = dict(g.shapes)
    flat = _flat(shapes, z)
    return torch.func.jacrev(lambda x: _flat(shapes, g.to_primal(_unflat(shapes, x))))(
        flat
    ).detach()


def _inner(g: BlockIAF, a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    shapes = dict(g.shapes)
    with torch.no_grad():
        dz = _flat(shapes, a) - _flat(shapes, b)
        dg = _flat(shapes, g.to_primal(a)) - _flat(shapes, g.to_primal(b))
        return float(dz.dot(dg))


# ------------------------------------------------------------------------------------------------
# construction


def test_registered_under_its_name() -> None:
    assert MAPS["block_iaf"] is BlockIAF
    g = BlockIAF(SMALL)
    assert (g.has_to_dual, g.is_gradient_field, g.is_linear) == (True, False, False)
    assert "monotone=False" in repr(g) and "coupling=0.3" in repr(
        BlockIAF(SMALL, monotone=True, coupling=0.3)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"monotone": 1}, TypeError, r"`monotone` must be a bool, got int"),
        ({"rank": 2.0}, TypeError, r"`rank` must be an int, got float"),
        ({"width": True}, TypeError, r"`width` must be an int, got bool"),
        ({"rank": 0}, ValueError, r"`rank` must be a positive int, got 0"),
        ({"width": -1}, ValueError, r"`width` must be a positive int, got -1"),
        ({"hidden": 0}, ValueError, r"`hidden` must be a positive int, got 0"),
        ({"scale_range": (1.0, 2.0)}, ValueError, r"0 < s_min < 1 < s_max .*\(1\.0, 2\.0\)"),
        ({"scale_range": (0.5, 1.0)}, ValueError, r"0 < s_min < 1 < s_max"),
        ({"scale_range": (0.0, 2.0)}, ValueError, r"0 < s_min < 1 < s_max"),
        ({"scale_range": (0.5, math.inf)}, ValueError, r"0 < s_min < 1 < s_max \(finite\)"),
        ({"scale_range": 3.0}, ValueError, r"`scale_range` must be a pair \(s_min, s_max\)"),
        ({"scale_range": (1, 2, 3)}, ValueError, r"`scale_range` must be a pair"),
        ({"coupling": 1.0}, ValueError, r"`coupling` must be in \(0, 1\), got 1\.0"),
        ({"coupling": 0}, ValueError, r"`coupling` must be in \(0, 1\), got 0"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        BlockIAF(SMALL, **kwargs)


def _expected_numel(shapes: dict[str, torch.Size], rank: int, width: int, hidden: int) -> int:
    """Parameter count from the class docstring's structure, written independently of the code."""
    total, last = 0, len(shapes) - 1
    for i, shape in enumerate(shapes.values()):
        ranks = [min(rank, n) for n in shape]
        core = math.prod(ranks)
        factors = sum(n * r for n, r in zip(shape, ranks))
        total += factors + 2 * core  # lift factors V_k and the (a, μ) head bias
        if i > 0:
            total += width * hidden + hidden + 2 * core * hidden  # dec_in and the head weight
        if i < last:
            total += factors + core * width  # down factors U_k and the encoder's dense layer
    return total


def _conv4(in_channels: int, features: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [
            nn.Conv2d(in_channels if i == 0 else 64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, 5))


@pytest.mark.parametrize(
    ("in_channels", "features"), [(3, 1600), (1, 64)], ids=["conv4-84x84", "conv4-28x28"]
)
def test_parameter_count_is_lean(in_channels: int, features: int) -> None:
    """Kronecker-factored encoders/decoders: a fraction of the backbone (the authors' ~28x it)."""
    model = _conv4(in_channels, features)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    backbone = sum(p.numel() for p in model.parameters())
    g = BlockIAF(model)
    flow = sum(p.numel() for p in g.parameters())
    assert flow == _expected_numel(shapes, rank=2, width=16, hidden=16)
    assert flow < 0.35 * backbone
    # monotone mode drops the scale rows of the head: fewer parameters still
    assert sum(p.numel() for p in BlockIAF(model, monotone=True).parameters()) < flow


def test_mode_product_is_the_kronecker_product() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
    mats = [
        torch.randn(r, n, generator=gen, dtype=torch.float64) for r, n in [(2, 4), (3, 3), (1, 2)]
    ]
    dense = torch.kron(torch.kron(mats[0], mats[1]), mats[2]) @ x.reshape(-1)
    torch.testing.assert_close(_mode_product(x, mats).reshape(-1), dense, rtol=1e-12, atol=1e-12)


def test_batched_mode_product_is_the_mode_product_of_each_group_member() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 4, 3, 5, generator=gen, dtype=torch.float64)  # [G, c, 4, 3, 5]
    mats = [torch.randn(3, r, n, generator=gen, dtype=torch.float64) for r, n in ((2, 4), (1, 3))]
    out = _batched_mode_product(x, mats, first=2)  # modes 2 and 3 of x; the last is untouched
    assert out.shape == (3, 2, 2, 1, 5)
    for g in range(3):
        want = _mode_product(x[g], [m[g] for m in mats], first=1)
        torch.testing.assert_close(out[g], want, rtol=1e-12, atol=1e-12)


def test_merged_modes_are_the_kronecker_product_of_the_trailing_factors() -> None:
    gen = torch.Generator().manual_seed(4)
    shapes = [(2, 4), (3, 3), (1, 2), (2, 5)]
    mats = [torch.randn(3, r, n, generator=gen, dtype=torch.float64) for r, n in shapes]
    first, rest = _merged_modes(mats)
    assert first is mats[0] and rest.shape == (3, 3 * 1 * 2, 3 * 2 * 5)
    for g in range(3):
        want = torch.kron(torch.kron(mats[1][g], mats[2][g]), mats[3][g])
        torch.testing.assert_close(rest[g], want, rtol=0, atol=0)
    # the merged product is the four-mode product, on a [G, c, 4, 3, 2, 5] batch of cores
    x = torch.randn(3, 2, 4, 3, 2, 5, generator=gen, dtype=torch.float64)
    merged = _batched_mode_product(x.reshape(3, 2, *_merged_size((4, 3, 2, 5))), [first, rest], 2)
    torch.testing.assert_close(
        merged.reshape(3, 2, 2, 3, 1, 2), _batched_mode_product(x, mats, 2), rtol=1e-12, atol=1e-12
    )
    assert all(a is b for a, b in zip(_merged_modes(mats[:2]), mats[:2]))  # two modes: as given
    assert len(_merged_modes(mats[:2])) == 2 and _merged_size((4, 3)) == (4, 3)


def test_squared_spectral_norms_match_svd() -> None:
    gen = torch.Generator().manual_seed(0)
    mats = [
        torch.randn(shape, generator=gen, dtype=torch.float64)
        for shape in [(2, 7), (7, 2), (5, 5), (1, 3), (6, 4)]
    ] + [torch.zeros(3, 2, dtype=torch.float64)]
    expected = torch.stack([torch.linalg.matrix_norm(m, ord=2) ** 2 for m in mats])
    torch.testing.assert_close(_squared_spectral_norms(mats), expected, rtol=1e-12, atol=1e-12)


def test_single_block_has_no_cross_block_term() -> None:
    g = perturbed(BlockIAF({"w": (3, 2)}, monotone=True), scale=1.0)
    assert g.cross_lipschitz() == 0.0
    scales = torch.diagonal(_jacobian(g, _rand(dict(g.shapes), 0)))
    assert g.monotonicity_modulus() == pytest.approx(float(scales.min()), rel=1e-12)
    assert g.lipschitz_constant() == pytest.approx(float(scales.max()), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# the map: identity at init, structure, inverse


@pytest.mark.parametrize("monotone", [False, True])
def test_identity_at_initialization(monotone: bool) -> None:
    g = BlockIAF(LAYERS, monotone=monotone).double()
    z = _rand(LAYERS, 0)
    for n, phi in g.to_primal(z).items():
        torch.testing.assert_close(phi, z[n], rtol=1e-14, atol=1e-14)
    for n, back in g.to_dual(z).items():
        torch.testing.assert_close(back, z[n], rtol=1e-14, atol=1e-14)
    if monotone:
        assert g.monotonicity_modulus() == pytest.approx(1.0, abs=1e-12)
        assert g.lipschitz_constant() == pytest.approx(1.0, abs=1e-12)
    else:
        assert g.monotonicity_modulus() is None and g.lipschitz_constant() is None
        assert g.cross_lipschitz() is None


def _mlp_loss(x: Tensor, y: Tensor) -> Callable[[dict[str, Tensor]], Tensor]:
    def loss(p: dict[str, Tensor]) -> Tensor:
        h = torch.tanh(F.linear(x, p["0.weight"], p["0.bias"]))
        return F.mse_loss(F.linear(h, p["2.weight"], p["2.bias"]), y)

    return loss


@pytest.mark.parametrize("monotone", [False, True])
def test_identity_at_initialization_is_gradient_descent(monotone: bool) -> None:
    """adapt with the fresh flow equals a hand-written torch.func GD loop (MAML) to 1e-6 (float32)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    loss = _mlp_loss(x, y)
    phi = {n: p.detach() for n, p in model.named_parameters()}
    out = adapt(BlockIAF(model, monotone=monotone), loss, phi, lr=0.3, steps=5)
    ref = dict(phi)
    for _ in range(5):
        grads = torch.func.grad(loss)(ref)
        ref = {n: ref[n] - 0.3 * grads[n] for n in ref}
    for n in ref:
        torch.testing.assert_close(out[n], ref[n], rtol=0, atol=1e-6)
    assert check_reduces_to_gd(BlockIAF(model, monotone=monotone), loss, phi, steps=5).passed


@pytest.mark.parametrize("monotone", [False, True])
def test_jacobian_is_block_lower_triangular_with_diagonal_blocks(monotone: bool) -> None:
    """φ_B depends on z_B only through s_B ⊙ z_B, and on later blocks not at all."""
    g = perturbed(BlockIAF(LAYERS, monotone=monotone), scale=0.5)
    z = _rand(LAYERS, 1)
    jac = _jacobian(g, z)
    offsets = [0]
    for s in LAYERS.values():
        offsets.append(offsets[-1] + s.numel())
    for b in range(len(LAYERS)):
        rows = slice(offsets[b], offsets[b + 1])
        diag = jac[rows, rows]
        scales = torch.diagonal(diag)
        torch.testing.assert_close(diag, torch.diag(scales), rtol=0, atol=0)
        assert bool(((scales >= g.s_min) & (scales <= g.s_max)).all())
        for j in range(len(LAYERS)):
            cross = jac[rows, offsets[j] : offsets[j + 1]]
            if j > b:
                assert bool((cross == 0).all()), (b, j)
            elif j < b:
                assert float(cross.abs().max()) > 1e-8, (b, j)  # earlier blocks do matter
    if monotone:  # constant scales: the diagonal blocks do not move with z
        torch.testing.assert_close(
            torch.diagonal(_jacobian(g, _rand(LAYERS, 2))), torch.diagonal(jac), rtol=0, atol=0
        )


@pytest.mark.parametrize("monotone", [False, True])
def test_scales_stay_in_range_after_huge_perturbation(monotone: bool) -> None:
    g = perturbed(BlockIAF(LAYERS, monotone=monotone, scale_range=(0.2, 3.0)), scale=20.0)
    diag = torch.diagonal(_jacobian(g, _rand(LAYERS, 3)))
    assert float(diag.min()) >= 0.2 and float(diag.max()) <= 3.0


@pytest.mark.parametrize("monotone", [False, True])
def test_to_dual_inverts_to_primal(monotone: bool) -> None:
    shapes = {**LAYERS, "scalar": torch.Size(())}  # a 0-d block as well
    g = perturbed(BlockIAF(shapes, monotone=monotone), scale=0.5)
    points = [_rand(shapes, seed) for seed in range(4)]
    assert check_round_trip(g, points, atol=1e-10).passed
    for phi in points:  # and the other way round
        back = g.to_primal(g.to_dual(phi))
        for n in shapes:
            torch.testing.assert_close(back[n], phi[n], rtol=1e-10, atol=1e-10)


def test_is_not_a_gradient_field() -> None:
    g = perturbed(BlockIAF(LAYERS), scale=0.5)
    assert not g.is_gradient_field
    with pytest.raises(PropertyError, match="gradient field"):
        check_gradient_field(g, [_rand(LAYERS, 0)])
    jac = _jacobian(g, _rand(LAYERS, 0))
    assert float((jac - jac.T).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------------
# differentiability


def _linear_loss(x: Tensor, y: Tensor) -> Callable[[dict[str, Tensor]], Tensor]:
    def loss(p: dict[str, Tensor]) -> Tensor:
        return ((x @ p["w"].T + p["b"] - y) ** 2).mean() + p["s"] ** 2 * (p["w"] ** 2).mean()

    return loss


class _Unrolled(nn.Module):
    """φ_K of K unrolled steps as a module, so functional_call can swap the flow's parameters."""

    def __init__(
        self, flow: BlockIAF, loss: Callable[[dict[str, Tensor]], Tensor], steps: int
    ) -> None:
        super().__init__()
        self.flow, self.loss, self.steps = flow, loss, steps

    def forward(self, phi: dict[str, Tensor], lr: Tensor) -> tuple[Tensor, ...]:
        out = adapt(self.flow, self.loss, phi, lr=lr, steps=self.steps)
        return tuple(out[n] for n in self.flow.names)


@pytest.mark.parametrize("monotone", [False, True])
def test_gradcheck_through_unrolled_steps(monotone: bool) -> None:
    """Second-order meta-gradients w.r.t. the flow's parameters, φ_0 and lr through K = 2 steps."""
    g = perturbed(BlockIAF(SMALL, monotone=monotone, rank=2, width=2, hidden=2), scale=1.0)
    if monotone:  # the clamp in κ is active, so the gradient goes through the spectral norms
        assert float(g._kappa().detach()) < 0.5
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    unrolled = _Unrolled(g, _linear_loss(x, y), steps=2)
    names = [n for n, _ in g.named_parameters()]
    values = [p.detach().clone().requires_grad_() for p in g.parameters()]
    phi0 = _rand(SMALL, 5, bound=1.0)
    phi_values = [phi0[n].clone().requires_grad_() for n in SMALL]
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def fn(*inputs: Tensor) -> tuple[Tensor, ...]:
        params = {f"flow.{n}": v for n, v in zip(names, inputs[: len(names)])}
        phi = dict(zip(SMALL, inputs[len(names) : -1]))
        return functional_call(unrolled, params, (phi, inputs[-1]))

    assert torch.autograd.gradcheck(fn, (*values, *phi_values, lr))


# ------------------------------------------------------------------------------------------------
# monotonicity: the finding


def test_unconstrained_flow_is_not_monotone_after_large_perturbation() -> None:
    """Seeded search: a pair with <Δz, Δg> < 0 exists; monotone=True at the same scale has none."""
    found = None
    for seed in range(10):
        g = perturbed(BlockIAF(LAYERS), scale=1.0, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(20):
            z = _rand(LAYERS, int(torch.randint(0, 2**30, (1,), generator=gen)))
            z2 = {
                n: t + 0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
                for n, t in z.items()
            }
            if _inner(g, z, z2) < 0:
                found = (seed, g, z, z2)
                break
        if found:
            break
    assert found is not None, "no pair with <dz, dg> < 0 in the seeded search"
    seed, g, z, z2 = found
    with pytest.raises(PropertyError, match=r"strictly monotone.*measured -"):
        check_monotone(g, [z, z2])
    safe = perturbed(BlockIAF(LAYERS, monotone=True), scale=1.0, seed=seed)
    report = check_monotone(safe, [z, z2])  # against its own stated modulus
    modulus = safe.monotonicity_modulus()
    assert modulus is not None and report.passed and report.measured >= modulus > 0


def test_unconstrained_flow_is_never_globally_monotone() -> None:
    """Even at the registry's small perturbation (monotone on its box), a large |z_B| breaks it.

    The cross block diag(z_B) ∂s_B/∂z_j grows linearly in |z_B| while the diagonal stays in
    [s_min, s_max], so the symmetrized Jacobian turns indefinite; its lowest eigenvector gives
    a violating pair.
    """
    g = perturbed(BlockIAF(LAYERS), scale=0.05)
    z = _rand(LAYERS, 7)
    eigenvalue = math.inf
    for magnitude in (1e1, 1e2, 1e3, 1e4, 1e5):
        z_far = {**z, "fc.bias": magnitude * z["fc.bias"]}  # the last block only
        jac = _jacobian(g, z_far)
        values, vectors = torch.linalg.eigh((jac + jac.T) / 2)
        eigenvalue = float(values[0])
        if eigenvalue < 0:
            break
    assert eigenvalue < 0
    assert magnitude > 4.0  # and it does not happen inside the registry's box
    step = _unflat(dict(LAYERS), 1e-3 * vectors[:, 0])
    z2 = {n: z_far[n] + step[n] for n in LAYERS}
    assert _inner(g, z_far, z2) < 0
    with pytest.raises(PropertyError, match="strictly monotone"):
        check_monotone(g, [z_far, z2])
    # the monotone variant, perturbed alike, keeps its modulus at the very same points
    safe = perturbed(BlockIAF(LAYERS, monotone=True), scale=0.05)
    assert check_monotone(safe, [z_far, z2]).passed


def test_monotone_flow_bound_is_active_and_holds() -> None:
    """Example beside the property test: κ < 1 after a perturbation, and the stated μ and L hold."""
    g = perturbed(BlockIAF(LAYERS, monotone=True, coupling=0.8), scale=1.0, seed=3)
    kappa = float(g._kappa().detach())
    assert kappa < 1.0
    cross = g.cross_lipschitz()
    assert cross == pytest.approx(0.8 * g.s_min, rel=1e-12)  # the clamp binds exactly at c·s_min
    mu, lip = g.monotonicity_modulus(), g.lipschitz_constant()
    assert mu is not None and lip is not None
    assert mu >= (1 - 0.8) * g.s_min - 1e-12 and lip > mu
    jac = _jacobian(g, _rand(LAYERS, 9, bound=8.0))
    assert float(torch.linalg.eigvalsh((jac + jac.T) / 2)[0]) >= mu - 1e-12
    assert float(torch.linalg.matrix_norm(jac, ord=2)) <= lip + 1e-12
    points = [_rand(LAYERS, seed, bound=8.0) for seed in range(6)]
    assert check_monotone(g, points).passed and check_lipschitz(g, points).passed


def test_monotone_flow_is_strongly_monotone_after_any_perturbation() -> None:
    """Property test: random weights at large random scales, random points; μ and L as stated."""

    @given(
        seed=st.integers(0, 2**16),
        scale=st.floats(0.5, 20.0),
        coupling=st.floats(0.05, 0.95),
        points=st.lists(dual_points(LAYERS, bound=8.0), min_size=3, max_size=3),
    )
    def run(seed: int, scale: float, coupling: float, points: list[dict[str, Tensor]]) -> None:
        points = [{k: v + 0.5 * i for k, v in p.items()} for i, p in enumerate(points)]
        g = perturbed(BlockIAF(LAYERS, monotone=True, coupling=coupling), scale=scale, seed=seed)
        mu = g.monotonicity_modulus()
        assert mu is not None and mu >= (1 - coupling) * g.s_min - 1e-12
        assert check_monotone(g, points).passed
        assert check_lipschitz(g, points).passed

    run()


# ------------------------------------------------------------------------------------------------
# the batched prepared map against the block-by-block definition


def _block_by_block(g: BlockIAF, z: dict[str, Tensor]) -> dict[str, Tensor]:
    """The flow as the class docstring defines it: one block at a time, in order."""
    kappa = g._kappa() if g.monotone else None
    out: dict[str, Tensor] = {}
    context: Tensor | None = None
    for (name, shape), block in zip(g.shapes.items(), g._blocks()):
        scale, mu = g._affine(block, shape, context, kappa)
        out[name] = z[name] * scale + mu
        if block.enc_out is not None:
            e = g._encode(block, z[name])
            context = e if context is None else context + e
    return out


#: Several blocks per shape (so the shape groups batch more than one block), a 0-d tensor last.
GROUPED = {
    "c1.weight": torch.Size((3, 2, 3, 3)),
    "c1.bias": torch.Size((3,)),
    "c2.weight": torch.Size((3, 2, 3, 3)),
    "c2.bias": torch.Size((3,)),
    "n.weight": torch.Size((3,)),
    "fc.weight": torch.Size((4, 5)),
    "t": torch.Size(()),
}


@pytest.mark.parametrize("monotone", [False, True])
def test_prepared_equals_the_block_by_block_flow_with_meta_gradients(monotone: bool) -> None:
    g = perturbed(BlockIAF(GROUPED, monotone=monotone, rank=2), scale=0.5)
    z = {n: t.requires_grad_() for n, t in _rand(GROUPED, seed=4, bound=2.0).items()}
    batched, reference = g.prepared()(z), _block_by_block(g, z)
    for n in GROUPED:
        torch.testing.assert_close(batched[n], reference[n], rtol=1e-12, atol=1e-12)
    assert max(float((batched[n] - z[n]).detach().abs().max()) for n in GROUPED) > 0.1  # not id
    weights = _rand(GROUPED, seed=5)
    leaves = [*g.parameters(), *z.values()]

    def meta_loss(out: dict[str, Tensor]) -> Tensor:
        return sum((torch.tanh(out[n]) * weights[n]).sum() for n in GROUPED)  # type: ignore[return-value]

    got = torch.autograd.grad(meta_loss(batched), leaves, allow_unused=True)
    want = torch.autograd.grad(meta_loss(reference), leaves, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_prepared_outputs_are_contiguous_under_vmap() -> None:
    g = perturbed(BlockIAF(GROUPED), scale=0.5)
    z = _rand(GROUPED, seed=6)
    strides: dict[str, tuple[int, ...]] = {}

    def task(c: Tensor) -> Tensor:
        out = g.prepared()({n: c * t for n, t in z.items()})
        for n, t in out.items():
            strides[n] = torch._C._functorch.get_unwrapped(t).stride()
        return sum(t.sum() for t in out.values())  # type: ignore[return-value]

    torch.func.vmap(task)(torch.ones(3, dtype=torch.float64))
    for n, shape in GROUPED.items():  # the task dimension leads, each task's slice is dense
        assert strides[n] == torch.empty(3, *shape).stride(), n


# ------------------------------------------------------------------------------------------------
# batching over tasks and the optimizer shell


@pytest.mark.parametrize("monotone", [False, True])
def test_vmap_over_tasks_equals_loop(monotone: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = perturbed(BlockIAF(model, monotone=monotone), scale=0.3)
    phi0 = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(3, 12, 3, generator=gen, dtype=torch.float64)
    ys = torch.randn(3, 12, 2, generator=gen, dtype=torch.float64)

    def task(x: Tensor, y: Tensor) -> Tensor:
        phi = adapt(g, _mlp_loss(x[:6], y[:6]), phi0, lr=0.2, steps=2)
        return _mlp_loss(x[6:], y[6:])(phi)

    inputs = [*g.parameters(), *phi0.values()]
    results = []
    for strategy in ("vmap", "loop"):
        losses = map_tasks(task, xs, ys, model=model, strategy=strategy)
        results.append((losses, torch.autograd.grad(losses.sum(), inputs)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-9, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert float(sum(t.abs().sum() for t in results[0][1][: len(list(g.parameters()))])) > 0


def test_mirror_descent_optimizer_matches_functional_core() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = perturbed(BlockIAF(model), scale=0.3)
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(8, 2, dtype=torch.float64)
    loss = _mlp_loss(x, y)
    phi0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        traj = adapt_trajectory(g, loss, phi0, lr=0.1, steps=3)
    opt = MirrorDescent(model.named_parameters(), g, lr=0.1)
    for k in range(3):
        opt.zero_grad()
        loss(dict(model.named_parameters())).backward()
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), traj.phi[k + 1][n], rtol=1e-12, atol=1e-12)
    # it is not gradient descent: the flow changed the path
    plain = adapt(Identity(model), loss, phi0, lr=0.1, steps=3)
    assert max(float((plain[n] - traj.phi[-1][n]).abs().max()) for n in plain) > 1e-4


def test_mirror_descent_at_initialization_is_sgd() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    twin = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    opt = MirrorDescent(model.named_parameters(), BlockIAF(model, monotone=True), lr=0.1)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1)
    for _ in range(4):
        for o, m in ((opt, model), (sgd, twin)):
            o.zero_grad()
            F.mse_loss(m(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
