"""Hand-written torch.func MAML: mirror_step drops into the user's loop, under vmap and grad."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import mirroropt
from mirroropt.integrations import make_loss_fn, mirror_step
from mirroropt.maps import Diagonal, Identity, MirrorMap
from tests.integrations._common import (
    LR,
    MAP_BUILDERS,
    NONTRIVIAL,
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
from tests.integrations._maps import CoupledShift


def vmapped_meta_grads(
    model: nn.Module,
    tasks: tuple[Tensor, ...],
    wrt: list[Tensor],
    update: str,
    mirror_map: MirrorMap | None = None,
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """PyTorch's MAML example loop, with ``update`` = "gd" ({k: p - g * lr}) or "mirror"."""

    def compute_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(functional_call(model, params, (x,)), y)

    def task(params, x_spt, y_spt, x_qry, y_qry):  # type: ignore[no-untyped-def]
        z = mirroropt.init(mirror_map, params) if update == "mirror" else None
        new_params = params
        for _ in range(STEPS):
            grads = grad(compute_loss)(new_params, x_spt, y_spt)
            if update == "mirror":
                z, new_params = mirror_step(mirror_map, z, grads, LR)
            else:
                new_params = {k: new_params[k] - g * LR for k, g in grads.items()}
        return compute_loss(new_params, x_qry, y_qry), new_params

    params = dict(model.named_parameters())
    losses, adapted = vmap(task, in_dims=(None, 0, 0, 0, 0))(params, *tasks)
    return adapted, list(torch.autograd.grad(losses.sum(), wrt))


def test_identity_equals_the_hand_written_loop_to_the_bit() -> None:
    tasks = make_tasks()
    model = make_model()
    wrt = list(model.parameters())
    expected_phi, expected = vmapped_meta_grads(model, tasks, wrt, "gd")
    phi, grads = vmapped_meta_grads(model, tasks, wrt, "mirror", Identity(model))
    assert_equal(list(phi.values()), list(expected_phi.values()))
    assert_equal(grads, expected)


@pytest.mark.parametrize("name", NONTRIVIAL)
def test_meta_gradients_under_vmap_equal_the_functional_core(name: str) -> None:
    tasks = make_tasks()
    model = make_model()
    mirror_map = MAP_BUILDERS[name](model)
    wrt = meta_params(model, mirror_map)
    _, grads = vmapped_meta_grads(model, tasks, wrt, "mirror", mirror_map)
    _, expected = core_meta_grads(model, mirror_map, tasks)
    assert_close(grads, expected)
    assert all(float(g.abs().max()) > 1e-6 for g in grads[len(list(model.parameters())) :])


def test_mirror_step_is_the_core_step_and_map() -> None:
    model = make_model()
    mirror_map = MAP_BUILDERS["coupled"](model)
    gen = torch.Generator().manual_seed(5)
    z = {
        n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in mirror_map.shapes.items()
    }
    g = {
        n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in mirror_map.shapes.items()
    }
    z_new, phi_new = mirror_step(mirror_map, z, g, LR)
    assert_equal(list(z_new.values()), [z[n] - LR * g[n] for n in z])
    assert_equal(list(phi_new.values()), list(mirror_map.to_primal(z_new).values()))
    per_name = {n: 0.1 * (i + 1) for i, n in enumerate(z)}
    z_map, _ = mirror_step(mirror_map, z, g, per_name)
    assert_equal(list(z_map.values()), [z[n] - per_name[n] * g[n] for n in z])


