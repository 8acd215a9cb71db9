r"""Exact per-task meta-gradients (inside ``vmap``, or one task at a time), handed back to
``loss.backward()``.

On torch 2.13 the *outer* gradient of a vmapped inner loop through batch-statistics layers is
wrong (``grad(vmap(task))``: 5.8e-3 relative error on a float64 Conv4-BN with two inner steps),
while per-task meta-gradients computed *inside* ``vmap`` are exact (``vmap(grad(task))``:
1.4e-15). :func:`vmapped_meta_gradients` therefore computes, for every task :math:`i`,

.. math::

    \ell_i = f(\theta; \mathcal T_i), \qquad G_i = \nabla_\theta \ell_i

with ``torch.func.vmap(torch.func.grad_and_value(f))`` over tasks (in chunks of ``chunk_size``),
and returns :math:`(\ell_1, \dots, \ell_B)` as a tensor whose ``grad_fn`` is an autograd Function
with backward :math:`\bar\theta = \sum_i \bar\ell_i G_i`. A user's
``map_tasks(...).mean().backward()`` thus fills ``.grad`` of every tensor in ``params`` exactly as
the per-task loop would.

With ``loop=True`` (``map_tasks(..., strategy="loop")``) each task's :math:`G_i` comes from an
eager ``torch.autograd.grad`` instead, one task at a time: its graph is freed before the next
task runs, so the peak memory is one task's (the memory-saving mode; ``benchmarks/memory.py``).

``fn`` closes over the meta-parameters, as in the per-task loop; a
:class:`torch.overrides.TorchFunctionMode` substitutes each tensor named in ``params`` by its
differentiable stand-in whenever a torch function receives it (model weights read through
``functional_call``, a map's parameters, a learned ``z0`` or ``lr``). Only first-order use of the
meta-loss is possible: its backward is not differentiable (no ``create_graph=True``), which is
refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

__all__ = ["collect_params", "per_task_meta_gradients"]


def collect_params(params: Any) -> list[Tensor]:
    """The distinct tensors named by ``params``, in order of first appearance.

    ``params`` is a tensor, an ``nn.Module`` (all its parameters), a mapping whose values are
    any of these, or an iterable of any of these (e.g. ``[model, mirror_map, z0, lr]``).

    Raises:
        TypeError: on anything else.
        ValueError: if no tensor that requires grad is named.
    """
    found: dict[int, Tensor] = {}

    def visit(item: Any, where: str) -> None:
        if isinstance(item, Tensor):
            found.setdefault(id(item), item)
        elif isinstance(item, nn.Module):
            for p in item.parameters():
                found.setdefault(id(p), p)
        elif isinstance(item, Mapping):
            for k, v in item.items():
                visit(v, f"{where}[{k!r}]")
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
            for i, v in enumerate(item):
                visit(v, f"{where}[{i}]")
        else:
            raise TypeError(
                f"`{where}` must be a tensor, an nn.Module, or a mapping/iterable of them, got "
                f"{type(item).__name__}."
            )

    visit(params, "params")
    tensors = [t for t in found.values() if t.requires_grad]
    if not tensors:
        raise ValueError(
            "`params` must name at least one tensor that requires grad (the backbone, the map, a "
            "learned z0 or lr), got none."
        )
    return tensors


class _Substitute(TorchFunctionMode):
    """Replace each meta-parameter by its stand-in whenever a torch function receives it."""

    def __init__(self, originals: list[Tensor], stand_ins: tuple[Tensor, ...]) -> None:
        super().__init__()
        self.table = {id(o): s for o, s in zip(originals, stand_ins)}

    def _swap(self, a: Any) -> Any:
        # torch functions take tensors, or flat lists/tuples of them (cat, stack, _foreach_*)
        if isinstance(a, Tensor):
            return self.table.get(id(a), a)
        if isinstance(a, (list, tuple)) and any(id(t) in self.table for t in a):
            return type(a)(self.table.get(id(t), t) for t in a)
        return a

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is Tensor.requires_grad_ and args and _wraps_original(args[0], self.table):
            raise ValueError(
                "`fn` passes a tensor named in `params` directly into a torch.func transform "
                "(grad/vjp/jacrev); its meta-gradient cannot be traced through that input. Pass a "
                "value computed from it instead (mirroropt.adapt does), or drop `params` to use "
                "the exact per-task loop."
            )
        args = tuple(self._swap(a) for a in args)
        if kwargs:
            kwargs = {k: self._swap(v) for k, v in kwargs.items()}
        return func(*args, **(kwargs or {}))


def _wraps_original(t: Any, table: dict[int, Tensor]) -> bool:
    """True when ``t`` is a functorch wrapper (at any depth) around a tensor in ``table``."""
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    while isinstance(t, Tensor) and is_wrapped(t):
        t = torch._C._functorch.get_unwrapped(t)
        if id(t) in table:
            return True
    return False


class _PrecomputedBackward(torch.autograd.Function):
    """Identity on the task values; backward returns ``Σ_i ḡ_i G_i`` for each meta-parameter."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, values: Tensor, per_task_grads: tuple[Tensor, ...], *params: Tensor
    ) -> Tensor:
        ctx.per_task_grads = per_task_grads
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "map_tasks(..., params=...) computes first-order meta-gradients per task and "
                "cannot be differentiated again (create_graph=True or higher-order gradients of "
                "the meta-loss); drop `params` to use the per-task loop, which supports them."
            )
        grads = tuple(
            torch.tensordot(grad_values.to(g.dtype), g, dims=1) for g in ctx.per_task_grads
        )
        return (None, None, *grads)


