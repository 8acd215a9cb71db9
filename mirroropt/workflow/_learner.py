"""The meta-learner (backbone + map + optional dual initialization) and its meta-objectives."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mirroropt._batching import map_tasks
from mirroropt._types import Params
from mirroropt._utils import key_of
from mirroropt.functional import adapt, adapt_trajectory
from mirroropt.maps import MAPS, MirrorMap
from mirroropt.workflow._tasks import BENCHMARKS, Benchmark, TaskBatch
from mirroropt.workflow.objectives import check_metamd_supported, metamd_bound

__all__ = ["MetaLearner", "TrainConfig", "build_learner", "meta_loss"]

OBJECTIVES = ("query", "metamd")
STARTS = ("learned", "anchored")


class _Anchored(MirrorMap):
    r"""The map's geometry, started at :math:`z = 0` from :math:`\phi_0`:
    :math:`\tilde g(z) = \phi_0 + g(z) - g(0)`.

    :math:`\tilde g = \nabla\tilde h^*` with :math:`\tilde h^*(z) = h^*(z) + \langle\phi_0 - g(0),
    z\rangle` — the same Hessian (so the same geometry, monotonicity and Lipschitz constants) —
    and :math:`\tilde g(0) = \phi_0`, so mirror descent from :math:`z_0 = 0` starts at the
    backbone's :math:`\phi_0` without a closed-form :math:`\nabla h`. Built once per
    meta-iteration (``g(0)`` is z-independent work); differentiable w.r.t. φ₀ and the map.
    """

    has_to_dual: ClassVar[bool] = False
    is_gradient_field: ClassVar[bool] = True

    def __init__(self, inner: MirrorMap, phi0: Params) -> None:
        super().__init__(inner.shapes)
        self.inner = inner
        self.phi0 = dict(phi0)
        zeros = {n: torch.zeros_like(t) for n, t in self.phi0.items()}
        g0 = inner.to_primal(zeros)
        self.offset = {n: self.phi0[n] - g0[n] for n in self.names}

    def to_primal(self, z: Mapping[str, Tensor]) -> Params:
        g = self.inner.to_primal(z)
        return {n: g[n] + self.offset[n] for n in self.names}


@dataclass
class TrainConfig:
    r"""Everything that defines a meta-training run (the CLI's ``train`` options).

    Attributes:
        benchmark: a name in :data:`mirroropt.workflow.BENCHMARKS`.
        map: a name in :data:`mirroropt.maps.MAPS`.
        n_way, k_shot, q_query: episode shape (``k_shot``/``q_query`` are the support/query
            points per task for sinusoid).
        augment: the harder augmented variant (affine jitter, stroke width) for meta-training.
        augment_eval: also augment evaluation tasks.
        width, norm: Conv4 width and normalization (``"batch"`` or ``"group"``).
        data_root: folder of Omniglot/miniImageNet (unused otherwise).
        steps: inner steps K; lr: inner step size α.
        meta_batch: tasks per meta-iteration; iterations: meta-iterations.
        meta_optimizer: ``"adam"`` or ``"sgd"`` (SGD with Nesterov momentum ``momentum``).
        meta_lr: meta step size β (the cap β_max with ``meta_step="adaptive"``).
        meta_step: ``"fixed"`` or ``"adaptive"`` (MetaMiDA Remark 3, see
            :class:`mirroropt.workflow.AdaptiveMetaStep`).
        adaptive_scale: c in β_t = min(β_max, c / L̂_t).
        first_order: first-order meta-gradients (inner gradients treated as constants).
        objective: ``"query"`` (MAML / MetaMiDA) or ``"metamd"`` (regret bound, no query data).
        seed: seeds the model/map initialization and every task batch.
        checkpoint_every: iterations between checkpoints (0: only at the end).
        map_kwargs: keyword arguments for the map's constructor (e.g. ``{"monotone": True}``
            for :class:`~mirroropt.maps.BlockIAF`); JSON values.
        map_meta_lr: the meta step size of the map's parameters (their own param group);
            ``None``: ``meta_lr``. Adam moves a parameter by about its step size per iteration
            whatever its scale, so a map parameterized in log-space (``Diagonal``'s
            ρ = log d) needs its own value to move at all within a budget.
        init_from: a checkpoint whose initialization φ₀ this run starts from (e.g.
            a MAML run for MetaMD); ``""``: the seeded initialization.
        fontglot: a FontGlot-format ``.npz`` (manifest beside it, checksum verified) instead of
            the shipped one; ``""``: the shipped file.
        val_every: meta-validate every this many iterations (0: never) on ``val_tasks`` tasks of
            the meta-validation split at k = K, keeping the best checkpoint (``best.pt``).
        val_tasks: meta-validation tasks (the same tasks at every evaluation and for every run).
        start: for maps without ``to_dual`` (the convex potential): ``"learned"`` — MetaMiDA's
            meta-learned dual initialization z₀ (the backbone's own parameters unused), or
            ``"anchored"`` — the backbone's φ₀ with the map's geometry centred on it,
            :math:`\tilde g(z) = \phi_0 + g(z) - g(0)` from z₀ = 0 (see :class:`MetaLearner`).
            Ignored for maps with ``to_dual``.
        world_size: processes each meta-batch is sharded over (``torchrun --nproc_per_node``;
            the CLI sets it from torchrun's ``WORLD_SIZE``). :func:`~mirroropt.workflow.train`
            checks that it equals the default process group's size; a run resumes only with
            the world size it was trained with (see ``docs/distributed.md``).
    """

    benchmark: str = "fontglot"
    map: str = "identity"
    n_way: int = 5
    k_shot: int = 1
    q_query: int = 5
    augment: bool = False
    augment_eval: bool = False
    width: int = 32
    norm: Literal["batch", "group"] = "batch"
    data_root: str = ""
    steps: int = 5
    lr: float = 0.01
    meta_batch: int = 4
    iterations: int = 300
    meta_optimizer: Literal["adam", "sgd"] = "adam"
    meta_lr: float = 1e-3
    momentum: float = 0.9
    meta_step: Literal["fixed", "adaptive"] = "fixed"
    adaptive_scale: float = 1.0
    first_order: bool = False
    objective: Literal["query", "metamd"] = "query"
    seed: int = 0
    checkpoint_every: int = 0
    map_kwargs: dict[str, Any] = field(default_factory=dict)
    map_meta_lr: float | None = None
    init_from: str = ""
    fontglot: str = ""
    val_every: int = 0
    val_tasks: int = 100
    start: Literal["learned", "anchored"] = "learned"
    world_size: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        if self.benchmark not in BENCHMARKS:
            raise ValueError(
                f"`benchmark` must be one of {sorted(BENCHMARKS)}, got {self.benchmark!r}."
            )
        if self.map not in MAPS:
            raise ValueError(f"`map` must be one of {sorted(MAPS)}, got {self.map!r}.")
        for name in ("n_way", "k_shot", "q_query", "width", "meta_batch", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        ws = self.world_size
        if isinstance(ws, bool) or not isinstance(ws, int) or ws < 1:
            raise ValueError(f"`world_size` must be a positive int, got {ws!r}.")
        if self.meta_batch < self.world_size:
            raise ValueError(
                f"`meta_batch` ({self.meta_batch}) must be at least `world_size` "
                f"({self.world_size}): every rank needs a task of each meta-batch."
            )
        for name in ("steps", "seed", "checkpoint_every", "val_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}.")
        for name in ("lr", "meta_lr", "adaptive_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
                raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
        if (
            isinstance(self.val_tasks, bool)
            or not isinstance(self.val_tasks, int)
            or (self.val_tasks < 2)
        ):
            raise ValueError(f"`val_tasks` must be an int ≥ 2, got {self.val_tasks!r}.")
        if self.map_meta_lr is not None and not (
            isinstance(self.map_meta_lr, (int, float))
            and not isinstance(self.map_meta_lr, bool)
            and 0 < self.map_meta_lr < math.inf
        ):
            raise ValueError(
                f"`map_meta_lr` must be None or a positive finite number, got {self.map_meta_lr!r}."
            )
        if not isinstance(self.map_kwargs, dict) or not all(
            isinstance(k, str) for k in self.map_kwargs
        ):
            raise ValueError(f"`map_kwargs` must be a dict with str keys, got {self.map_kwargs!r}.")
        for name in ("init_from", "fontglot"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be a path string, got {getattr(self, name)!r}.")
        if self.fontglot and self.benchmark != "fontglot":
            raise ValueError(
                f"`fontglot` is a FontGlot file; it needs benchmark='fontglot', got "
                f"{self.benchmark!r}."
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"`momentum` must lie in [0, 1), got {self.momentum!r}.")
        if self.meta_optimizer not in ("adam", "sgd"):
            raise ValueError(
                f"`meta_optimizer` must be 'adam' or 'sgd', got {self.meta_optimizer!r}."
            )
        if self.meta_step not in ("fixed", "adaptive"):
            raise ValueError(f"`meta_step` must be 'fixed' or 'adaptive', got {self.meta_step!r}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.objective == "metamd" and self.steps < 1:
            raise ValueError(
                "`steps` must be ≥ 1 with objective='metamd' (the bound needs a step)."
            )
        if self.start not in STARTS:
            raise ValueError(f"`start` must be one of {STARTS}, got {self.start!r}.")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"`norm` must be 'batch' or 'group', got {self.norm!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields {unknown}.")
        return cls(**data)


class MetaLearner(nn.Module):
    r"""What meta-training learns: a backbone's initialization, a mirror map, optionally :math:`z_0`.

    Maps with ``to_dual`` start each task at :math:`z_0 = \nabla h(\phi_0)` with :math:`\phi_0`
    the backbone's (meta-learned) parameters. Maps without it (the convex-potential map) start at
    a meta-learned dual initialization ``z0``, an ``nn.ParameterDict`` initialized to the
    backbone's initial parameters (at the map's identity initialization :math:`g(z_0) = \phi_0`);
    the backbone's own parameters are then unused (``start="learned"``, MetaMiDA's form).

    ``start="anchored"`` (ours) keeps the backbone's φ₀ as the meta-learned initialization and
    centres the map on it: the inner loop runs :math:`\tilde g(z) = \phi_0 + g(z) - g(0)` from
    :math:`z_0 = 0` (:meth:`inner_map`), a map with the same Hessian :math:`\nabla^2 h^*`. This
    separates what the two forms entangle: with a learned :math:`z_0`, a map parameter that sets
    the curvature (the convex potential's :math:`\mu_t` in :math:`\phi = \mu_t z + \dots`) also
    rescales the initialization :math:`\phi_0 = g(z_0)`, and at initialization its meta-gradient is
    dominated by that rescaling (measured on FontGlot, Conv4 GroupNorm: e.g. opposite sign to the
    step-size gradient of ``Diagonal(per="tensor")`` on a bias, and 20× larger on the head bias).
    Anchored, the convex potential at its identity initialization is exactly
    ``Diagonal(per="tensor")`` with :math:`d_t = \mu_t` (tested).

    Args:
        model: the backbone.
        mirror_map: the inverse mirror map, built for ``model``'s parameters.
        start: ``"learned"`` or ``"anchored"`` (maps without ``to_dual`` only).
    """

    def __init__(
        self,
        model: nn.Module,
        mirror_map: MirrorMap,
        *,
        start: Literal["learned", "anchored"] = "learned",
    ) -> None:
        super().__init__()
        if start not in STARTS:
            raise ValueError(f"`start` must be one of {STARTS}, got {start!r}.")
        if not isinstance(mirror_map, MirrorMap):
            raise TypeError(
                f"`mirror_map` must be a mirroropt.maps.MirrorMap, got {type(mirror_map).__name__}."
            )
        self.model = model
        self.mirror_map = mirror_map
        self.names = tuple(n for n, _ in model.named_parameters())
        mirror_map.check_fits(dict(model.named_parameters()), argument="model parameters")
        self.z0: nn.ParameterDict | None = None
        self.anchored = start == "anchored" and not mirror_map.has_to_dual
        if not mirror_map.has_to_dual and not self.anchored:
            self.z0 = nn.ParameterDict(
                {key_of(n): nn.Parameter(p.detach().clone()) for n, p in model.named_parameters()}
            )

    def start(self) -> tuple[Params | None, Params | None]:
        """``(φ₀, None)`` or ``(None, z₀)``: the ``phi`` and ``z`` of :func:`mirroropt.adapt`
        with :meth:`inner_map` (``z₀ = 0`` for an anchored start)."""
        if self.anchored:
            return None, {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}
        if self.z0 is None:
            return dict(self.model.named_parameters()), None
        return None, {n: self.z0[key_of(n)] for n in self.names}

    def inner_map(self) -> MirrorMap:
        r"""The map the inner loop runs: the learned map, or (anchored start) the learned map
        centred on the backbone's φ₀, :math:`\tilde g(z) = \phi_0 + g(z) - g(0)`. Build it once
        per meta-iteration: it holds φ₀ and :math:`g(0)`."""
        if not self.anchored:
            return self.mirror_map
        return _Anchored(self.mirror_map, dict(self.model.named_parameters()))

    def init_parameters(self) -> list[nn.Parameter]:
        """The initialization's parameters: the backbone's φ₀, or the dual initialization z₀."""
        return list(self.model.parameters() if self.z0 is None else self.z0.parameters())

    def meta_parameters(self) -> list[nn.Parameter]:
        """The parameters meta-training updates (backbone or z₀, and the map)."""
        return [*self.init_parameters(), *self.mirror_map.parameters()]

    def param_groups(
        self, *, meta_lr: float, map_meta_lr: float | None = None, train_init: bool = True
    ) -> list[dict[str, Any]]:
        """Param groups for a meta-optimizer: ``"init"`` (φ₀ or z₀) at ``meta_lr`` and ``"map"``
        at ``map_meta_lr`` (default ``meta_lr``); ``train_init=False`` leaves φ₀ out (MetaMD).

        Each group records its name and ``lr_ratio`` (its step over ``meta_lr``), so a scheduler
        that sets one meta step (:class:`mirroropt.workflow.AdaptiveMetaStep`) keeps the ratio.
        """
        map_lr = meta_lr if map_meta_lr is None else map_meta_lr
        groups = []
        if train_init:
            groups.append(
                {"params": self.init_parameters(), "lr": meta_lr, "name": "init", "lr_ratio": 1.0}
            )
        map_params = list(self.mirror_map.parameters())
        if map_params:
            groups.append(
                {"params": map_params, "lr": map_lr, "name": "map", "lr_ratio": map_lr / meta_lr}
            )
        return groups

    def initialization(self) -> Params:
        """The primal initialization φ₀ (``g(z₀)`` for a learned dual initialization), detached."""
        phi0, z0 = self.start()
        with torch.no_grad():
            phi = self.inner_map().to_primal(z0) if z0 is not None else phi0
        assert phi is not None
        return {n: t.detach().clone() for n, t in phi.items()}

    def set_initialization(self, phi0: Params) -> None:
        """Start from φ₀: copy it into the backbone, and (learned z₀) set z₀ = ∇h(φ₀).

        Raises:
            ValueError: if ``phi0`` does not have the backbone's names and shapes.
        """
        own = dict(self.model.named_parameters())
        if set(phi0) != set(own) or any(phi0[n].shape != own[n].shape for n in own):
            raise ValueError(
                "`init_from` must come from a run with the same backbone (names and shapes); got "
                f"{sorted((n, tuple(t.shape)) for n, t in phi0.items())[:3]}... vs "
                f"{sorted((n, tuple(t.shape)) for n, t in own.items())[:3]}..."
            )
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(phi0[n])
            if self.z0 is not None:
                solve = getattr(self.mirror_map, "solve_dual", None)
                z = solve(phi0) if callable(solve) else self.mirror_map.to_dual(phi0)
                for n in self.names:
                    self.z0[key_of(n)].copy_(z[n])

    def predict(self, phi: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, phi, (x,))


def build_learner(cfg: TrainConfig, benchmark: Benchmark) -> MetaLearner:
    """A fresh :class:`MetaLearner` for ``cfg`` (initialization seeded by ``cfg.seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = benchmark.make_model()
        try:
            mirror_map = MAPS[cfg.map](model, **cfg.map_kwargs)
        except TypeError as err:
            raise ValueError(
                f"`map_kwargs` {cfg.map_kwargs!r} do not fit map {cfg.map!r}: {err}"
            ) from err
    learner = MetaLearner(model, mirror_map, start=cfg.start)
    if cfg.objective == "metamd":
        check_metamd_supported(mirror_map)
    return learner


def meta_loss(
    learner: MetaLearner,
    benchmark: Benchmark,
    batch: TaskBatch,
    *,
    lr: float,
    steps: int,
    objective: str = "query",
    first_order: bool = False,
    meta_batch: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The meta-objective of a task batch and the post-adaptation query metric (for logging).

    ``objective="query"`` (MAML / MetaMiDA): the mean over tasks of
    :math:`L(\phi_K;\mathcal D_{val})`, :math:`\phi_K` from K mirror-descent steps on the
    support loss. ``objective="metamd"``: the mean of MetaMD's regret bound
    (:func:`~mirroropt.workflow.metamd_bound`) of the support trajectory; query data enters only
    the logged metric, under ``no_grad``-equivalent detaching, and the initialization is
    detached: the bound trains the map only (see :mod:`mirroropt.workflow.objectives`).

    Tasks are batched with :func:`mirroropt.map_tasks` (``vmap``, exact for BatchNorm too).

    With ``meta_batch`` = B, ``batch`` is one rank's block :math:`S_r` of a meta-batch of B tasks
    sharded over processes (:func:`mirroropt.distributed.shard_tasks`), and both values are its
    share :math:`\frac1B\sum_{i\in S_r}\ell_i` of the meta-batch mean: the shares of all ranks
    sum to the mean over the B tasks.

    Returns:
        ``(objective, metric)``: scalar tensors, the first differentiable w.r.t. the learner.

    Raises:
        ValueError: if ``meta_batch`` is below the number of tasks in ``batch``.
    """
    size = batch.x_support.shape[0]
    if meta_batch is not None and (
        isinstance(meta_batch, bool) or not isinstance(meta_batch, int) or meta_batch < size
    ):
        raise ValueError(
            f"`meta_batch` must be an int ≥ the {size} tasks of `batch` (the meta-batch this "
            f"block belongs to), got {meta_batch!r}."
        )
    phi0, z0 = learner.start()
    if objective == "metamd":  # the bound trains the geometry, never φ₀ (or z₀)
        phi0 = None if phi0 is None else {n: t.detach() for n, t in phi0.items()}
        z0 = None if z0 is None else {n: t.detach() for n, t in z0.items()}
    mirror_map = learner.inner_map()

    def per_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
        def support_loss(phi: Params) -> Tensor:
            return benchmark.loss(learner.predict(phi, xs), ys)

        if objective == "query":
            phi = adapt(
                mirror_map, support_loss, phi0, z=z0, lr=lr, steps=steps, first_order=first_order
            )
            out = learner.predict(phi, xq)
            return benchmark.loss(out, yq), benchmark.metric(out, yq).detach()
        traj = adapt_trajectory(
            mirror_map, support_loss, phi0, z=z0, lr=lr, steps=steps, first_order=first_order
        )
        bound = metamd_bound(mirror_map, traj, lr)
        out = learner.predict({n: t.detach() for n, t in traj.phi[-1].items()}, xq)
        return bound, benchmark.metric(out, yq).detach()

    values, metrics = map_tasks(per_task, *batch.tensors(), model=learner.model)
    if meta_batch is None:
        return values.mean(), metrics.mean()
    return values.sum() / meta_batch, metrics.sum() / meta_batch
