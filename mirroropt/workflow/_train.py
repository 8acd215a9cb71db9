"""Meta-training: the loop, the meta-optimizer, MetaMiDA's adaptive meta step and checkpoints."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mirroropt._utils import NonFiniteError
from mirroropt.workflow._checkpoint import FORMAT, read_payload, remove_stale_temp, write_payload
from mirroropt.workflow._evaluate import evaluate
from mirroropt.workflow._learner import MetaLearner, TrainConfig, build_learner, meta_loss
from mirroropt.workflow._ranks import Ranks
from mirroropt.workflow._tasks import Benchmark, build_benchmark, task_seed

__all__ = [
    "VAL_SEED",
    "AdaptiveMetaStep",
    "TrainResult",
    "TrainingInterrupted",
    "best_checkpoint_path",
    "load_checkpoint",
    "make_meta_optimizer",
    "save_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = FORMAT


class TrainingInterrupted(RuntimeError):
    """:func:`train` stopped early because its ``stop`` event was set (the CLI sets it on SIGTERM).

    Attributes:
        iteration: meta-iterations done; the checkpoint (if any) holds exactly these.
        checkpoint: the checkpoint written on stopping, or ``None`` without one.
    """

    def __init__(self, iteration: int, checkpoint: Path | None) -> None:
        where = f"checkpoint {checkpoint} written" if checkpoint else "no checkpoint path given"
        super().__init__(f"stopped at iteration {iteration}; {where}")
        self.iteration = iteration
        self.checkpoint = checkpoint


#: Seed of the meta-validation tasks: the same tasks at every evaluation, in every run and seed.
VAL_SEED = 2000


def best_checkpoint_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where :func:`train` keeps the best checkpoint by meta-validation: ``<stem>.best<suffix>``."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.best{path.suffix}")


def make_meta_optimizer(cfg: TrainConfig, params: list[Any]) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum (what MetaMiDA's authors used for their flow).

    ``params``: parameters or param groups (:meth:`MetaLearner.param_groups`); a group's own
    ``lr`` wins over ``cfg.meta_lr``.
    """
    if cfg.meta_optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.meta_lr)
    return torch.optim.SGD(params, lr=cfg.meta_lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


@dataclass
class AdaptiveMetaStep:
    r"""Meta step size from a smoothness estimate on an extra batch of tasks.

    MetaMiDA's convergence analysis (Zhang, Li & Giannakis, arXiv:2509.02418, Remark 3) takes the
    meta step :math:`\beta \propto 1/L`, with :math:`L` the smoothness constant of the
    meta-objective :math:`F`, and suggests estimating :math:`L` on an extra batch of tasks
    :math:`\mathcal B'_t`. We implement it as the secant estimate on the same extra batch at the
    current and previous meta-iterates:

    .. math::

        \hat L_t = \frac{\|\nabla F(\theta_t; \mathcal B'_t) - \nabla F(\theta_{t-1};
        \mathcal B'_t)\|}{\|\theta_t - \theta_{t-1}\|}, \qquad
        \beta_t = \min\bigl(\beta_{\max},\ c / \hat L_t\bigr),

    and :math:`\beta_0 = \beta_{\max}`. Using one batch for both gradients makes the difference
    reflect curvature rather than task sampling noise. It costs two extra meta-gradients per
    iteration (3× a fixed step). The step is written into every param group's ``lr``, times the
    group's ``lr_ratio`` (the map's meta step over the backbone's, see ``map_meta_lr``).

    Note:
        We could not obtain the text of Remark 3 itself; this is the estimator its description
        (a smoothness estimate on an extra batch, step ∝ 1/L) implies, not a transcription.

    Attributes:
        beta_max: the cap (``TrainConfig.meta_lr``).
        scale: ``c``.
        previous: detached copy of :math:`\theta_{t-1}` (``None`` before the first step).
        smoothness: the last :math:`\hat L_t` (``nan`` before one exists).
    """

    beta_max: float
    scale: float = 1.0
    previous: list[Tensor] | None = None
    smoothness: float = math.nan

    def lr(
        self,
        params: list[torch.nn.Parameter],
        grad_fn: Callable[[], list[Tensor]],
    ) -> float:
        """β_t for the current parameters; ``grad_fn()`` computes ∇F on the extra batch."""
        current = [p.detach().clone() for p in params]
        if self.previous is None:
            beta = self.beta_max
        else:
            g_now = grad_fn()
            with torch.no_grad():
                for p, old in zip(params, self.previous):
                    p.copy_(old)
            g_old = grad_fn()
            with torch.no_grad():
                for p, new in zip(params, current):
                    p.copy_(new)
            dg = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(g_now, g_old)))
            dtheta = math.sqrt(
                sum(float(((a - b) ** 2).sum()) for a, b in zip(current, self.previous))
            )
            self.smoothness = dg / dtheta if dtheta > 0 else math.nan
            beta = (
                self.beta_max
                if not math.isfinite(self.smoothness) or self.smoothness == 0
                else min(self.beta_max, self.scale / self.smoothness)
            )
        self.previous = current
        return beta

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous, "smoothness": self.smoothness}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = state["previous"]
        self.smoothness = state["smoothness"]


