"""GPU-readiness of the inner loop: value checks read the device once per call, not per step."""

from __future__ import annotations

import higher
import pytest
import torch
import torchopt

import mirroropt as mo
from mirroropt.integrations import MirrorMAML, mirror_step
from mirroropt.integrations.higher import MirrorDescent
from mirroropt.integrations.torchopt import MetaMirrorDescent
from mirroropt.maps import Diagonal
from tests.integrations._common import CountCalls, make_model
from tests.registry import CASES, SHAPES, MapCase

#: Calls that wait for the device: reading a value on the host, ops documented to synchronize on
#: CUDA (``eigh``/``eigvalsh`` return their error status; ``nonzero``'s output size is
#: data-dependent), and host values made into tensors (on a GPU a blocking copy to the device).
SYNCS = {
    torch.tensor,
    torch.as_tensor,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.equal,
    torch.allclose,
    torch.linalg.eigh,
    torch.linalg.eigvalsh,
}


def _syncs(steps: int) -> int:
    w = torch.randn(5, dtype=torch.float64)
    g = Diagonal({"w": w}).double()
    lr = torch.tensor(0.1, dtype=torch.float64)
    with CountCalls(SYNCS) as counter:
        mo.adapt(g, lambda p: (p["w"] ** 2).sum(), {"w": w}, lr=lr, steps=steps)
    return counter.count


def test_host_device_syncs_do_not_grow_with_the_number_of_steps() -> None:
    assert _syncs(1) == _syncs(7)
    assert _syncs(7) <= 2  # the lr check and the finite-gradient check, once each


def test_a_non_finite_gradient_at_a_later_step_is_reported_with_its_step() -> None:
    phi = {"a": torch.tensor([1.0, 2.0]), "w": torch.tensor([0.5, 0.2])}
    g = Diagonal(phi)
    # the gradient sqrt'(w) is finite at step 0; the step takes w to a negative value: NaN at step 1
    with pytest.raises(ValueError, match=r"at inner step 1 is not finite for \['w'\]"):
        mo.adapt(g, lambda p: p["a"].sum() + torch.sqrt(p["w"]).sum(), phi, lr=1.0, steps=3)


def _dual_start(case: MapCase) -> tuple[mo.maps.MirrorMap, dict[str, torch.Tensor]]:
    """The case's map away from its initialization and a dual point in every map's domain."""
    gen = torch.Generator().manual_seed(0)
    z = {
        n: 0.1 + 0.1 * torch.rand(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()
    }
    return case.build_trained(dict(SHAPES)), z


def _squares(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([(v**2).sum() for v in p.values()]).sum()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_no_map_reads_the_device_per_inner_step(case: MapCase) -> None:
    g, z = _dual_start(case)
    lr = torch.tensor(0.01, dtype=torch.float64)

    def syncs(steps: int) -> int:
        with CountCalls(SYNCS) as counter:
            mo.adapt(g, _squares, z=z, lr=lr, steps=steps)
        return counter.count

    # prepared() may factorize once per call (Kronecker's eigh); the checks read once per call
    assert syncs(1) == syncs(6)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hand_written_loop_with_a_prepared_map_reads_the_device_only_once(case: MapCase) -> None:
    """mirror_step with ``prepared=mirror_map.prepared()`` (made once per inner loop) and a number
    lr: nothing per step (without ``prepared``, Kronecker's eigh ran at every step)."""
    g, z = _dual_start(case)

    def syncs(steps: int) -> int:
        with CountCalls(SYNCS) as counter:
            prepared, z_k = g.prepared(), z
            for _ in range(steps):
                grads = torch.func.grad(_squares)(prepared(z_k))
                z_k, _ = mirror_step(g, z_k, grads, 0.01, prepared=prepared)
        return counter.count

    assert syncs(1) == syncs(6)


#: The shells take one step per call: the finite check reads once per step (``check_finite``),
#: nothing else may (a number lr made into a tensor, a tensor lr's value read, per step).
LRS = {"number": lambda: 0.01, "tensor": lambda: torch.tensor(0.01, dtype=torch.float64)}


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("lr", list(LRS))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_learner_reads_the_device_only_for_its_finite_check(
    case: MapCase, lr: str, check_finite: bool
) -> None:
    g, z = _dual_start(case)
    z = {n: v.requires_grad_() for n, v in z.items()}  # a learned z0, MetaMiDA's θ_z
    maml = MirrorMAML(_module(z), g, lr=LRS[lr](), check_finite=check_finite)

    def syncs(steps: int) -> int:
        learner = maml.clone(z=z)
        with CountCalls(SYNCS) as counter:
            for _ in range(steps):
                learner.adapt(_squares(learner.phi))
        return counter.count

    assert syncs(6) - syncs(1) == (5 if check_finite else 0)


#: The maps the higher and TorchOpt shells are checked with (those with ``to_dual``, linear or not).
SHELL_MAPS = ["identity", "diagonal", "kronecker", "block_iaf", "pnorm-3"]


def _model_and_map(name: str) -> tuple[torch.nn.Module, mo.maps.MirrorMap]:
    """The integration tests' model and the registry's trained map ``name`` for it."""
    model = make_model()
    case = next(c for c in CASES if c.id == name)
    return model, case.build_trained({n: p.shape for n, p in model.named_parameters()})


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("lr", list(LRS))
@pytest.mark.parametrize("name", SHELL_MAPS)
def test_the_higher_optimizer_reads_the_device_only_for_its_finite_check(
    name: str, lr: str, check_finite: bool
) -> None:
    model, g = _model_and_map(name)
    opt = MirrorDescent(model.named_parameters(), g, lr=LRS[lr](), check_finite=check_finite)
    x = torch.randn(4, 3, dtype=torch.float64)

    def syncs(steps: int) -> int:
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            with CountCalls(SYNCS) as counter:
                for _ in range(steps):
                    diffopt.step(fmodel(x).pow(2).sum())
        return counter.count

    # the first step also reads a tensor lr's value (once per inner loop) and Kronecker's eigh
    assert syncs(6) - syncs(1) == (5 if check_finite else 0)


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("lr", list(LRS))
@pytest.mark.parametrize("name", SHELL_MAPS)
def test_the_torchopt_optimizer_reads_the_device_only_for_its_finite_check(
    name: str, lr: str, check_finite: bool
) -> None:
    """Kronecker's eigh (in prepared()) once per inner loop: it read the device at every step."""
    model, g = _model_and_map(name)
    x = torch.randn(4, 3, dtype=torch.float64)

    def syncs(steps: int) -> int:
        opt = MetaMirrorDescent(model, g, lr=LRS[lr](), check_finite=check_finite)
        state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        with CountCalls(SYNCS) as counter:
            for _ in range(steps):
                opt.step(model(x).pow(2).sum())
        torchopt.recover_state_dict(model, state)
        return counter.count

    assert syncs(6) - syncs(1) == (5 if check_finite else 0)


def _module(params: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module whose parameters are ``params`` (dotted names as submodules)."""
    module = torch.nn.Module()
    for name, value in params.items():
        *path, leaf = name.split(".")
        owner = module
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(leaf, torch.nn.Parameter(value.detach().clone()))
    return module
