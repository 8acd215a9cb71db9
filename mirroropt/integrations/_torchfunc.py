r"""Helpers for hand-written ``torch.func`` MAML loops: one drop-in step, one loss builder.

PyTorch's own MAML example adapts with

.. code-block:: python

    grads = torch.func.grad(compute_loss)(new_params, ...)
    new_params = {k: new_params[k] - g * lr for k, g in grads.items()}

Mirror descent keeps a dual variable next to the parameters; :func:`mirror_step` is the
replacement for the second line (start the loop with ``z = mirroropt.init(mirror_map, params)``).
Both helpers are pure, so they run under :func:`torch.func.vmap` over tasks and under
:func:`torch.func.grad` for meta-gradients of any order.

Code found upstream often has no parameter names: parameters in a list
(``params = [w1, b1, ...]``, ``net(params, x)``) and gradients as the tuple that
``torch.autograd.grad`` returns. :func:`named` gives such a list the names ``"0"``, ``"1"``, …
to build a map from, and :func:`mirror_init`/:func:`mirror_step` take and return lists or tuples
in that order, so the loop keeps its containers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from mirroropt import functional as F
from mirroropt._batching import batch_norm_is_exact_under_vmap, uses_batch_statistics
from mirroropt._types import LR, Params
from mirroropt.maps._base import MirrorMap

__all__ = ["make_loss_fn", "mirror_init", "mirror_step", "mirror_update", "named"]

#: a dict name → tensor, or a list/tuple of tensors in the map's name order
Tensors = TypeVar("Tensors", Mapping[str, Tensor], Sequence[Tensor])


def named(params: Sequence[Tensor]) -> Params:
    r"""Names for an unnamed list of parameters: ``{"0": params[0], "1": params[1], …}``.

    Build a map for a model written as ``net(params, x)`` with ``params`` a list:
    ``Diagonal(named(params))``. :func:`mirror_init`/:func:`mirror_step` then take the list (and a
    tuple of gradients) directly, matched by position.

    Args:
        params: a list or tuple of tensors (e.g. ``[w1, b1, w2, b2]``).

    Raises:
        TypeError: if ``params`` is not a list/tuple of tensors.
        ValueError: if it is empty.

    Example:
        >>> import torch
        >>> list(named([torch.zeros(2, 1), torch.zeros(2)]))
        ['0', '1']
    """
    if isinstance(params, Tensor) or not isinstance(params, (list, tuple)):
        raise TypeError(
            f"`params` must be a list or tuple of tensors, got {type(params).__name__}."
        )
    if not params:
        raise ValueError("`params` must contain at least one tensor, got an empty sequence.")
    kinds = sorted({type(p).__name__ for p in params if not isinstance(p, Tensor)})
    if kinds:
        raise TypeError(f"`params` must contain only tensors, got items of type {kinds}.")
    return {str(i): p for i, p in enumerate(params)}


def _as_dict(mirror_map: MirrorMap, values: Any, argument: str) -> Params:
    """A mapping as a dict; a list/tuple matched by position to ``mirror_map.names``."""
    if isinstance(values, Mapping):
        return dict(values)
    if isinstance(values, (list, tuple)) and all(isinstance(v, Tensor) for v in values):
        names = mirror_map.names
        if len(values) != len(names):
            raise ValueError(
                f"`{argument}` has {len(values)} tensors but `mirror_map` was built for "
                f"{len(names)}: {list(names)}."
            )
        return dict(zip(names, values))
    raise TypeError(
        f"`{argument}` must be a dict name → tensor or a list/tuple of tensors in the map's name "
        f"order, got {type(values).__name__}."
    )


def _like(template: Any, values: Params, names: Sequence[str]) -> Any:
    """``values`` in the container kind of ``template`` (dict, list or tuple)."""
    if isinstance(template, Mapping):
        return values
    ordered = [values[n] for n in names]
    return tuple(ordered) if isinstance(template, tuple) else ordered


def mirror_init(mirror_map: MirrorMap, params: Tensors) -> Tensors:
    r"""The starting dual point :math:`z_0 = \nabla h(\phi_0)`, in the container of ``params``.

    :func:`mirroropt.init` for a hand-written loop: ``params`` may be a dict name → tensor, or a
    list/tuple of tensors matched by position to the map's names (a map built with
    :func:`named`); ``z0`` comes back as a dict, list or tuple accordingly.

    Raises:
        TypeError: if ``params`` is none of these, or the map has no ``to_dual``.
        ValueError: if ``params`` does not fit the map.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Identity
        >>> params = [torch.ones(2)]
        >>> mirror_init(Identity(named(params)), params)
        [tensor([1., 1.])]
    """
    F._check_map(mirror_map)
    phi = _as_dict(mirror_map, params, "params")
    return _like(params, F.init(mirror_map, phi), mirror_map.names)  # type: ignore[no-any-return]


def mirror_step(
    mirror_map: MirrorMap,
    z: Tensors,
    grads: Mapping[str, Tensor] | Sequence[Tensor],
    lr: LR,
    *,
    prepared: Callable[[Mapping[str, Tensor]], Params] | None = None,
) -> tuple[Tensors, Tensors]:
    r"""One mirror-descent step for a hand-written loop: returns :math:`(z_{k+1}, \phi_{k+1})`.

    .. math::

        z_{k+1} = z_k - \alpha\,\nabla L(\phi_k), \qquad \phi_{k+1} = g(z_{k+1}),

    computed by :func:`mirroropt.functional.step` and :func:`~mirroropt.functional.to_primal`. A
    number ``lr`` is applied as ``z - lr * g`` (a scalar operand, no device tensor): with the
    :class:`~mirroropt.maps.Identity` map this is bit for bit the update
    ``{k: p - lr * g for ...}`` of a hand-written MAML loop (and of ``higher``'s SGD), which
    rounds differently from the fused ``torch.add(z, g, alpha=-lr)`` that
    :func:`mirroropt.adapt` uses for a number ``lr`` (they agree to one rounding per step).

    Args:
        mirror_map: the inverse mirror map :math:`g`.
        z: the dual variable, a dict name → tensor (start with ``mirroropt.init(mirror_map, phi)``)
            or a list/tuple in the map's name order (start with :func:`mirror_init`).
        grads: :math:`\nabla_\phi L` at :math:`\phi_k = g(z_k)`: a dict with the same names, or
            a list/tuple in the map's name order (what ``torch.autograd.grad`` returns, or
            ``torch.func.grad`` of a function of a list).
        lr: step size :math:`\alpha > 0`: a number, a (learnable) tensor, or a mapping per name.
        prepared: ``mirror_map.prepared()``, made once per inner loop (inside the function a
            ``vmap`` runs, like the loop itself) and passed to each of its steps: the map's
            z-independent work (Kronecker's factor exponentials, with an ``eigh`` that
            synchronizes a GPU; a convex potential's folded weights) is then done once per inner
            loop instead of at every step. Make it again after the map's parameters change (a
            meta-step). Default: ``mirror_map.to_primal`` (that work at every step).

    Returns:
        ``(z_new, phi_new)``, in the container kind of ``z`` (two dicts, lists or tuples).

    Raises:
        ValueError: if ``lr`` is not positive or ``z``/``grads`` do not fit the map.
        TypeError: if ``mirror_map`` is not a :class:`~mirroropt.maps.MirrorMap`, ``z`` or
            ``grads`` is neither a dict nor a list/tuple of tensors, ``lr`` has an unsupported
            type, or ``prepared`` is not callable.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Diagonal
        >>> g = Diagonal({"w": torch.zeros(2)})
        >>> z, phi = mirror_step(g, {"w": torch.ones(2)}, {"w": torch.tensor([1.0, -1.0])}, 0.5)
        >>> phi["w"].tolist()
        [0.5, 1.5]
        >>> z, phi = mirror_step(g, [torch.ones(2)], (torch.tensor([1.0, -1.0]),), 0.5)
        >>> [p.tolist() for p in phi]
        [[0.5, 1.5]]

    References:
        Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017, arXiv:1703.03400.
        Zhang, Li & Giannakis, "Meta-learning with learned mirror descent (MetaMiDA)",
        arXiv:2509.02418.
    """
    F._check_map(mirror_map)
    _check_prepared(prepared)
    z_dict = _as_dict(mirror_map, z, "z")
    # z - lr * g as a hand-written loop rounds it (no device tensor for a number lr)
    grads_dict = _as_dict(mirror_map, grads, "grads")
    z_new = F._checked_step(mirror_map, z_dict, grads_dict, lr, fused=False)
    names = mirror_map.names
    to_primal = mirror_map.to_primal if prepared is None else prepared
    return _like(z, z_new, names), _like(z, to_primal(z_new), names)


def _check_prepared(prepared: object) -> None:
    if prepared is not None and not callable(prepared):
        raise TypeError(
            f"`prepared` must be the function mirror_map.prepared() returns, or None, got "
            f"{type(prepared).__name__}."
        )


def mirror_update(
    mirror_map: MirrorMap,
    params: Tensors,
    grads: Mapping[str, Tensor] | Sequence[Tensor],
    lr: LR,
    *,
    prepared: Callable[[Mapping[str, Tensor]], Params] | None = None,
) -> Tensors:
    r"""One mirror-descent step in primal form, :math:`\phi_{k+1} = g(\nabla h(\phi_k) - \alpha\nabla L(\phi_k))`.

    The one-line replacement for a hand-written ``[p - lr * g for ...]`` or
    ``{k: p - lr * g ...}`` update: no dual variable to carry, the containers stay as they are
    (dict, list or tuple, gradients matched by position). It recomputes
    :math:`z_k = \nabla h(\phi_k)` (``to_dual``) at every step, which is the dual point
    :func:`mirror_step` carries, because ``to_dual`` inverts ``to_primal``: the iterates and
    meta-gradients are those of :func:`mirror_step` up to rounding (tested to 1e-10 in float64),
    at the cost of one ``to_dual`` per step. A linear map (:class:`~mirroropt.maps.Diagonal`,
    :class:`~mirroropt.maps.Kronecker`) with a scalar step size per tensor needs none:
    :math:`g(\nabla h(\phi_k) - \alpha\nabla L) = \phi_k - \alpha\, g(\nabla L)`, one map
    application per step. With the :class:`~mirroropt.maps.Identity` map it is bit for bit
    ``p - lr * g``. For maps without ``to_dual`` use :func:`mirror_step` from a dual
    initialization.

    Args:
        mirror_map: the inverse mirror map :math:`g`; must have ``to_dual`` (``has_to_dual``).
        params: :math:`\phi_k`, a dict name → tensor or a list/tuple in the map's name order.
        grads: :math:`\nabla L(\phi_k)`, a dict or a list/tuple in the same order.
        lr: step size :math:`\alpha > 0`: a number, a (learnable) tensor, or a mapping per name.
        prepared: ``mirror_map.prepared()``, made once per inner loop, as for
            :func:`mirror_step` (``to_dual`` is not prepared: it runs in full at every step).

    Returns:
        :math:`\phi_{k+1}` in the container kind of ``params``.

    Raises:
        TypeError: if the map has no ``to_dual``, a container or ``lr`` has a wrong type, or
            ``prepared`` is not callable.
        ValueError: if ``lr`` is not positive or ``params``/``grads`` do not fit the map.

    Example:
        >>> import torch
        >>> from mirroropt.maps import Diagonal
        >>> params = [torch.ones(2)]
        >>> g = Diagonal(named(params))
        >>> [p.tolist() for p in mirror_update(g, params, [torch.tensor([1.0, -1.0])], 0.5)]
        [[0.5, 1.5]]

    References:
        Beck & Teboulle, "Mirror descent and nonlinear projected subgradient methods for convex
        optimization", Operations Research Letters, 2003.
    """
    F._check_map(mirror_map)
    _check_prepared(prepared)
    phi = _as_dict(mirror_map, params, "params")
    F._check_primal_start(mirror_map, phi)
    if F._steps_in_primal(mirror_map, lr):  # g(∇h(φ) − α∇L) = φ − α g(∇L)
        grads_dict = _as_dict(mirror_map, grads, "grads")
        mirror_map.check_fits(grads_dict, argument="grads")
        F._check_lr(lr, mirror_map.shapes)
        to_primal = mirror_map.to_primal if prepared is None else prepared
        stepped = F._step(mirror_map.names, phi, to_primal(grads_dict), lr, fused=False)
        return _like(params, stepped, mirror_map.names)  # type: ignore[no-any-return]
    _, updated = mirror_step(
        mirror_map, mirror_init(mirror_map, params), grads, lr, prepared=prepared
    )
    return updated


def make_loss_fn(
    model: nn.Module,
    criterion: Callable[[Any, Tensor], Tensor],
    inputs: Tensor | tuple[Any, ...],
    targets: Tensor,
) -> Callable[[Params], Tensor]:
    r"""The task loss :math:`L(\phi; \mathcal D) = \ell(f_\phi(x), y)` as a function of ``phi``.

    Returns ``lambda phi: criterion(torch.func.functional_call(model, phi, inputs), targets)``,
    the ``loss_fn`` that :func:`mirroropt.adapt` takes. ``phi`` may name a subset of the model's
    parameters; the others (and all buffers) are the module's own.

    Args:
        model: the task model :math:`f`.
        criterion: ``criterion(outputs, targets) -> scalar``, e.g. ``F.cross_entropy``.
        inputs: the model's positional input, or a tuple of them.
        targets: the targets passed to ``criterion``.

    The returned function refuses to run under a plain :func:`torch.func.vmap` when ``model``
    normalizes with batch statistics (training-mode BatchNorm, InstanceNorm; see
    :func:`mirroropt.uses_batch_statistics`): there ``vmap`` gives wrong second-order
    meta-gradients on torch 2.13 without an error. :func:`mirroropt.map_tasks` batches such
    models exactly (BatchNorm with its affine part split out, or a per-task loop).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``criterion`` is not callable.
        ValueError: (when called) under ``vmap`` with a model that uses batch statistics.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> loss_fn = make_loss_fn(model, torch.nn.functional.mse_loss, torch.ones(2, 1),
        ...                        torch.zeros(2, 1))
        >>> loss_fn({"weight": torch.full((1, 1), 3.0)})
        tensor(9.)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    if not callable(criterion):
        raise TypeError(f"`criterion` must be callable, got {type(criterion).__name__}.")
    args = inputs if isinstance(inputs, tuple) else (inputs,)

    def loss_fn(phi: Params) -> Tensor:
        if _under_vmap() and not batch_norm_is_exact_under_vmap():
            offending = uses_batch_statistics(model)
            if offending:
                raise ValueError(
                    f"`model` normalizes with batch statistics in {offending} and this loss runs "
                    f"under torch.func.vmap, which gives wrong second-order meta-gradients through "
                    f"such layers (torch 2.13). Batch tasks with mirroropt.map_tasks(fn, *tasks, "
                    f"model=model) (exact for such models), put BatchNorm in eval mode with "
                    f"running statistics, or use GroupNorm/LayerNorm."
                )
        return criterion(torch.func.functional_call(model, phi, args), targets)

    return loss_fn


def _under_vmap() -> bool:
    """Whether a ``torch.func.vmap`` transform is active (private functorch API, read-only)."""
    try:
        stack = torch._C._functorch.get_interpreter_stack()
    except AttributeError:  # pragma: no cover - an older/newer torch without it: no check
        return False
    vmap = torch._C._functorch.TransformType.Vmap
    return any(level.key() == vmap for level in stack or ())
