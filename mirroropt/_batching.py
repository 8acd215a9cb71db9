"""Batching over tasks: ``vmap`` where it is exact, a per-task loop where it is not."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as tnf
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._pytree import tree_map

from mirroropt._task_grads import collect_params, per_task_meta_gradients
from mirroropt._utils import NonFiniteError, is_transformed

__all__ = ["map_tasks", "uses_batch_statistics"]


def _batch_norm_affine_outside(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r""":func:`torch.nn.functional.batch_norm` with its affine part as separate ops.

    :math:`y = \gamma \odot \hat x + \beta`, :math:`\hat x` the fused normalization without
    weight and bias: the same value (to rounding), and on torch 2.13 the *outer* gradient of a
    vmapped inner loop through it is exact, where the fused op with an unbatched
    :math:`\gamma, \beta` gives wrong second-order meta-gradients (7.8e-3 relative on a
    float64 Conv4-BN with two inner steps; 1e-15 with the affine outside:
    ``python benchmarks/batchnorm_trap.py``).
    """
    y = tnf.batch_norm(input, running_mean, running_var, None, None, training, momentum, eps)
    shape = (-1, *([1] * (input.dim() - 2)))
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


class _AffineOutsideBatchNorm(TorchFunctionMode):
    """While active, every ``F.batch_norm`` / ``torch.batch_norm`` call runs as
    :func:`_batch_norm_affine_outside` (the same value; exact gradients under ``vmap``)."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is tnf.batch_norm:
            return _batch_norm_affine_outside(*args, **(kwargs or {}))
        if func is torch.batch_norm:  # (input, weight, bias, mean, var, training, momentum, eps, _)
            x, w, b, mean, var, training, momentum, eps = args[:8]
            return _batch_norm_affine_outside(x, mean, var, w, b, training, momentum, eps)
        return func(*args, **(kwargs or {}))


class _FirstOrderOnly(torch.autograd.Function):
    """Identity whose backward refuses to be differentiated (``create_graph=True``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "map_tasks vmapped a BatchNorm model (batch statistics): its meta-gradient is "
                "exact, but a gradient of that meta-gradient (create_graph=True, third-order "
                "derivatives through vmapped batch statistics) is wrong on torch 2.13 and is "
                "refused; use strategy='loop' for it."
            )
        return grad


def _first_order_only(out: Any) -> Any:
    """``out`` with every tensor that requires grad behind :class:`_FirstOrderOnly`."""
    return tree_map(
        lambda t: _FirstOrderOnly.apply(t) if isinstance(t, Tensor) and t.requires_grad else t, out
    )


def batch_norm_is_exact_under_vmap() -> bool:
    """Whether :func:`map_tasks` is vmapping with BatchNorm's affine part split out (so a check
    that refuses ``vmap`` over batch statistics, as ``make_loss_fn``'s, may let it run)."""
    return any(isinstance(m, _AffineOutsideBatchNorm) for m in _get_current_function_mode_stack())


def _loop_only(model: nn.Module) -> list[str]:
    """Batch-statistics layers ``vmap`` cannot run exactly: InstanceNorm, and BatchNorm that
    updates running statistics in training mode (a per-task buffer mutation)."""
    return [
        name
        for name, m in model.named_modules()
        if (isinstance(m, _InstanceNorm) and (m.training or not m.track_running_stats))
        or (isinstance(m, _BatchNorm) and m.training and m.track_running_stats)
    ]


def uses_batch_statistics(model: nn.Module) -> list[str]:
    """Names of the submodules that normalize with statistics of the current batch.

    These are BatchNorm layers in training mode (or with ``track_running_stats=False``) and
    InstanceNorm layers that do not use running statistics. On torch 2.13, second-order gradients
    through a plain ``torch.func.vmap`` of such layers are wrong (measured: relative errors far
    above 1e-9 on a Conv4; GroupNorm, LayerNorm and eval-mode BatchNorm are exact);
    :func:`map_tasks` batches BatchNorm exactly (its affine part split out) and loops over the
    others.

    Example:
        >>> from torch import nn
        >>> uses_batch_statistics(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
        ['1']
    """
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (_BatchNorm, _InstanceNorm)) and (
            module.training or not module.track_running_stats
        ):
            found.append(name)
    return found