def per_task_meta_gradients(
    fn: Callable[..., Any],
    tasks: tuple[Tensor, ...],
    params: list[Tensor],
    *,
    chunk_size: int | None,
    loop: bool = False,
) -> Any:
    """Per-task values of ``fn`` attached to ``params`` by exact per-task meta-gradients.

    ``fn(*task_slices)`` returns a scalar tensor, or a tuple ``(scalar, aux)`` whose ``aux`` (any
    structure of tensors) is returned stacked and detached. The scalar values come back as a
    ``[B]`` tensor whose backward gives, for each tensor in ``params``, ``Σ_i ḡ_i ∇ℓ_i``.

    The per-task gradients come from ``vmap(grad_and_value(task))`` in chunks of ``chunk_size``
    or, with ``loop``, from an eager ``torch.autograd.grad`` of each task's loss in turn (no
    transform; the saved tensors are freed as that backward runs). Either way a chunk's (a task's)
    graph is freed before the next one runs, so the peak memory is that of one chunk (one task)
    plus the B per-task meta-gradients.

    Raises:
        ValueError: if ``fn`` returns no scalar loss, or its values depend on a tensor that
            requires grad but is not named in ``params``.
        RuntimeError: (on backward) if a higher-order gradient of the result is requested.
    """
    if loop:
        return _attach(*_looped(fn, tasks, params), params)
    stand_ins = tuple(p.detach() for p in params)

    def per_task(meta: tuple[Tensor, ...], *slices: Tensor) -> tuple[Tensor, Any]:
        with _Substitute(params, meta):
            loss, aux = _loss_and_aux(fn(*slices))
        return loss, (loss, aux)

    grad_and_value = torch.func.grad_and_value(per_task, has_aux=True)
    in_dims = (None, *([0] * len(tasks)))
    grads, (_, (values, aux)) = torch.func.vmap(
        grad_and_value, in_dims=in_dims, chunk_size=chunk_size
    )(stand_ins, *tasks)
    if values.requires_grad:
        raise ValueError(_UNNAMED)
    return _attach(values, tuple(grads), aux, params)


_UNNAMED = (
    "`fn` depends on a tensor that requires grad but is not named in `params`; its "
    "meta-gradient would be lost (the per-task meta-gradients are computed for the named "
    "tensors only). Name every such tensor (or module) in `params`, or detach it."
)


def _loss_and_aux(out: Any) -> tuple[Tensor, Any]:
    """``fn``'s output as ``(scalar loss, aux)``."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor):
        loss, aux = out
    elif isinstance(out, Tensor):
        loss, aux = out, ()
    else:
        raise ValueError(
            "With `params`, `fn` must return a scalar loss tensor or a pair (loss, aux), got "
            f"{type(out).__name__}."
        )
    if loss.dim() != 0:
        raise ValueError(
            f"With `params`, `fn` must return a scalar loss per task, got shape "
            f"{tuple(loss.shape)}."
        )
    return loss, aux


def _looped(
    fn: Callable[..., Any], tasks: tuple[Tensor, ...], params: list[Tensor]
) -> tuple[Tensor, tuple[Tensor, ...], Any]:
    """Values, stacked per-task meta-gradients and aux of ``fn``: one eager backward per task."""
    named = {id(p) for p in params}
    values, per_task, auxes = [], [], []
    for i in range(tasks[0].shape[0]):
        loss, aux = _loss_and_aux(fn(*(t[i] for t in tasks)))
        found: tuple[Tensor | None, ...] = (None,) * len(params)
        if loss.requires_grad:
            if any(id(leaf) not in named for leaf in _graph_leaves(loss)):
                raise ValueError(_UNNAMED)
            found = torch.autograd.grad(loss, params, allow_unused=True)
        per_task.append(
            tuple(torch.zeros_like(p) if g is None else g for g, p in zip(found, params))
        )
        values.append(loss.detach())
        auxes.append(tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, aux))
        del loss, aux  # nothing of this task's graph outlives its backward
    grads = tuple(torch.stack(gs) for gs in zip(*per_task))
    return torch.stack(values), grads, tree_map(lambda *xs: torch.stack(xs), *auxes)


def _graph_leaves(t: Tensor) -> list[Tensor]:
    """The leaf tensors (``AccumulateGrad`` nodes) that ``t``'s autograd graph reaches."""
    seen: set[Any] = set()
    stack, leaves = [t.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack.extend(child for child, _ in node.next_functions)
    return leaves


def _attach(values: Tensor, grads: tuple[Tensor, ...], aux: Any, params: list[Tensor]) -> Any:
    """``values`` whose backward is ``Σ_i ḡ_i G_i`` (and ``aux`` detached, if ``fn`` had any)."""
    attached = _PrecomputedBackward.apply(values, grads, *params)
    if isinstance(aux, tuple) and not aux:
        return attached
    return attached, tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, aux)