class _Unrolled(nn.Module):
    """Two mirror steps of a hand-written loop, as a module so functional_call can swap the map's
    parameters for gradcheck inputs."""

    def __init__(self, model: nn.Module, mirror_map: MirrorMap, x: Tensor, y: Tensor) -> None:
        super().__init__()
        self.model, self.mirror_map, self.x, self.y = model, mirror_map, x, y

    def loss(self, phi: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(functional_call(self.model, phi, (self.x,)), self.y)

    def forward(self, phi0: dict[str, Tensor], lr: Tensor) -> Tensor:
        z, phi = mirroropt.init(self.mirror_map, phi0), phi0
        for _ in range(2):
            z, phi = mirror_step(self.mirror_map, z, grad(self.loss)(phi), lr)
        return self.loss(phi)


def test_gradcheck_through_unrolled_mirror_steps() -> None:
    """float64 gradcheck of the query loss w.r.t. the init, the map's parameters and lr."""
    model = nn.Linear(2, 1).double()
    mirror_map = MAP_BUILDERS["coupled"](model)
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    unrolled = _Unrolled(model, mirror_map, x, y)
    names = list(mirror_map.names)
    map_names = [f"mirror_map.{n}" for n, _ in mirror_map.named_parameters()]

    def query(*flat: Tensor) -> Tensor:
        phi0 = dict(zip(names, flat[: len(names)]))
        map_params = dict(zip(map_names, flat[len(names) : -1]))
        return functional_call(unrolled, map_params, (phi0, flat[-1]))

    inputs = (
        *(p.detach().clone().requires_grad_() for p in model.parameters()),
        *(p.detach().clone().requires_grad_() for p in mirror_map.parameters()),
        torch.tensor(0.2, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(query, inputs)
    # … and every input matters (a parameter that is not swapped in would pass gradcheck as 0 = 0)
    assert all(float(g.abs().max()) > 1e-8 for g in torch.autograd.grad(query(*inputs), inputs))


def test_make_loss_fn_is_the_functional_call_loss() -> None:
    model = make_model()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    phi = {n: p + 0.1 for n, p in model.named_parameters()}
    loss_fn = make_loss_fn(model, F.mse_loss, x, y)
    assert torch.equal(loss_fn(phi), F.mse_loss(functional_call(model, phi, (x,)), y))
    assert torch.equal(make_loss_fn(model, F.mse_loss, (x,), y)(phi), loss_fn(phi))
    adapted = mirroropt.adapt(Diagonal(model).double(), loss_fn, phi, lr=LR, steps=2)
    assert float(loss_fn(adapted).detach()) < float(loss_fn(phi).detach())


def test_errors_name_the_argument() -> None:
    model = make_model()
    mirror_map = Identity(model)
    z = {n: p.detach() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"`lr` must be positive and finite, got 0\.0"):
        mirror_step(mirror_map, z, z, 0.0)
    with pytest.raises(ValueError, match=r"`lr\['0.bias'\]` must be positive and finite, got -1"):
        mirror_step(mirror_map, z, z, {n: (-1 if n == "0.bias" else 0.1) for n in z})
    with pytest.raises(TypeError, match=r"`mirror_map` must be a mirroropt\.maps\.MirrorMap"):
        mirror_step(model, z, z, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`grads` does not fit Identity"):
        mirror_step(mirror_map, z, {}, 0.1)
    with pytest.raises(TypeError, match=r"`model` must be an nn\.Module, got function"):
        make_loss_fn(F.mse_loss, F.mse_loss, z, z)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`criterion` must be callable, got int"):
        make_loss_fn(model, 3, z, z)  # type: ignore[arg-type]


# --- code without parameter names: lists of parameters, tuples of gradients -----------------


def list_net(params: list[Tensor], x: Tensor) -> Tensor:
    """functorch's regression example style: ``net(params, x)`` with ``params`` a list."""
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def list_meta_grads(
    params: list[Tensor], tasks: tuple[Tensor, ...], mirror_map: MirrorMap | None, extra: list
) -> tuple[list[Tensor], list[Tensor]]:
    """vmap over tasks; ``grad`` of a function of a list returns a list (used for mirror), and
    ``torch.autograd.grad`` a tuple (checked to give the same step below)."""

    def inner(ps: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(list_net(ps, x), y)

    def task(x_s, y_s, x_q, y_q):  # type: ignore[no-untyped-def]
        new = params
        if mirror_map is None:
            for _ in range(STEPS):
                gs = grad(inner)(new, x_s, y_s)
                new = [p - LR * g for p, g in zip(new, gs)]
        else:
            z = mirroropt.integrations.mirror_init(mirror_map, params)
            for _ in range(STEPS):
                z, new = mirror_step(mirror_map, z, grad(inner)(new, x_s, y_s), LR)
        return inner(new, x_q, y_q), new

    losses, fast = vmap(task)(*tasks)
    return fast, list(torch.autograd.grad(losses.sum(), [*params, *extra]))


def test_lists_and_tuples_one_line_equal_gd_and_the_core() -> None:
    model = make_model()
    params = [p for _, p in model.named_parameters()]
    tasks = make_tasks()
    # Identity on a list: bit for bit the list comprehension p - lr * g
    identity = Identity(mirroropt.integrations.named(params))
    gd_fast, gd_grads = list_meta_grads(params, tasks, None, [])
    md_fast, md_grads = list_meta_grads(params, tasks, identity, [])
    assert isinstance(md_fast, list)
    assert_equal(md_fast, gd_fast)
    assert_equal(md_grads, gd_grads)
    # a learned map on a list: the meta-gradients of the functional core on the named dict
    mirror_map = perturb(CoupledShift(mirroropt.integrations.named(params)))
    _, grads = list_meta_grads(params, tasks, mirror_map, list(mirror_map.parameters()))
    total = torch.zeros((), dtype=torch.float64)
    for x_s, y_s, x_q, y_q in zip(*tasks):
        phi = mirroropt.adapt(
            mirror_map,
            lambda p, x=x_s, y=y_s: F.mse_loss(list_net(list(p.values()), x), y),
            mirroropt.integrations.named(params),
            lr=LR,
            steps=STEPS,
        )
        total = total + F.mse_loss(list_net(list(phi.values()), x_q), y_q)
    expected = torch.autograd.grad(total, [*params, *mirror_map.parameters()])
    assert_close(grads, list(expected))


def test_a_tuple_of_autograd_gradients_steps_like_a_dict() -> None:
    model = make_model()
    mirror_map = MAP_BUILDERS["diagonal"](model)
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    params = tuple(model.parameters())
    grads = torch.autograd.grad(F.mse_loss(model(x_s), y_s), params)
    assert isinstance(grads, tuple)
    z = mirroropt.integrations.mirror_init(mirror_map, params)
    assert isinstance(z, tuple)
    z_t, phi_t = mirror_step(mirror_map, z, grads, LR)
    z_d, phi_d = mirror_step(
        mirror_map,
        mirroropt.init(mirror_map, dict(model.named_parameters())),
        dict(zip(mirror_map.names, grads)),
        LR,
    )
    assert isinstance(z_t, tuple) and isinstance(phi_t, tuple)
    assert_equal(list(phi_t), list(phi_d.values()))
    assert_equal(list(z_t), list(z_d.values()))
    # a dict of duals with a tuple of gradients: gradients matched by position, dicts returned
    _, phi_m = mirror_step(mirror_map, z_d, grads, LR)
    assert isinstance(phi_m, dict)


def test_sequence_errors_name_the_argument() -> None:
    model = make_model()
    mirror_map = Identity(model)
    params = list(model.parameters())
    with pytest.raises(ValueError, match=r"`grads` has 3 tensors but `mirror_map` was built for 4"):
        mirror_step(mirror_map, params, params[:3], LR)
    with pytest.raises(TypeError, match=r"`z` must be a dict name → tensor or a list/tuple"):
        mirror_step(mirror_map, params[0], params, LR)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`params` must be a dict name → tensor or a list/tuple"):
        mirroropt.integrations.mirror_init(mirror_map, [1.0, 2.0])  # type: ignore[list-item]
    with pytest.raises(
        TypeError, match=r"`params` must be a list or tuple of tensors, got Parameter"
    ):
        mirroropt.integrations.named(params[0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must contain only tensors, got items of type \['int'\]"):
        mirroropt.integrations.named([params[0], 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"at least one tensor, got an empty sequence"):
        mirroropt.integrations.named([])
    with pytest.raises(TypeError, match=r"`mirror_map` must be a mirroropt\.maps\.MirrorMap"):
        mirroropt.integrations.mirror_update(model, params, params, LR)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`grads` has 3 tensors but `mirror_map` was built for 4"):
        mirroropt.integrations.mirror_update(mirror_map, params, params[:3], LR)


# --- mirror_update: the primal-form one-liner ------------------------------------------------


def test_mirror_update_identity_is_the_list_comprehension_to_the_bit() -> None:
    model = make_model()
    params = list(model.parameters())
    x_s, y_s, _, _ = (t[0] for t in make_tasks())
    grads = torch.autograd.grad(F.mse_loss(model(x_s), y_s), params, create_graph=True)
    new = mirroropt.integrations.mirror_update(Identity(model), params, grads, LR)
    assert isinstance(new, list)
    assert_equal(new, [p - g * LR for p, g in zip(params, grads)])


@pytest.mark.parametrize("name", NONTRIVIAL)
def test_mirror_update_steps_and_meta_gradients_equal_mirror_step(name: str) -> None:
    """Recomputing z = ∇h(φ) each step is the dual point mirror_step carries (to_dual inverts
    to_primal), so iterates and meta-gradients agree with the dual-state loop and the core."""
    model = make_model()
    mirror_map = MAP_BUILDERS[name](model)
    tasks = make_tasks()
    phi0 = dict(model.named_parameters())

    def compute_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(functional_call(model, p, (x,)), y)

    def task(x_s, y_s, x_q, y_q):  # type: ignore[no-untyped-def]
        new = phi0
        for _ in range(STEPS):
            new = mirroropt.integrations.mirror_update(
                mirror_map, new, grad(compute_loss)(new, x_s, y_s), LR
            )
        return compute_loss(new, x_q, y_q)

    total = vmap(task)(*tasks).sum()
    grads = torch.autograd.grad(total, meta_params(model, mirror_map))
    expected_total, expected = core_meta_grads(model, mirror_map, tasks)
    assert float((total - expected_total).abs().detach()) <= 1e-12 * float(expected_total.detach())
    assert_close(list(grads), expected)


def test_mirror_update_refuses_maps_without_to_dual() -> None:
    model = make_model()
    from mirroropt.maps import ConvexPotential

    with pytest.raises(TypeError, match=r"no closed-form to_dual.*dual initialization `z`"):
        mirroropt.integrations.mirror_update(
            ConvexPotential(model).double(),
            dict(model.named_parameters()),
            {n: torch.zeros_like(p) for n, p in model.named_parameters()},
            LR,
        )


def test_make_loss_fn_refuses_vmap_over_batch_statistics_and_map_tasks_loops() -> None:
    """functorch's maml-omniglot-transforms pattern: vmap over a BatchNorm model that normalizes
    with batch statistics gives silently wrong meta-gradients on torch 2.13; where our API sees
    the model, it refuses."""
    x_spt, y_spt, _, _ = make_tasks()

    def run(net: nn.Module, batch: str) -> Tensor:
        mirror_map = Identity(net)

        def task(x: Tensor, y: Tensor) -> Tensor:
            loss_fn = make_loss_fn(net, F.mse_loss, x, y)
            phi = mirroropt.adapt(mirror_map, loss_fn, dict(net.named_parameters()), lr=LR, steps=1)
            return loss_fn(phi)

        if batch == "vmap":
            return vmap(task)(x_spt, y_spt)
        return mirroropt.map_tasks(task, x_spt, y_spt, model=net)

    torch.manual_seed(0)
    batch_stats = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)
    ).double()
    with pytest.raises(ValueError, match=r"batch statistics in \['1'\].*under torch\.func\.vmap"):
        run(batch_stats, "vmap")
    looped = run(batch_stats, "map_tasks")  # loops over tasks: allowed
    assert looped.shape == (3,) and bool(torch.isfinite(looped).all())
    running = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double().eval()
    assert run(running, "vmap").shape == (3,)  # eval mode, running statistics: vmap allowed


@pytest.mark.parametrize("helper", ["mirror_step", "mirror_update"])
def test_prepared_once_per_inner_loop_gives_the_core_meta_gradients_without_per_step_work(
    helper: str,
) -> None:
    """``prepared=mirror_map.prepared()`` made once per task inside the vmapped loop: Kronecker's
    factors are computed once per inner loop, not at every step (and ``mirror_update`` of a linear
    map takes no ``to_dual``), with the functional core's meta-gradients."""
    from mirroropt.integrations import mirror_update
    from mirroropt.maps import Kronecker

    model = make_model()
    mirror_map = perturb(Kronecker(model), scale=0.2)
    tasks = make_tasks()
    phi0 = dict(model.named_parameters())

    def compute_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(functional_call(model, p, (x,)), y)

    def run(steps: int, hoist: bool) -> tuple[int, list[Tensor]]:
        def task(x_s, y_s, x_q, y_q):  # type: ignore[no-untyped-def]
            prepared = mirror_map.prepared() if hoist else None
            new, z = phi0, mirroropt.init(mirror_map, phi0)
            for _ in range(steps):
                grads = grad(compute_loss)(new, x_s, y_s)
                if helper == "mirror_step":
                    z, new = mirror_step(mirror_map, z, grads, LR, prepared=prepared)
                else:
                    new = mirror_update(mirror_map, new, grads, LR, prepared=prepared)
            return compute_loss(new, x_q, y_q)

        with CountCalls({torch.linalg.eigh}) as counter:
            total = vmap(task)(*tasks).sum()
        return counter.count, list(torch.autograd.grad(total, meta_params(model, mirror_map)))

    with CountCalls({torch.linalg.eigh}) as once:
        mirror_map.prepared()
    init = once.count  # z0 = ∇h(φ0): the inverse factors, once per task
    assert run(1, hoist=True)[0] == run(STEPS, hoist=True)[0] == once.count + init
    assert run(STEPS, hoist=False)[0] == (STEPS + 1) * once.count  # at every step
    _, expected = core_meta_grads(model, mirror_map, tasks)
    assert_close(run(STEPS, hoist=True)[1], expected)


def test_mirror_update_of_a_linear_map_takes_no_to_dual() -> None:
    """φ − α g(∇L): one map application per step (``to_dual`` would be a second)."""
    from mirroropt.integrations import mirror_update

    model = make_model()
    mirror_map = perturb(Diagonal(model))
    calls: list[str] = []
    to_dual, to_primal = mirror_map.to_dual, mirror_map.to_primal
    mirror_map.to_dual = lambda phi: calls.append("to_dual") or to_dual(phi)  # type: ignore[method-assign]
    mirror_map.to_primal = lambda z: calls.append("to_primal") or to_primal(z)  # type: ignore[method-assign]
    params = dict(model.named_parameters())
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    new = mirror_update(mirror_map, params, grads, LR)
    assert calls == ["to_primal"]
    scaled = to_primal(grads)
    assert_close(list(new.values()), [params[n] - LR * scaled[n] for n in params])
    with pytest.raises(TypeError, match=r"`prepared` must be the function mirror_map\.prepared"):
        mirror_update(mirror_map, params, grads, LR, prepared="g")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`prepared` must be the function mirror_map\.prepared"):
        mirror_step(mirror_map, params, grads, LR, prepared=1)  # type: ignore[arg-type]


def test_mirror_update_with_a_per_coordinate_step_size_keeps_the_dual_step() -> None:
    """A per-coordinate lr does not commute with the map: mirror_update takes z = ∇h(φ) and
    mirror_step's dual step (to_dual, then to_primal), with its iterates."""
    from mirroropt.integrations import mirror_update

    model = make_model()
    mirror_map = perturb(Diagonal(model))
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(4)
    grads = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
    lr = {
        n: LR * (1 + torch.rand(p.shape, generator=gen, dtype=p.dtype)) for n, p in params.items()
    }
    calls: list[str] = []
    to_dual = mirror_map.to_dual
    mirror_map.to_dual = lambda phi: calls.append("to_dual") or to_dual(phi)  # type: ignore[method-assign]
    new = mirror_update(mirror_map, params, grads, lr)
    assert calls == ["to_dual"]
    _, expected = mirror_step(mirror_map, to_dual(params), grads, lr)
    assert_close(list(new.values()), list(expected.values()))