@dataclass
class TrainResult:
    """What :func:`train` returns: the learner, its benchmark, and one log row per iteration.

    Attributes:
        seconds: wall time of this call's training loop (meta-steps and meta-validation).
        start_iteration: the iteration this call started from (the checkpoint's, with
            ``resume``; else 0).
        total_seconds: wall time of every training loop that produced the returned weights,
            across resumes: carried in the checkpoint up to its iteration (the work of an
            interrupted call after its last checkpoint is redone and timed again, not counted
            twice); ``None`` when resumed from a checkpoint written before checkpoints carried
            it (mirroropt 0.1), whose earlier time is unknown.
        validation: one row ``{"iteration", "value"}`` per meta-validation (``val_every``).
        best_iteration, best_value: the selected iteration (best meta-validation metric at
            k = K; the earliest on ties) and its value; ``0``/``nan`` without validation.
        best_state: the learner's ``state_dict`` at ``best_iteration`` (``None`` without
            validation); also saved as :func:`best_checkpoint_path` with a checkpoint.
    """

    config: TrainConfig
    learner: MetaLearner
    benchmark: Benchmark
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    validation: list[dict[str, float]] = field(default_factory=list)
    best_iteration: int = 0
    best_value: float = math.nan
    best_state: dict[str, Any] | None = None
    start_iteration: int = 0
    total_seconds: float | None = 0.0

    def best_learner(self) -> MetaLearner:
        """The learner at the selected iteration (the final one without validation)."""
        if self.best_state is None:
            return self.learner
        learner = build_learner(self.config, self.benchmark)
        learner.load_state_dict(self.best_state)
        device = next(iter(self.learner.parameters())).device
        return learner.to(device)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    config: TrainConfig,
    learner: MetaLearner,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    history: list[dict[str, float]],
    adaptive: AdaptiveMetaStep | None = None,
    validation: list[dict[str, float]] | None = None,
    best: dict[str, float] | None = None,
    train_seconds: float | None = None,
) -> None:
    """Write everything needed to resume exactly: backbone, map, dual init, meta-optimizer,
    adaptive-step state, RNG state, iteration, log, meta-validation log and the best iteration
    so far, and the number of torch threads (results depend on it in the last bits), with the
    training wall time behind ``iteration`` (``train_seconds``, summed over resumes; ``None``:
    unknown).

    Written atomically (temp file, fsync, rename) with a SHA-256 checksum that
    :func:`load_checkpoint` verifies (see :mod:`mirroropt.workflow._checkpoint`).

    Raises:
        NonFiniteError: if a weight of ``learner`` is not finite; nothing is written, so the
            previous checkpoint at ``path`` (the last good one) stays.
    """
    state = learner.state_dict()
    bad = [
        n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise NonFiniteError(
            f"The learner's weights {bad[:5]}{' …' if len(bad) > 5 else ''} are not finite at "
            f"iteration {iteration}; checkpoint {str(path)!r} not written (the previous one stays)."
        )
    payload = {
        "config": config.to_dict(),
        "learner": state,
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "history": history,
        "adaptive": adaptive.state_dict() if adaptive is not None else None,
        "torch_rng": torch.get_rng_state(),
        "validation": list(validation or []),
        "best": dict(best or {}),
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
    }
    write_payload(path, payload)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (``weights_only`` loading).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: (a ``ValueError``) with one line naming the file and what is wrong: a
            directory, empty, truncated, text, not a torch archive, not a mirroropt checkpoint,
            or a checksum that does not match (a changed bit).
    """
    return read_payload(path)


def restore(
    payload: dict[str, Any], *, device: str | torch.device | None = None
) -> tuple[TrainConfig, Benchmark, MetaLearner]:
    """Rebuild config, benchmark and learner (with trained weights) from a checkpoint payload
    (on ``device``; default the CPU)."""
    cfg = TrainConfig.from_dict(payload["config"])
    bench = build_benchmark(cfg, device=device)
    learner = build_learner(cfg, bench)
    learner.load_state_dict(payload["learner"])
    if device is not None:
        learner.to(device)
    return cfg, bench, learner


def train(
    cfg: TrainConfig,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    benchmark: Benchmark | None = None,
    log_every: int = 10,
    stop: threading.Event | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Meta-train ``cfg.iterations`` iterations (or the rest of them, with ``resume``).

    Iteration ``t`` uses the task batch ``benchmark.sample("train", task_seed(seed, "train", t))``
    (and stream 1 of that seed for the adaptive step's extra batch), so batches depend only on
    the seed and the iteration: resuming from a checkpoint at iteration ``t`` and running to
    ``N`` gives bit-identical weights and logs to an uninterrupted run of ``N`` iterations.

    Args:
        cfg: the run.
        checkpoint: file to write (every ``cfg.checkpoint_every`` iterations and at the end) and,
            with ``resume``, to read first.
        resume: continue from ``checkpoint``. Its config must equal ``cfg`` except
            ``iterations`` (which may be raised) and ``checkpoint_every``.
        progress: show a tqdm progress bar with the running loss and metric.
        benchmark: a prebuilt benchmark (default: ``build_benchmark(cfg)``).
        log_every: progress-bar refresh interval (iterations).
        stop: when this event is set (e.g. by a SIGTERM handler), finish the current
            iteration, write the checkpoint and raise :class:`TrainingInterrupted`.
        device: where the learner and the task batches live (``"cuda"`` on a GPU; default the
            CPU). Tasks and seeds are the same on every device; checkpoints are portable.

    Returns:
        A :class:`TrainResult` (the same on every rank).

    Several processes: called on every rank of an initialized default process group of
    ``cfg.world_size`` processes (what ``torchrun --nproc_per_node W -m mirroropt train`` sets
    up), each rank draws the whole meta-batch, meta-trains on its block of tasks (see
    :mod:`mirroropt.workflow._ranks`) and all-reduces the meta-gradient, so every rank takes the
    same meta-step; the result equals one process's up to the order of floating-point
    additions. Only rank 0 writes checkpoints, shows progress and meta-validates (its score is
    broadcast); every rank reads ``checkpoint`` to resume, so it must be visible to all of them.
    A rank whose tasks raise stops every rank at the same iteration, the others with an error
    naming it; ``stop`` set on any rank stops all of them after the same iteration.

    A leftover ``<checkpoint>.tmp`` (a write that was killed) is deleted first. Every
    meta-iteration checks that the meta-loss, its gradient and the updated weights are finite;
    if not, training stops with :class:`~mirroropt.NonFiniteError` naming the iteration (and,
    from :func:`mirroropt.map_tasks`, the task and inner step) and no checkpoint is written, so
    the last good one stays.

    Raises:
        ValueError: if ``resume`` without ``checkpoint``, the checkpoint's config differs, it was
            written with another number of torch threads or another ``world_size``, or holds
            more iterations than ``cfg.iterations``; or if ``cfg.world_size`` is not the process
            group's size.
        FileNotFoundError: if ``resume`` and the checkpoint does not exist.
        CheckpointError: if a checkpoint to read is damaged (see :func:`load_checkpoint`).
        NonFiniteError: as above.
        TrainingInterrupted: when ``stop`` is set.
        RankFailedError: (several processes) when another rank raised.
    """
    if resume and checkpoint is None:
        raise ValueError("`resume=True` needs a `checkpoint` path to resume from.")
    ranks = Ranks.current()
    if cfg.world_size != ranks.world_size:
        raise ValueError(
            f"`world_size` is {cfg.world_size} in the config but {ranks.world_size} process(es) "
            f"run it (the default process group of torch.distributed); set "
            f"TrainConfig(world_size={ranks.world_size})."
        )
    progress = progress and ranks.main
    if checkpoint is not None and ranks.main:
        remove_stale_temp(Path(checkpoint))
        remove_stale_temp(best_checkpoint_path(checkpoint))
    bench = benchmark if benchmark is not None else build_benchmark(cfg, device=device)
    learner = build_learner(cfg, bench)
    if device is not None:
        learner.to(device)
    if cfg.init_from and not resume:
        _, _, source = restore(load_checkpoint(cfg.init_from))
        learner.set_initialization(source.initialization())
    groups = learner.param_groups(
        meta_lr=cfg.meta_lr, map_meta_lr=cfg.map_meta_lr, train_init=cfg.objective != "metamd"
    )
    params = [p for g in groups for p in g["params"]]
    optimizer = make_meta_optimizer(cfg, groups)
    validation: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_state: dict[str, Any] | None = None
    best_path = best_checkpoint_path(checkpoint) if checkpoint is not None else None
    adaptive = (
        AdaptiveMetaStep(cfg.meta_lr, cfg.adaptive_scale) if cfg.meta_step == "adaptive" else None
    )
    start, history = 0, []
    seconds_before: float | None = 0.0  # training time behind the starting point
    if resume:
        assert checkpoint is not None
        payload = load_checkpoint(checkpoint)
        # fields added after the checkpoint was written take their defaults (older runs resume)
        saved = TrainConfig.from_dict(dict(payload["config"])).to_dict()
        mine = cfg.to_dict()
        # init_from only seeds a fresh run (a resumed one loads φ₀ from the checkpoint), so a
        # runs folder that moved, with its sources, still resumes
        for key in ("iterations", "checkpoint_every", "init_from"):
            saved.pop(key)
            mine.pop(key)
        if saved["world_size"] != mine["world_size"]:
            was, now = saved["world_size"], mine["world_size"]
            how = f"torchrun --nproc_per_node {was}" if was > 1 else "one process (no torchrun)"
            raise ValueError(
                f"`checkpoint` {str(checkpoint)!r} was trained on {was} process(es) (world_size); "
                f"resuming on {now} would change its results (the meta-gradient's floating-point "
                f"summation order): resume with {how}."
            )
        if saved != mine:
            diff = sorted(k for k in mine if saved.get(k) != mine[k])
            raise ValueError(
                f"`checkpoint` was written by a different run: fields {diff} differ from the "
                f"given config; only `iterations`, `checkpoint_every` and `init_from` may change "
                f"on resume."
            )
        threads, now = payload.get("threads"), torch.get_num_threads()
        if threads is not None and threads != now:
            raise ValueError(
                f"`checkpoint` {str(checkpoint)!r} was trained with --threads {threads}; resuming "
                f"with --threads {now} would change its results (floating-point summation "
                f"order): resume with --threads {threads} (torch.set_num_threads({threads}))."
            )
        if int(payload["iteration"]) > cfg.iterations:
            raise ValueError(
                f"--iterations {cfg.iterations} is below the {payload['iteration']} iterations "
                f"the checkpoint {str(checkpoint)!r} already holds; pass --iterations "
                f"{payload['iteration']} or more."
            )
        learner.load_state_dict(payload["learner"])
        optimizer.load_state_dict(payload["optimizer"])
        if adaptive is not None and payload["adaptive"] is not None:
            adaptive.load_state_dict(payload["adaptive"])
        torch.set_rng_state(payload["torch_rng"])
        start, history = int(payload["iteration"]), list(payload["history"])
        # a 0.1 checkpoint has no "train_seconds": the time behind it is unknown from here on
        seconds_before = payload.get("train_seconds")
        validation, best = list(payload.get("validation", [])), dict(payload.get("best", {}))
        if best and best_path is not None and best_path.is_file():
            best_state = load_checkpoint(best_path)["learner"]

    def objective(seed: int) -> tuple[Tensor, Tensor]:
        batch = bench.sample("train", seed, cfg.meta_batch)
        if ranks.distributed:  # this rank's block, as its share of the meta-batch mean
            batch, _, _ = ranks.shard(batch)
        return meta_loss(
            learner,
            bench,
            batch,
            lr=cfg.lr,
            steps=cfg.steps,
            objective=cfg.objective,
            first_order=cfg.first_order,
            meta_batch=cfg.meta_batch if ranks.distributed else None,
        )

    saved_at: int | None = start if resume else None
    t0 = time.perf_counter()

    def elapsed() -> float | None:
        """Training time behind the current iteration, over every resume (None: unknown)."""
        return None if seconds_before is None else seconds_before + time.perf_counter() - t0

    def save(path: Path | str | os.PathLike[str], done: int) -> None:
        nonlocal saved_at
        if not ranks.main:  # every rank holds the same state; rank 0 writes it
            if path == checkpoint:
                saved_at = done
            return
        save_checkpoint(
            path,
            config=cfg,
            learner=learner,
            optimizer=optimizer,
            iteration=done,
            history=history,
            adaptive=adaptive,
            validation=validation,
            best=best,
            train_seconds=elapsed(),
        )
        if path == checkpoint:
            saved_at = done

    bar = _progress(range(start, cfg.iterations), progress, cfg, start)
    t0 = time.perf_counter()  # again: the time above is setup, not training
    for it in bar:
        try:
            value, metric, stopping = _meta_step(
                it, objective, params, optimizer, adaptive, cfg, ranks=ranks, stop=stop
            )
        except NonFiniteError as error:
            kept = (
                f"kept the last good checkpoint {checkpoint} (iteration {saved_at})"
                if checkpoint is not None and saved_at is not None
                else "no checkpoint was written"
            )
            raise NonFiniteError(
                f"Training stopped at meta-iteration {it + 1} of {cfg.iterations}: "
                f"{str(error).rstrip('.')}; {kept}. Lower `lr`/`meta_lr`, or check the data."
            ) from error
        row = {
            "iteration": it + 1,
            "loss": value,
            "metric": metric,
            "meta_lr": float(optimizer.param_groups[0]["lr"]),
        }
        history.append(row)
        if progress and (it + 1) % log_every == 0:
            recent = history[-log_every:]
            bar.set_postfix(
                loss=f"{sum(r['loss'] for r in recent) / len(recent):.4f}",
                **{bench.metric_name[:3]: f"{sum(r['metric'] for r in recent) / len(recent):.3f}"},
            )
        done = it + 1
        if cfg.val_every and (done % cfg.val_every == 0 or done == cfg.iterations):
            score = ranks.from_main(
                lambda: meta_validate(learner, bench, cfg), what="meta-validation"
            )
            validation.append({"iteration": done, "value": score})
            better = not best or (
                score > best["value"] if bench.kind == "classification" else score < best["value"]
            )
            if better:
                best = {"iteration": done, "value": score}
                best_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
                if best_path is not None:
                    save(best_path, done)
        if checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            save(checkpoint, done)
        if stopping:
            if checkpoint is not None and saved_at != done:
                save(checkpoint, done)
            ranks.sync()
            raise TrainingInterrupted(done, Path(checkpoint) if checkpoint is not None else None)
    seconds = time.perf_counter() - t0
    total = None if seconds_before is None else seconds_before + seconds
    if checkpoint is not None:
        save(checkpoint, max(start, cfg.iterations))
    ranks.sync()
    return TrainResult(
        cfg,
        learner,
        bench,
        history,
        seconds,
        validation=validation,
        best_iteration=int(best.get("iteration", 0)),
        best_value=float(best.get("value", math.nan)),
        best_state=best_state,
        start_iteration=start,
        total_seconds=total,
    )


def _meta_step(
    it: int,
    objective: Callable[[int], tuple[Tensor, Tensor]],
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    adaptive: AdaptiveMetaStep | None,
    cfg: TrainConfig,
    *,
    ranks: Ranks | None = None,
    stop: threading.Event | None = None,
) -> tuple[float, float, bool]:
    """One meta-iteration: ``(meta-loss, metric, stop)``; raises NonFiniteError before a
    non-finite value reaches the weights.

    With several ranks, each back-propagates its share and the gradients are summed over ranks;
    the loss and metric shares, the stop flag and any failure are shared first (one small
    all-reduce), so every rank makes the same decisions. With one rank ``stop`` is read at the
    end of the iteration, as before."""
    ranks = ranks if ranks is not None else Ranks()
    block = (*ranks.bounds(cfg.meta_batch), cfg.meta_batch)
    where = f"at meta-iteration {it + 1} "
    if adaptive is not None:
        extra_seed = task_seed(cfg.seed, "train", it, stream=1)

        def grad_fn(seed: int = extra_seed) -> list[Tensor]:
            if not ranks.distributed:
                value, _ = objective(seed)
                return list(
                    torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)
                )
            share: Tensor | None = None
            score: Tensor | None = None
            grads: list[Tensor] = []
            error: Exception | None = None
            try:
                share, score = objective(seed)
                grads = list(
                    torch.autograd.grad(share, params, allow_unused=True, materialize_grads=True)
                )
            except Exception as caught:
                error = caught
            ranks.agree(error, stop=False, value=share, metric=score, block=block, what=where)
            return ranks.sum(grads)

        beta = adaptive.lr(params, grad_fn)
        for group in optimizer.param_groups:
            group["lr"] = beta * group.get("lr_ratio", 1.0)
    optimizer.zero_grad(set_to_none=True)
    error: Exception | None = None
    value: Tensor | None = None
    metric: Tensor | None = None
    try:
        value, metric = objective(task_seed(cfg.seed, "train", it))
    except Exception as caught:
        if not ranks.distributed:
            raise
        error = caught
    stopping = ranks.distributed and stop is not None and stop.is_set()
    total, score, stop_all = ranks.agree(
        error, stop=stopping, value=value, metric=metric, block=block, what=where
    )
    if not math.isfinite(total):
        raise NonFiniteError(f"the meta-loss is {total}")
    assert value is not None
    value.backward()
    ranks.sum_gradients(params)
    _check_all_finite([p.grad for p in params if p.grad is not None], "the meta-gradient")
    optimizer.step()
    _check_all_finite([p.detach() for p in params], "a weight after the meta-step")
    if not ranks.distributed:
        stop_all = stop is not None and stop.is_set()
    return total, score, stop_all


