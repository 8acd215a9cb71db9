"""The meta-learner (backbone + map + optional dual initialization) and its meta-objectives."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mirroropt._batching import map_tasks
from mirroropt._types import Params
from mirroropt._utils import key_of
from mirroropt.functional import adapt, adapt_trajectory
from mirroropt.maps import MAPS, MirrorMap
from mirroropt.workflow._benchmarks import BENCHMARKS, Benchmark, TaskBatch
from mirroropt.workflow.objectives import check_metamd_supported, metamd_bound

__all__ = ["MetaLearner", "TrainConfig", "build_learner", "meta_loss"]

OBJECTIVES = ("query", "metamd")


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run (the CLI's ``train`` options).

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
        for name in ("steps", "seed", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}.")
        for name in ("lr", "meta_lr", "adaptive_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
                raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
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
    the backbone's own parameters are then unused.

    Args:
        model: the backbone.
        mirror_map: the inverse mirror map, built for ``model``'s parameters.
    """

    def __init__(self, model: nn.Module, mirror_map: MirrorMap) -> None:
        super().__init__()
        if not isinstance(mirror_map, MirrorMap):
            raise TypeError(
                f"`mirror_map` must be a mirroropt.maps.MirrorMap, got {type(mirror_map).__name__}."
            )
        self.model = model
        self.mirror_map = mirror_map
        self.names = tuple(n for n, _ in model.named_parameters())
        mirror_map.check_fits(dict(model.named_parameters()), argument="model parameters")
        self.z0: nn.ParameterDict | None = None
        if not mirror_map.has_to_dual:
            self.z0 = nn.ParameterDict(
                {key_of(n): nn.Parameter(p.detach().clone()) for n, p in model.named_parameters()}
            )

    def start(self) -> tuple[Params | None, Params | None]:
        """``(φ₀, None)`` or ``(None, z₀)``: the ``phi`` and ``z`` of :func:`mirroropt.adapt`."""
        if self.z0 is None:
            return dict(self.model.named_parameters()), None
        return None, {n: self.z0[key_of(n)] for n in self.names}

    def meta_parameters(self) -> list[nn.Parameter]:
        """The parameters meta-training updates (backbone or z₀, and the map)."""
        init = self.model.parameters() if self.z0 is None else self.z0.parameters()
        return [*init, *self.mirror_map.parameters()]

    def predict(self, phi: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, phi, (x,))


def build_learner(cfg: TrainConfig, benchmark: Benchmark) -> MetaLearner:
    """A fresh :class:`MetaLearner` for ``cfg`` (initialization seeded by ``cfg.seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = benchmark.make_model()
        mirror_map = MAPS[cfg.map](model)
    learner = MetaLearner(model, mirror_map)
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
) -> tuple[Tensor, Tensor]:
    r"""The meta-objective of a task batch and the post-adaptation query metric (for logging).

    ``objective="query"`` (MAML / MetaMiDA): the mean over tasks of
    :math:`L(\phi_K;\mathcal D_{val})`, :math:`\phi_K` from K mirror-descent steps on the
    support loss. ``objective="metamd"``: the mean of MetaMD's regret bound
    (:func:`~mirroropt.workflow.metamd_bound`) of the support trajectory; query data enters only
    the logged metric, under ``no_grad``-equivalent detaching.

    Tasks are batched with :func:`mirroropt.map_tasks` (``vmap``, or a loop for BatchNorm).

    Returns:
        ``(objective, metric)``: scalar tensors, the first differentiable w.r.t. the learner.
    """
    phi0, z0 = learner.start()
    mirror_map = learner.mirror_map

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
    return values.mean(), metrics.mean()
