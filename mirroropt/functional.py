r"""The functional core of mirroropt: pure, differentiable mirror descent on dicts of tensors.

Everything in mirroropt — the :class:`~mirroropt.MirrorDescent` optimizer, the integrations and
the training workflow — calls these functions; the math lives here once.

Mirror descent in dual form, for an inverse mirror map :math:`g = (\nabla h)^{-1}`:

.. math::

    z_0 = \nabla h(\phi_0) \ \text{(or a learned } z_0), \qquad
    z_{k+1} = z_k - \alpha\,\nabla L(g(z_k); \mathcal D_{trn}), \qquad \phi_K = g(z_K).

All functions are safe under :func:`torch.func.vmap` (over tasks) and :func:`torch.func.grad`:
no in-place ops, no :func:`torch.autograd.grad`, no ``.item()`` on their path. Eager (untransformed)
calls use fused ``torch._foreach_*`` kernels and check values (finite gradients, positive ``lr``);
under a transform they fall back to per-tensor ops and static checks only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from mirroropt._types import LR, Params
from mirroropt._utils import NonFiniteError, is_transformed
from mirroropt.maps._base import MirrorMap

__all__ = ["Trajectory", "adapt", "adapt_trajectory", "init", "step", "to_primal"]


class Trajectory(NamedTuple):
    """The iterates of one inner loop, as returned by :func:`adapt_trajectory`.

    Attributes:
        phi: primal iterates :math:`\\phi_0, \\dots, \\phi_K` (K + 1 dicts).
        z: dual iterates :math:`z_0, \\dots, z_K` (K + 1 dicts).
        losses: support losses :math:`L(\\phi_0), \\dots, L(\\phi_{K-1})` (K scalars).
        grads: gradients :math:`\\nabla L(\\phi_0), \\dots, \\nabla L(\\phi_{K-1})` (K dicts);
            detached when ``first_order=True``.
    """

    phi: list[Params]
    z: list[Params]
    losses: list[Tensor]
    grads: list[Params]


def init(mirror_map: MirrorMap, phi: Mapping[str, Tensor]) -> Params:
    r"""The dual point of primal parameters, :math:`z = \nabla h(\phi)`.

    Args:
        mirror_map: the map; must have a closed-form ``to_dual`` (``has_to_dual``).
        phi: primal parameters, a dict name → tensor with the map's names and shapes.

    Returns:
        The dual variable ``z`` (same names and shapes), differentiable w.r.t. ``phi`` and the map.

    Raises:
        TypeError: if the map has no ``to_dual`` (use a dual initialization instead).
        ValueError/TypeError: if ``phi`` does not fit the map (see :meth:`MirrorMap.check_fits`).

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> init(Identity({"w": torch.zeros(1)}), {"w": torch.ones(1)})
        {'w': tensor([1.])}
    """
    _check_primal_start(mirror_map, phi)
    return mirror_map.to_dual(phi)


def _check_primal_start(mirror_map: MirrorMap, phi: Mapping[str, Tensor]) -> None:
    """What :func:`init` refuses: not a map, ``phi`` that does not fit, a map without to_dual."""
    _check_map(mirror_map)
    mirror_map.check_fits(phi, argument="phi")
    if not mirror_map.has_to_dual:
        raise TypeError(
            f"`mirror_map` ({type(mirror_map).__name__}) has no closed-form to_dual, so it cannot "
            f"start from primal parameters `phi`; pass a dual initialization `z` instead."
        )


def _steps_in_primal(mirror_map: MirrorMap, lr: LR) -> bool:
    r"""Whether a loop started at :math:`\phi_0` may step in the primal, skipping :math:`z`.

    For a linear map :math:`g(z) = Pz` and a scalar step size per tensor (a number or a 0-d
    tensor), :math:`g(z_k - \alpha\nabla L) = \phi_k - \alpha\, g(\nabla L)`: the same iterates
    without :math:`z_0 = \nabla h(\phi_0)` (one ``to_dual`` per task, with its backward: for
    :class:`~mirroropt.maps.Kronecker` the inverse factors' exponentials). A per-coordinate
    step size does not commute with :math:`P`, so it keeps the dual loop.
    """
    if not mirror_map.is_linear:
        return False
    values = lr.values() if isinstance(lr, Mapping) else (lr,)
    return all(not isinstance(a, Tensor) or a.dim() == 0 for a in values)


def to_primal(mirror_map: MirrorMap, z: Mapping[str, Tensor]) -> Params:
    r"""The primal point of a dual variable, :math:`\phi = g(z) = \nabla h^*(z)`.

    Raises:
        ValueError/TypeError: if ``z`` does not fit the map.
    """
    _check_map(mirror_map)
    mirror_map.check_fits(z, argument="z")
    return mirror_map.to_primal(z)


def step(
    mirror_map: MirrorMap,
    z: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    lr: LR,
) -> Params:
    r"""One dual step :math:`z \leftarrow z - \alpha\,\nabla L(\phi)` with :math:`\phi = g(z)`.

    Args:
        mirror_map: the map (its names and shapes validate ``z`` and ``grads``).
        z: the dual variable, a dict name → tensor.
        grads: :math:`\nabla_\phi L` at :math:`\phi = g(z)`, same names and shapes.
        lr: step size :math:`\alpha > 0`: a number, a 0-d (possibly learnable) tensor, or a
            mapping name → number/tensor for one step size per tensor, where a tensor is 0-d or
            has exactly that tensor's shape (one step size per coordinate, as Meta-SGD).

    Returns:
        The new dual variable; with a number ``lr`` each entry is computed as
        ``torch.add(z, g, alpha=-lr)``, bit-for-bit the update of :class:`torch.optim.SGD`.

    Raises:
        ValueError: if ``lr`` is not positive and finite (numbers always; tensors when not under a
            ``torch.func`` transform), a tensor ``lr`` has another shape than above, or
            ``grads`` do not fit the map.
        TypeError: if ``lr`` has an unsupported type.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> g = Identity({"w": torch.zeros(1)})
        >>> step(g, {"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}, lr=0.25)
        {'w': tensor([0.5000])}
    """
    _check_map(mirror_map)
    return _checked_step(mirror_map, z, grads, lr, fused=True)


def _checked_step(
    mirror_map: MirrorMap,
    z: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    lr: LR,
    *,
    fused: bool,
) -> Params:
    """:func:`step` after checking that ``z``, ``grads`` and ``lr`` fit (see :func:`_step`)."""
    mirror_map.check_fits(z, argument="z")
    mirror_map.check_fits(grads, argument="grads")
    _check_lr(lr, mirror_map.shapes)
    return _step(mirror_map.names, z, grads, lr, fused=fused)


def adapt(
    mirror_map: MirrorMap,
    loss_fn: Callable[[Params], Tensor],
    phi: Mapping[str, Tensor] | None = None,
    *,
    z: Mapping[str, Tensor] | None = None,
    lr: LR,
    steps: int,
    first_order: bool = False,
    check_finite: bool = True,
) -> Params:
    r"""Run ``steps`` mirror-descent steps on ``loss_fn`` and return the adapted parameters.

    .. math::

        z_0 = \nabla h(\phi) \text{ or } z, \quad
        z_{k+1} = z_k - \alpha \nabla L(g(z_k)), \quad \text{returns } \phi_K = g(z_K).

    Gradients are taken with :func:`torch.func.grad`, so the result is differentiable to any
    order w.r.t. ``phi``/``z``, the map's parameters and a tensor ``lr`` (second-order MAML
    meta-gradients through all K steps), and the whole call may be wrapped in
    :func:`torch.func.vmap` over tasks (see :func:`mirroropt.map_tasks` for models with BatchNorm).

    Args:
        mirror_map: the inverse mirror map :math:`g`.
        loss_fn: the support loss, ``loss_fn(phi) -> scalar tensor``, typically
            ``lambda p: F.cross_entropy(functional_call(model, p, (x,)), y)``.
        phi: primal initialization :math:`\phi_0` (needs ``mirror_map.has_to_dual``).
        z: dual initialization :math:`z_0` (e.g. MetaMiDA's learned :math:`\theta_z`); give
            exactly one of ``phi`` and ``z``.
        lr: step size :math:`\alpha` (number, 0-d tensor, or mapping name → number/tensor; see
            :func:`step` for the shapes a tensor may have).
        steps: number of inner steps :math:`K \ge 0`.
        first_order: treat the inner gradients as constants (first-order MAML); the meta-gradient
            still flows through the map.
        check_finite: in eager mode, raise if a gradient is not finite (ignored under transforms,
            where data-dependent checks are impossible). The flags stay on the device during the
            K steps and are read once after them (one host-device sync per call, none per step).

    Returns:
        :math:`\phi_K` as a dict name → tensor. With ``steps=0`` and ``phi`` given, ``phi`` itself.

    Raises:
        ValueError: if both or neither of ``phi``/``z`` are given, ``steps`` is negative, ``lr``
            is not positive, a gradient is not finite, or the parameters do not fit the map.
        TypeError: on wrong argument types, or ``phi`` given to a map without ``to_dual``.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> loss = lambda p: ((p["w"] - 3.0) ** 2).sum()
        >>> adapt(Identity({"w": torch.zeros(1)}), loss, {"w": torch.zeros(1)}, lr=0.25, steps=1)
        {'w': tensor([1.5000])}

    References:
        Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017, arXiv:1703.03400.
        Zhang, Li & Giannakis, "Meta-learning with learned mirror descent (MetaMiDA)",
        arXiv:2509.02418.
    """
    return _run(
        mirror_map, loss_fn, phi, z, lr, steps, first_order, check_finite, record=False
    ).phi[-1]


def adapt_trajectory(
    mirror_map: MirrorMap,
    loss_fn: Callable[[Params], Tensor],
    phi: Mapping[str, Tensor] | None = None,
    *,
    z: Mapping[str, Tensor] | None = None,
    lr: LR,
    steps: int,
    first_order: bool = False,
    check_finite: bool = True,
) -> Trajectory:
    r"""Same as :func:`adapt`, but return every iterate, loss and gradient as a :class:`Trajectory`.

    Used for accuracy-vs-steps evaluation and for trajectory-based meta-objectives (MetaMD's
    regret bound). Arguments, differentiability and errors are those of :func:`adapt`.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> loss = lambda p: ((p["w"] - 3.0) ** 2).sum()
        >>> t = adapt_trajectory(Identity({"w": torch.zeros(1)}), loss, {"w": torch.zeros(1)},
        ...                      lr=0.25, steps=2)
        >>> [round(float(l), 4) for l in t.losses]
        [9.0, 2.25]
    """
    return _run(mirror_map, loss_fn, phi, z, lr, steps, first_order, check_finite, record=True)


# --------------------------------------------------------------------------------------------------
# internals (no argument checks; callers have validated)


def _run(
    mirror_map: MirrorMap,
    loss_fn: Callable[[Params], Tensor],
    phi: Mapping[str, Tensor] | None,
    z: Mapping[str, Tensor] | None,
    lr: LR,
    steps: int,
    first_order: bool,
    check_finite: bool,
    *,
    record: bool,
) -> Trajectory:
    _check_map(mirror_map)
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be a non-negative int, got {steps!r}.")
    if (phi is None) == (z is None):
        raise ValueError(
            "Give exactly one of `phi` (primal initialization, z0 = to_dual(phi)) and `z` (dual "
            f"initialization); got {'both' if phi is not None else 'neither'}."
        )
    _check_map(mirror_map)
    _check_lr(lr, mirror_map.shapes)
    # a linear map from φ₀ (not recorded): φ_{k+1} = φ_k − α g(∇L), no z (_steps_in_primal)
    primal = phi is not None and not record and _steps_in_primal(mirror_map, lr)
    g = mirror_map.prepared()  # hoists z-independent work (scales, factors) out of the K steps
    z_k: Params | None
    if phi is not None:
        _check_primal_start(mirror_map, phi)
        z_k = None if primal else mirror_map.to_dual(phi)
        phi_k = _alias(phi, steps)  # g(∇h(φ)) = φ exactly: skip the round trip (and its rounding)
    else:
        assert z is not None
        mirror_map.check_fits(z, argument="z")
        z_k = _alias(z, steps)
        phi_k = g(z_k)
    names = mirror_map.names
    grad_and_value = torch.func.grad_and_value(loss_fn)
    out = Trajectory([phi_k], [] if z_k is None else [z_k], [], [])
    finite: list[Tensor] = []  # per-step flags, read once after the loop (one host-device sync)
    for _ in range(steps):
        grads, loss = grad_and_value(phi_k)
        if first_order:
            grads = {n: t.detach() for n, t in grads.items()}
        if check_finite:
            flags = _finite_flags([grads[n] for n in names])
            if flags is not None:
                finite.append(flags)
        if z_k is None:
            phi_k = _step(names, phi_k, g(grads), lr)
        else:
            z_k = _step(names, z_k, grads, lr)
            phi_k = g(z_k)
        if record:
            assert z_k is not None
            out.phi.append(phi_k)
            out.z.append(z_k)
            out.losses.append(loss)
            out.grads.append(grads)
    if finite:
        _raise_unless_finite(finite, names)
    if not record:  # only φ_K is read (adapt); a primal loop has no z_K
        return Trajectory([phi_k], [] if z_k is None else [z_k], [], [])
    return out


def _finite_flags(tensors: list[Tensor]) -> Tensor | None:
    """One bool per tensor, ``isfinite(t).all()``, on the device (no sync); None under vmap."""
    if is_transformed(tensors):
        return None
    with torch.no_grad():
        return torch.stack([torch.isfinite(t).all() for t in tensors])


def _raise_unless_finite(finite: list[Tensor], names: tuple[str, ...]) -> None:
    """Raise for the first inner step whose gradient had a non-finite entry (one sync)."""
    flags = torch.stack(finite)
    if bool(flags.all()):
        return
    rows = flags.tolist()
    k = next(i for i, row in enumerate(rows) if not all(row))
    bad = [n for n, good in zip(names, rows[k]) if not good]
    raise NonFiniteError(
        f"The gradient of `loss_fn` at inner step {k} is not finite for {bad}; check the loss, "
        f"the inputs and `lr` (or pass check_finite=False to let it through)."
    )


def _alias(params: Mapping[str, Tensor], steps: int) -> Params:
    """``dict(params)``; under a torch-function mode, views, so the mode sees the inputs.

    :func:`mirroropt.map_tasks` with ``params`` substitutes meta-parameters whenever a torch
    function receives them; a view lets it substitute them before ``torch.func.grad`` wraps them
    (same values, no copy).
    """
    if steps and torch._C._is_torch_function_mode_enabled():
        return {n: t.view_as(t) for n, t in params.items()}
    return dict(params)


def _step(
    names: tuple[str, ...],
    z: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    lr: LR,
    *,
    fused: bool = True,
) -> Params:
    """``z - lr * grads`` per tensor, unchecked.

    A number ``lr`` is ``torch.add(z, g, alpha=-lr)`` (``torch.optim.SGD``'s rounding) when
    ``fused``, else ``z - lr * g`` with the number as a scalar operand (the rounding of a
    hand-written loop, ``higher`` and TorchOpt: the integrations' choice). Either way no tensor
    is made for it: on a GPU a host number copied to the device per step would wait for the
    device.
    """
    zs = [z[n] for n in names]
    gs = [grads[n] for n in names]
    if isinstance(lr, numbers.Real) and not isinstance(lr, bool):
        rate = float(lr)
        if not fused:
            new = [zi - rate * gi for zi, gi in zip(zs, gs)]
        elif is_transformed(zs) or is_transformed(gs):
            new = [torch.add(zi, gi, alpha=-rate) for zi, gi in zip(zs, gs)]
        else:
            new = list(torch._foreach_add(zs, gs, alpha=-rate))
    elif isinstance(lr, Tensor):
        new = [zi - lr * gi for zi, gi in zip(zs, gs)]
    else:
        assert isinstance(lr, Mapping)
        new = [
            zi - a * gi
            if isinstance(a, Tensor) or not fused
            else torch.add(zi, gi, alpha=-float(a))
            for zi, gi, a in zip(zs, gs, (lr[n] for n in names))
        ]
    return dict(zip(names, new))


def _check_map(mirror_map: object) -> None:
    if not isinstance(mirror_map, MirrorMap):
        raise TypeError(
            f"`mirror_map` must be a mirroropt.maps.MirrorMap, got {type(mirror_map).__name__}."
        )


def _check_lr(lr: LR, shapes: Mapping[str, torch.Size], *, values: bool = True) -> None:
    """Types and shapes of ``lr``, and (``values``) that it is positive and finite.

    The values of tensor step sizes are read from the device once for all of them (one sync for
    a mapping of tensors); ``values=False`` checks numbers only, for callers that read tensor
    values once per inner loop instead of once per step.
    """
    if isinstance(lr, Mapping):
        missing = [n for n in shapes if n not in lr]
        if missing:
            raise ValueError(f"`lr` is a mapping but has no step size for {missing}.")
        tensors: dict[str, Tensor] = {}
        for n, shape in shapes.items():
            _check_one_lr(lr[n], f"lr[{n!r}]", shape=shape, values=False)
            value = lr[n]
            if isinstance(value, Tensor):
                tensors[n] = value
        if values and tensors and not is_transformed(list(tensors.values())):
            with torch.no_grad():
                ok = [torch.all(torch.isfinite(a) & (a > 0)) for a in tensors.values()]
                if not bool(torch.stack(ok).all()):  # one read; the names only on failure
                    for n, a in tensors.items():
                        _check_one_lr(a, f"lr[{n!r}]", shape=shapes[n])
    else:
        _check_one_lr(lr, "lr", values=values)


def _check_one_lr(
    lr: object, argument: str, *, shape: torch.Size | None = None, values: bool = True
) -> None:
    """Type, shape and (eager, ``values``) value of one step size.

    A tensor must be 0-d, or (``shape`` given: one tensor's own step size) exactly ``shape``:
    anything else would broadcast ``z - lr * g`` to another shape, or fail deep inside the step.
    A number's value is always checked (no device read).
    """
    if isinstance(lr, bool) or not isinstance(lr, (numbers.Real, Tensor)):
        raise TypeError(
            f"`{argument}` must be a positive number or tensor, got {type(lr).__name__}."
        )
    if isinstance(lr, numbers.Real):
        if not (math.isfinite(lr) and float(lr) > 0):
            raise ValueError(f"`{argument}` must be positive and finite, got {lr}.")
        return
    if not lr.is_floating_point():
        raise TypeError(f"`{argument}` must be a floating-point tensor, got dtype {lr.dtype}.")
    if lr.dim() != 0 and (shape is None or lr.shape != shape):
        expected = "a 0-d (scalar) tensor" + (
            f" or one of the tensor's shape {tuple(shape)}"
            if shape is not None
            else "; for per-tensor step sizes pass a mapping name → step size"
        )
        raise ValueError(f"`{argument}` must be {expected}, got shape {tuple(lr.shape)}.")
    if values and not is_transformed([lr]):
        with torch.no_grad():
            if not bool(torch.all(torch.isfinite(lr) & (lr > 0))):
                raise ValueError(f"`{argument}` must be positive and finite, got {lr.detach()}.")


def _check_finite(grads: Mapping[str, Tensor], what: str) -> None:
    tensors = list(grads.values())
    if is_transformed(tensors):
        return
    with torch.no_grad():
        ok = torch.stack([torch.isfinite(t).all() for t in tensors])
        if not bool(ok.all()):
            bad = [n for n, good in zip(grads, ok.tolist()) if not good]
            raise NonFiniteError(
                f"{what} is not finite for {bad}; check the loss, the inputs and `lr` (or pass "
                f"check_finite=False to let it through)."
            )