def map_tasks(
    fn: Callable[..., Any],
    *tasks: Tensor,
    model: nn.Module | None,
    strategy: Literal["auto", "vmap", "loop"] = "auto",
    params: Any = None,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> Any:
    r"""Apply ``fn`` to each task (slice ``i`` of every tensor in ``tasks``) and stack the results.

    ``"vmap"`` runs :func:`torch.func.vmap` over the leading (task) dimension; ``"loop"`` calls
    ``fn`` once per task and stacks; ``"auto"`` uses ``vmap`` wherever it is exact. They give the
    same values and meta-gradients (tested to 1e-9 in float64 for every map; one limit below).

    **BatchNorm.** On torch 2.13 the outer gradient of a vmapped inner loop through the fused
    ``batch_norm`` with an unbatched weight and bias is wrong (the BatchNorm trap, 1e-3..1e-2
    relative; see :func:`uses_batch_statistics`), while the fused normalization *without* its
    affine part is exact. Under ``vmap`` this function therefore runs every batch-statistics
    ``F.batch_norm`` as :math:`\gamma \odot \mathrm{BN}(x) + \beta` (the same value, one
    fused normalization plus a multiply and an add), so BatchNorm models without running-statistic
    updates (``track_running_stats=False``, as :class:`mirroropt.models.Conv4` builds them) are
    vmapped exactly (second-order meta-gradients included). A gradient *of* that meta-gradient
    (``create_graph=True`` on the meta-loss, third-order derivatives) is wrong through vmapped
    batch statistics on torch 2.13 and is refused with an error; ``"loop"`` supports it.
    InstanceNorm, and BatchNorm that updates running statistics in training mode, are looped by
    ``"auto"`` and refused by ``"vmap"``.

    **Per-task meta-gradients** (``params``: every tensor or module the meta-gradient is wanted
    for: the backbone, the map, a learned ``z0`` or ``lr``). The per-task meta-gradients
    :math:`G_i = \nabla_\theta \ell_i` are computed *in the forward* (``vmap(grad(task))`` in
    chunks of ``chunk_size``, or with ``strategy="loop"`` an eager ``torch.autograd.grad`` of one
    task at a time) and handed back by an autograd Function, so
    ``map_tasks(...).mean().backward()`` fills ``.grad`` as the loop would, for any model. Each
    chunk's graph is freed before the next chunk runs, where the default keeps every task's
    graph until the backward: with ``strategy="loop"`` this is the **memory-saving mode**, whose
    peak is one task's, like a per-task ``backward()`` (vmapped chunks of one hold about twice
    that: ``torch.func.grad`` keeps its backward's graph; ``benchmarks/memory.py``,
    ``docs/performance.md``).
    ``fn`` must then return a scalar loss, or ``(loss, aux)`` with ``aux`` returned detached, and
    the result supports one backward (no ``create_graph=True``). Slower than the default
    (``docs/performance.md``); BatchNorm that updates running statistics is refused.

    Args:
        fn: per-task function ``fn(*task_slices) -> tensor | tuple | list | dict of tensors``,
            e.g. adapt on the support set and return the query loss.
        tasks: tensors with a leading task dimension of equal size B.
        model: the model ``fn`` runs (checked for batch-statistics layers); pass ``None`` only if
            ``fn`` uses no such layer.
        strategy: ``"auto"``, ``"vmap"`` or ``"loop"``.
        params: tensors/modules to differentiate the per-task outputs with respect to (a tensor,
            module, or a mapping/iterable of them); selects the per-task meta-gradients above.
        chunk_size: tasks per ``vmap`` call (bounds memory); ``None`` maps all tasks at once.
        check_finite: raise :class:`~mirroropt.NonFiniteError` if an output of a task is not
            finite (every path: under ``vmap`` the inner checks of :func:`mirroropt.adapt` cannot
            run, so the stacked outputs are checked once the transform returns, and the first
            offending task is re-run eagerly to name the inner step where it went wrong).
            Skipped when ``map_tasks`` itself runs under an outer ``torch.func`` transform.

    Returns:
        ``fn``'s outputs stacked along a new leading dimension of size B (same structure).

    Raises:
        ValueError: on an unknown ``strategy``, no tasks, unequal leading sizes,
            ``strategy="vmap"`` with InstanceNorm or running-statistic BatchNorm (no ``params``), a
            non-positive ``chunk_size``, or with ``params``: running-statistic BatchNorm in
            training mode, or ``fn`` depending on a tensor that requires grad but is not named in
            ``params``.
        RuntimeError: on a gradient of the meta-gradient (``create_graph=True``) of a result
            vmapped over batch statistics (with or without ``params``).
        NonFiniteError: (a ``ValueError``) with ``check_finite``, naming the task and, where the
            inner loop reports it, the step and tensors that are not finite.

    Example:
        >>> import torch
        >>> map_tasks(lambda x: x.sum(), torch.ones(3, 2), model=None)
        tensor([2., 2., 2.])
    """
    if strategy not in ("auto", "vmap", "loop"):
        raise ValueError(f"`strategy` must be 'auto', 'vmap' or 'loop', got {strategy!r}.")
    if not tasks:
        raise ValueError("`tasks` must contain at least one tensor with a leading task dimension.")
    sizes = [t.shape[0] if isinstance(t, Tensor) and t.dim() > 0 else None for t in tasks]
    if None in sizes or len(set(sizes)) != 1:
        raise ValueError(
            f"Every tensor in `tasks` must have the same leading (task) dimension; got sizes "
            f"{sizes}."
        )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
    offending = uses_batch_statistics(model) if model is not None else []
    meta = collect_params(params) if params is not None else None
    if meta is not None:
        tracking = [
            name
            for name, m in (model.named_modules() if model is not None else ())
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
        ]
        if tracking:
            raise ValueError(
                f"`model` has BatchNorm layers {tracking} that update running statistics in "
                f"training mode; the per-task meta-gradients of `params` cannot mutate buffers "
                f"inside torch.func. Build them with track_running_stats=False (as "
                f"mirroropt.models.Conv4 does), or drop `params` to use the per-task loop."
            )
        out = per_task_meta_gradients(
            fn, tasks, meta, chunk_size=chunk_size, loop=strategy == "loop"
        )
        return _checked(out, fn, tasks, check_finite, rerun=True)
    loop_only = _loop_only(model) if offending and model is not None else []
    if strategy == "vmap" and loop_only:
        raise ValueError(
            f"`model` normalizes with batch statistics in {loop_only} (InstanceNorm, or BatchNorm "
            f"updating running statistics in training mode), which torch.func.vmap cannot batch "
            f"exactly. Use strategy='loop' (or 'auto'), build BatchNorm with "
            f"track_running_stats=False (as mirroropt.models.Conv4 does), put it in eval mode, "
            f"or use GroupNorm/LayerNorm."
        )
    if strategy == "vmap" or (strategy == "auto" and not loop_only):
        vmapped = torch.func.vmap(fn, chunk_size=chunk_size)
        if offending:  # BatchNorm with batch statistics: exact with its affine part split out
            with _AffineOutsideBatchNorm():
                out = _first_order_only(vmapped(*tasks))
        else:
            out = vmapped(*tasks)
        return _checked(out, fn, tasks, check_finite, rerun=True)
    outputs = [_task(fn, tasks, i) for i in range(int(sizes[0]))]  # type: ignore[arg-type]
    return _checked(_stack(outputs), fn, tasks, check_finite, rerun=False)


def _task(fn: Callable[..., Any], tasks: Sequence[Tensor], i: int) -> Any:
    """``fn`` on task ``i``; an inner non-finite error is re-raised naming the task."""
    try:
        return fn(*(t[i] for t in tasks))
    except NonFiniteError as error:
        raise NonFiniteError(f"Task {i} of {tasks[0].shape[0]}: {error}") from error


def _checked(
    out: Any, fn: Callable[..., Any], tasks: Sequence[Tensor], check: bool, *, rerun: bool
) -> Any:
    """The check a transform disables, run after it returns: every task's outputs are finite.

    On failure the first offending task is re-run eagerly (``rerun``, the ``vmap`` path), where
    :func:`mirroropt.adapt`'s own checks name the inner step; otherwise the outputs are named.
    """
    leaves = [t for t in _leaves(out) if t.is_floating_point() or t.is_complex()]
    if not check or not leaves or is_transformed(leaves):
        return out
    n = tasks[0].shape[0]
    with torch.no_grad():
        ok = torch.stack([torch.isfinite(t.reshape(n, -1)).all(dim=1) for t in leaves]).all(0)
    bad = [i for i, good in enumerate(ok.tolist()) if not good]
    if not bad:
        return out
    if rerun:
        _task(fn, tasks, bad[0])  # raises with the inner step where the check can see it
    raise NonFiniteError(
        f"`fn` returned a non-finite value for task(s) {bad} of {n} (the inner gradients were "
        f"finite where checked): check the query data, the loss and `lr`, or pass "
        f"check_finite=False to let it through."
    )


def _leaves(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [leaf for o in out for leaf in _leaves(o)]
    if isinstance(out, dict):
        return [leaf for o in out.values() for leaf in _leaves(o)]
    return []


def _stack(outputs: Sequence[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.stack(list(outputs))
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([o[i] for o in outputs]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outputs]) for k in first}
    raise TypeError(
        f"`fn` must return a tensor or a tuple/list/dict of tensors, got {type(first).__name__}."
    )