def _check_all_finite(tensors: list[Tensor], what: str) -> None:
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise NonFiniteError(f"{what} is not finite")


def meta_validate(learner: MetaLearner, benchmark: Benchmark, cfg: TrainConfig) -> float:
    """Mean meta-validation metric at k = K (``cfg.val_tasks`` tasks of the ``"val"`` split,
    seeded by :data:`VAL_SEED`, so every run and seed sees the same tasks)."""
    result = evaluate(
        learner,
        benchmark,
        lr=cfg.lr,
        steps=cfg.steps,
        tasks=cfg.val_tasks,
        seed=VAL_SEED,
        split="val",
    )
    return float(result.metric["mean"][-1])


def _progress(iterable: range, enabled: bool, cfg: TrainConfig, start: int) -> Any:
    if not enabled:
        return _Quiet(iterable)
    from mirroropt.workflow._optional import require_tqdm

    tqdm = require_tqdm()
    return tqdm(
        iterable, total=cfg.iterations, initial=start, desc=f"train {cfg.map}", dynamic_ncols=True
    )


class _Quiet:
    def __init__(self, iterable: range) -> None:
        self.iterable = iterable

    def __iter__(self) -> Any:
        return iter(self.iterable)

    def set_postfix(self, **_: Any) -> None:
        pass
