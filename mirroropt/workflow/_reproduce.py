"""The evidence protocol of docs/results.md: every method, several seeds, tuned on meta-validation.

One command (``python -m mirroropt reproduce``) runs the whole protocol, resumably, and writes the
tables, the claims verdicts and the plots:

* **Methods** (:data:`METHODS`): MAML, Meta-SGD, Meta-Curvature, MetaMiDA's blockIAF (paper form
  and ``monotone=True``), MetaMiDA's convex potential, MetaMD. Same backbone, task streams, test
  tasks and budget; K = 5 inner steps at α = 0.01 in training, evaluation at every k = 0 … 10.
* **Tuning at equal effort**: every method with a map gets the same grid of map meta step sizes
  (``--map-meta-lr``, the map's own Adam param group); the value is chosen on meta-validation
  (accuracy at k = K, or MSE) with the tuning seed, then used for the other seeds. MAML has no map
  parameters and nothing to tune; the backbone's β is the same for everyone.
* **Model selection**: every run meta-validates every ``val_every`` iterations on the same
  ``val_tasks`` tasks and keeps its best checkpoint; the test evaluation uses that checkpoint.
* **Divergence** is a result, not a crash of the protocol: a run whose meta-gradient or loss
  turns non-finite ends there, and (as under early stopping) its result is its best checkpoint
  by meta-validation before that point, flagged "diverged at iteration N" in every table. A run
  that diverges before its first meta-validation has no result: as a tuning value it cannot be
  chosen; as a seed of the chosen value it is reported as failed. Every other error stops the
  method and is shown.
* **Statistics**: per setting and method, the mean over seeds with Student's t 95% interval
  (:func:`~mirroropt.workflow.seed_ci`), and per seed the paired difference to MAML with a paired
  t-test (:func:`~mirroropt.workflow.paired_t_test`); the per-seed test-task CIs stay in the JSON.

Every job lives in ``out/<setting>/<method>/seed<s>[-mlr<v>]/`` (checkpoint, best checkpoint,
``record.json``) and is claimed with a lock file, so several workers (``workers=N``) or several
sessions share one folder, a killed run resumes from its last checkpoint, and raising
``iterations`` later continues every run instead of starting over.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import shutil
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mirroropt._utils import NonFiniteError
from mirroropt.workflow._evaluate import EvalResult, evaluate
from mirroropt.workflow._learner import TrainConfig
from mirroropt.workflow._stats import paired_t_test, seed_ci
from mirroropt.workflow._train import (
    TrainResult,
    best_checkpoint_path,
    load_checkpoint,
    restore,
    train,
)

__all__ = [
    "METHODS",
    "SETTINGS",
    "Method",
    "Protocol",
    "ProtocolError",
    "Setting",
    "reproduce",
    "results_report",
]

EVAL_SEED = 1000  # the test tasks: the same for every method and seed
# Protocol fields that `reproduce` sets with a flag of their own name (`--val-every`, ...)
_FLAGS = ("val_every", "val_tasks", "eval_tasks", "width", "norm", "fontglot")


class ProtocolError(ValueError):
    """A protocol, runs folder or selection that :func:`reproduce` refuses before any run starts
    (an unknown setting or method, too few seeds, a ``protocol.json`` that disagrees, ...)."""


@dataclass(frozen=True)
class Method:
    """A row of the tables.

    Attributes:
        key: folder name. label: table name. map / map_kwargs: the mirror map.
        objective: ``"query"`` or ``"metamd"``.
        init_from: key of the method whose selected run (same setting and seed) gives this
            method's φ₀ (MetaMD starts from MAML's initialization and learns the geometry only).
        tune: grid-search the map meta step size (False: no map parameters).
        start: ``"learned"`` (MetaMiDA's learned z₀) or ``"anchored"`` for maps without
            ``to_dual`` (see :class:`mirroropt.workflow.MetaLearner`).
    """

    key: str
    label: str
    map: str
    objective: str = "query"
    map_kwargs: tuple[tuple[str, Any], ...] = ()
    init_from: str = ""
    tune: bool = True
    start: str = "learned"


@dataclass(frozen=True)
class Setting:
    """A benchmark configuration and how it is evaluated (``eval_shots``: sinusoid support sizes)."""

    key: str
    title: str
    config: dict[str, Any]
    eval_shots: tuple[int, ...] = ()


METHODS: tuple[Method, ...] = (
    Method("maml", "MAML (Identity)", "identity", tune=False),
    Method("meta-sgd", "Meta-SGD (Diagonal)", "diagonal"),
    Method("meta-curvature", "Meta-Curvature (Kronecker)", "kronecker"),
    Method("block-iaf", "MetaMiDA blockIAF", "block_iaf"),
    Method(
        "block-iaf-monotone",
        "MetaMiDA blockIAF (monotone)",
        "block_iaf",
        map_kwargs=(("monotone", True),),
    ),
    Method("convex-potential", "MetaMiDA convex potential", "convex_potential"),
    Method(
        "convex-potential-anchored",
        "Convex potential, anchored at φ₀ (ours)",
        "convex_potential",
        map_kwargs=(("init_scale", 0.1),),
        start="anchored",
    ),
    Method(
        "convex-potential-anchored-sigmoid",
        "Convex potential, anchored, sigmoid weights (Remark 1)",
        "convex_potential",
        map_kwargs=(("init_scale", 0.1), ("weights", "sigmoid")),
        start="anchored",
    ),
    Method(
        "metamd",
        "MetaMD (Diagonal, regret bound, φ₀ of MAML)",
        "diagonal",
        objective="metamd",
        init_from="maml",
    ),
)

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "fontglot-5w1s",
        "FontGlot 5-way 1-shot",
        {"benchmark": "fontglot", "n_way": 5, "k_shot": 1, "q_query": 5},
    ),
    Setting(
        "fontglot-aug-20w1s",
        "FontGlot 20-way 1-shot, augmented",
        {
            "benchmark": "fontglot",
            "n_way": 20,
            "k_shot": 1,
            "q_query": 2,
            "augment": True,
            "augment_eval": True,
        },
    ),
    Setting(
        "sinusoid",
        "Sinusoid (MSE)",
        {"benchmark": "sinusoid", "k_shot": 10, "q_query": 10, "meta_batch": 25},
        eval_shots=(5, 10, 20),
    ),
)


@dataclass(frozen=True)
class Protocol:
    """The budget and the fixed hyperparameters of every run (recorded in ``protocol.json``).

    Only the budgets (``iterations``, ``sinusoid_iterations``, ``budgets``) and ``grid`` (new
    values added) may grow between invocations on one folder: every run continues, and the
    selection takes the new values in.

    Attributes:
        iterations: meta-iterations per FontGlot run.
        sinusoid_iterations: meta-iterations per sinusoid run.
        budgets: per-setting overrides of those two, ``((setting key, meta-iterations), ...)``,
            e.g. ``(("fontglot-aug-20w1s", 300),)`` to run the dearer setting at a smaller budget
            (see :meth:`budget`).
    """

    iterations: int = 500
    sinusoid_iterations: int = 2000
    seeds: tuple[int, ...] = (0, 1, 2)
    grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    val_every: int = 50
    val_tasks: int = 100
    eval_tasks: int = 300
    eval_steps: int = 10
    width: int = 32
    norm: str = "group"
    meta_batch: int = 4
    steps: int = 5
    lr: float = 0.01
    meta_lr: float = 1e-3
    checkpoint_every: int = 50
    fontglot: str = ""
    budgets: tuple[tuple[str, int], ...] = ()

    def command(self, out: str | Path = "runs/evidence") -> str:
        """The ``python -m mirroropt reproduce`` command line that runs this protocol in ``out``.

        Raises:
            ProtocolError: if a field that has no command-line flag differs from its default
                (such a protocol is run through :func:`reproduce`).
        """
        default = Protocol()
        flagged = ("iterations", "sinusoid_iterations", "budgets", "seeds", "grid", *_FLAGS)
        unflagged = [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in flagged and getattr(self, f.name) != getattr(default, f.name)
        ]
        if unflagged:
            raise ProtocolError(f"`{unflagged}` differ from their defaults and have no flag.")
        parts = [
            "python -m mirroropt reproduce",
            f"--out {shlex.quote(str(out))}",
            f"--iterations {self.iterations}",
        ]
        if self.sinusoid_iterations != default.sinusoid_iterations:
            parts.append(f"--sinusoid-iterations {self.sinusoid_iterations}")
        parts += [f"--budget {key}={n}" for key, n in self.budgets]
        for name, flag in (("seeds", "--seeds"), ("grid", "--grid")):
            if getattr(self, name) != getattr(default, name):
                parts.append(f"{flag} " + " ".join(f"{v:g}" for v in getattr(self, name)))
        for name in _FLAGS:
            if getattr(self, name) != getattr(default, name):
                value = shlex.quote(str(getattr(self, name)))
                parts.append(f"--{name.replace('_', '-')} {value}")
        return " ".join(parts)

    def __post_init__(self) -> None:
        keys = [s.key for s in SETTINGS]
        pairs = tuple((str(k), n) for k, n in self.budgets)  # protocol.json stores lists
        for key, n in pairs:
            if key not in keys:
                raise ProtocolError(f"`budgets` names setting {key!r}; choose from {keys}.")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ProtocolError(f"`budgets` of {key!r} must be a positive integer, got {n!r}.")
        if len({k for k, _ in pairs}) != len(pairs):
            raise ProtocolError(f"`budgets` names a setting twice: {pairs!r}.")
        object.__setattr__(self, "budgets", tuple(sorted(pairs)))  # one order in protocol.json
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ProtocolError(f"`seeds` must be at least 2 distinct seeds, got {self.seeds!r}.")
        if not self.grid or any(not (0 < v < math.inf) for v in self.grid):
            raise ProtocolError(f"`grid` must be positive map meta step sizes, got {self.grid!r}.")
        for name in ("iterations", "sinusoid_iterations", "val_every", "eval_tasks"):
            if getattr(self, name) < 1:
                raise ProtocolError(f"`{name}` must be ≥ 1, got {getattr(self, name)!r}.")
        if self.eval_tasks < 2 or self.val_tasks < 2:
            raise ProtocolError("`eval_tasks` and `val_tasks` must be ≥ 2 for an interval.")

    @property
    def tune_seed(self) -> int:
        """The seed whose runs choose each method's map meta step size."""
        return self.seeds[0]

    def budget(self, setting: Setting | str) -> int:
        """Meta-iterations per run of ``setting`` (its ``budgets`` entry, else the default)."""
        key = setting if isinstance(setting, str) else setting.key
        return dict(self.budgets).get(key, self._default_budget(key))

    def _default_budget(self, key: str) -> int:
        benchmark = next(s for s in SETTINGS if s.key == key).config["benchmark"]
        return self.sinusoid_iterations if benchmark == "sinusoid" else self.iterations

    def budget_source(self, key: str) -> str:
        """The field ``budget(key)`` comes from (for error messages)."""
        if key in dict(self.budgets):
            return f"budgets[{key}]"
        benchmark = next(s for s in SETTINGS if s.key == key).config["benchmark"]
        return "sinusoid_iterations" if benchmark == "sinusoid" else "iterations"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        """The protocol of a ``protocol.json`` (lists back to tuples; fields a folder written
        before they existed lacks take their defaults)."""
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        if "budgets" in fields:
            fields["budgets"] = tuple(tuple(pair) for pair in fields["budgets"])
        return cls(**fields)


# -------------------------------------------------------------------------------------------------
# jobs


@dataclass(frozen=True)
class _Job:
    setting: Setting
    method: Method
    seed: int
    map_meta_lr: float | None

    @property
    def name(self) -> str:
        tail = "" if self.map_meta_lr is None else f"-mlr{self.map_meta_lr:g}"
        return f"{self.setting.key}/{self.method.key}/seed{self.seed}{tail}"


def _config(protocol: Protocol, job: _Job, init_from: str) -> TrainConfig:
    setting, method = job.setting, job.method
    extra = {"fontglot": protocol.fontglot} if setting.config["benchmark"] == "fontglot" else {}
    return TrainConfig(
        **{
            "meta_batch": protocol.meta_batch,
            "width": protocol.width,
            "norm": protocol.norm,
            **setting.config,
            **extra,
            "map": method.map,
            "map_kwargs": dict(method.map_kwargs),
            "objective": method.objective,
            "steps": protocol.steps,
            "lr": protocol.lr,
            "meta_lr": protocol.meta_lr,
            "map_meta_lr": job.map_meta_lr,
            "iterations": protocol.budget(setting),
            "seed": job.seed,
            "val_every": protocol.val_every,
            "val_tasks": protocol.val_tasks,
            "checkpoint_every": protocol.checkpoint_every,
            "init_from": init_from,
            "start": method.start,
        }
    )


class _Runs:
    """The protocol's folder: job records, selection, dependencies, locks."""

    def __init__(self, out: Path, protocol: Protocol) -> None:
        self.out, self.protocol = out, protocol

    def folder(self, job: _Job) -> Path:
        return self.out / job.name

    def record(self, job: _Job) -> dict[str, Any] | None:
        path = self.folder(job) / "record.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self, job: _Job) -> bool:
        """Finished at the protocol's budget, or diverged (a grown budget cannot undo that)."""
        rec = self.record(job)
        return (
            rec is not None
            and rec.get("status") == "ok"
            and (
                bool(rec.get("diverged"))
                or rec["config"]["iterations"] >= self.protocol.budget(job.setting)
            )
        )

    def failed(self, job: _Job) -> bool:
        rec = self.record(job)
        return rec is not None and str(rec.get("status", "")).startswith("failed")

    def diverged_early(self, job: _Job) -> bool:
        """Failed by diverging before its first meta-validation: no result, nothing to choose."""
        rec = self.record(job)
        return self.failed(job) and bool(rec.get("diverged"))  # type: ignore[union-attr]

    def tune_jobs(self, setting: Setting, method: Method) -> list[_Job]:
        values: Sequence[float | None] = self.protocol.grid if method.tune else (None,)
        return [_Job(setting, method, self.protocol.tune_seed, v) for v in values]

    def selected(self, setting: Setting, method: Method) -> float | str | None:
        """The chosen map meta step size: ``"pending"`` until every tuning run has ended,
        ``"failed"`` when a tuning run failed other than by diverging early, or none has a result.
        """
        jobs = self.tune_jobs(setting, method)
        if not all(self.done(j) or self.failed(j) for j in jobs):
            return "pending"
        if any(self.failed(j) and not self.diverged_early(j) for j in jobs):
            return "failed"
        higher = setting.config["benchmark"] != "sinusoid"
        scored = [(self.record(j)["best_value"], j.map_meta_lr) for j in jobs if self.done(j)]  # type: ignore[index]
        if not scored:
            return "failed"
        best = max(scored, key=lambda s: s[0]) if higher else min(scored, key=lambda s: s[0])
        return best[1]

    def final_job(self, setting: Setting, method: Method, seed: int) -> _Job | None:
        value = self.selected(setting, method)
        if value in ("pending", "failed"):
            return None
        return _Job(setting, method, seed, value)  # type: ignore[arg-type]

    def jobs(self, settings: Sequence[Setting], methods: Sequence[Method]) -> Iterator[_Job]:
        """Every job that can be named now (final seeds once their method's tuning is done)."""
        for setting in settings:
            for method in methods:
                yield from self.tune_jobs(setting, method)
                for seed in self.protocol.seeds[1:]:
                    job = self.final_job(setting, method, seed)
                    if job is not None:
                        yield job

    def init_source(self, job: _Job) -> str | None:
        """The best checkpoint ``job`` starts from ('' if none is needed, None if not ready)."""
        if not job.method.init_from:
            return ""
        source = next(m for m in METHODS if m.key == job.method.init_from)
        value = self.selected(job.setting, source)
        if value in ("pending", "failed"):
            return None
        src_job = _Job(job.setting, source, job.seed, value)  # type: ignore[arg-type]
        if not self.done(src_job):
            return None
        return str(best_checkpoint_path(self.folder(src_job) / "checkpoint.pt"))

    def claim(self, job: _Job) -> bool:
        folder = self.folder(job)
        folder.mkdir(parents=True, exist_ok=True)
        lock = folder / "lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid, *boot = (lock.read_text() or "0").split()
                if boot and boot[0] != _boot_id():
                    raise ProcessLookupError  # written before a reboot or on another machine
                os.kill(int(pid), 0)
                return False  # a live worker holds it
            except (ValueError, ProcessLookupError, PermissionError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its worker died
                return self.claim(job)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {_boot_id()}")
        return True

    def release(self, job: _Job) -> None:
        (self.folder(job) / "lock").unlink(missing_ok=True)


def _boot_id() -> str:
    """This boot of this machine: a lock's pid means something only under the same boot id."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the host name at least tells machines apart
        import socket

        return socket.gethostname()


def _run_job(
    runs: _Runs, job: _Job, init_from: str, progress: bool, device: str | None = None
) -> None:
    protocol, folder = runs.protocol, runs.folder(job)
    cfg = _config(protocol, job, init_from)
    ckpt = folder / "checkpoint.pt"
    previous = runs.record(job) or {}
    segments = list(previous.get("segments", []))
    record: dict[str, Any] = {"method": job.method.label, "job": job.name}
    try:
        begun = int(load_checkpoint(ckpt)["iteration"]) if ckpt.is_file() else 0
        t_train = time.perf_counter()
        try:
            run = train(
                cfg, checkpoint=ckpt, resume=ckpt.is_file(), progress=progress, device=device
            )
        except NonFiniteError as err:
            record["diverged"] = {"iteration": _stopped_at(str(err)), "error": str(err)}
            run = _best_before_divergence(ckpt, device, err)
            run.seconds = time.perf_counter() - t_train
            run.start_iteration = begun
        segments.append(
            {
                "from": run.start_iteration,
                "to": run.history[-1]["iteration"],
                "seconds": run.seconds,
            }
        )
        train_seconds, untimed = _timing(segments, run.total_seconds)
        learner = run.best_learner()
        evals, t0 = {}, time.perf_counter()
        for shots in job.setting.eval_shots or (cfg.k_shot,):
            bench = run.benchmark
            if shots != cfg.k_shot:
                from mirroropt.workflow._tasks import build_benchmark

                bench = build_benchmark(replace(cfg, k_shot=shots), device=device)
            result = evaluate(
                learner,
                bench,
                lr=cfg.lr,
                steps=protocol.eval_steps,
                tasks=protocol.eval_tasks,
                seed=EVAL_SEED,
                label=job.method.label,
                progress=progress,
                check_finite=False,  # a map diverging beyond K is a result: inf in the table
            )
            evals[str(shots)] = result.to_dict()
        record.update(
            status="ok",
            config=cfg.to_dict(),
            segments=segments,
            train_seconds=train_seconds,
            untimed_iterations=untimed,
            eval_seconds=time.perf_counter() - t0,
            validation=run.validation,
            best_iteration=run.best_iteration,
            best_value=run.best_value,
            history=run.history,
            eval=evals,
        )
    except Exception as err:  # recorded, not hidden: the tables show the failure
        if isinstance(err, NonFiniteError) and "diverged" not in record:
            record["diverged"] = {"iteration": _stopped_at(str(err)), "error": str(err)}
        record.update(
            status=f"failed: {type(err).__name__}: {err}",
            config=cfg.to_dict(),
            segments=segments,
            traceback=traceback.format_exc(),
        )
    tmp = folder / "record.json.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / "record.json")


def _timing(segments: Sequence[dict[str, Any]], total: float | None) -> tuple[float, int]:
    """A run's training time and the number of its iterations that time does not cover.

    ``total`` (the checkpoint's own sum over resumes, :attr:`TrainResult.total_seconds`) is
    exact when known. Otherwise (a checkpoint from before checkpoints carried it) the time is
    the sum of the recorded calls' ``segments``, and an interrupted call leaves a gap: its
    iterations, kept in the checkpoint but never recorded, show as a segment starting past the
    previous one's end (``from`` > the previous ``to``; segments written before segments
    carried ``from`` are taken as contiguous). Those are counted as untimed, so a report can
    say "at least" instead of under-reporting.
    """
    if total is not None:
        return total, 0
    untimed, end = 0, 0
    for segment in segments:
        start = int(segment.get("from", end))
        untimed += max(0, start - end)
        end = int(segment["to"])
    return sum(float(s["seconds"]) for s in segments), untimed


def _stopped_at(message: str) -> int:
    """The meta-iteration named by :func:`train`'s "Training stopped at meta-iteration N of M"."""
    found = re.search(r"meta-iteration (\d+) of", message)
    return int(found.group(1)) if found else 0


def _best_before_divergence(ckpt: Path, device: str | None, error: NonFiniteError) -> TrainResult:
    """The run as it stood before it diverged: its best checkpoint by meta-validation (re-raises
    ``error`` when it diverged before the first meta-validation)."""
    best_path = best_checkpoint_path(ckpt)
    if not best_path.is_file():
        raise error
    best = load_checkpoint(best_path)
    payloads = [best] + ([load_checkpoint(ckpt)] if ckpt.is_file() else [])
    latest = max(payloads, key=lambda p: int(p["iteration"]))
    cfg, bench, learner = restore(best, device=device)
    return TrainResult(
        cfg,
        learner,
        bench,
        list(latest["history"]),
        validation=list(latest["validation"]),
        best_iteration=int(best["best"]["iteration"]),
        best_value=float(best["best"]["value"]),
        total_seconds=latest.get("train_seconds"),  # the time behind the kept history
    )


def _worker(
    out: Path,
    protocol: Protocol,
    settings: Sequence[Setting],
    methods: Sequence[Method],
    progress: bool,
    threads: int | None = None,
    device: str | None = None,
) -> None:
    if threads is not None:  # a spawned worker process: set it up as the CLI sets up its own
        import torch

        from mirroropt.workflow._malloc import keep_freed_memory

        keep_freed_memory()
        torch.set_num_threads(threads)
    runs = _Runs(out, protocol)
    tried: set[str] = set()
    parent = os.getppid()
    while True:
        if threads is not None and os.getppid() != parent:
            return  # the invoking process is gone: stop between jobs, never orphaned for long
        waiting, ran = False, False
        for job in list(runs.jobs(settings, methods)):
            if job.name in tried or runs.done(job):
                continue
            init_from = runs.init_source(job)
            if init_from is None:
                waiting = True
                continue
            if not runs.claim(job):
                waiting = True
                continue
            try:
                if not runs.done(job):  # another worker may have finished it meanwhile
                    _run_job(runs, job, init_from, progress, device)
                    tried.add(job.name)
                    ran = True
            finally:
                runs.release(job)
            break  # re-plan: finishing a job may unlock others (selection, dependencies)
        if not ran:
            if not waiting or not _pending(runs, settings, methods, tried):
                return
            time.sleep(5.0)


def _pending(
    runs: _Runs, settings: Sequence[Setting], methods: Sequence[Method], tried: set[str]
) -> bool:
    """Whether some job can still become runnable (its tuning or its φ₀ source is unfinished)."""
    for setting in settings:
        for method in methods:
            jobs = runs.tune_jobs(setting, method)
            if any(not runs.done(j) and not runs.failed(j) for j in jobs):
                return True
            for seed in runs.protocol.seeds[1:]:
                job = runs.final_job(setting, method, seed)
                if job is not None and not runs.done(job) and not runs.failed(job):
                    return True
    return False


def reproduce(
    out_dir: str | Path,
    protocol: Protocol | None = None,
    *,
    settings: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    publish: str | Path | None = None,
    command: str = "",
    device: str | None = None,
) -> Path:
    """Run (or continue) the protocol in ``out_dir`` and write ``results.md``, ``results.json`` and
    one plot per setting under it (and, with ``publish``, ``<publish>/results.md`` with its plots
    in ``<publish>/img/``).

    Args:
        out_dir: the runs folder; ``protocol.json`` in it must match ``protocol`` (only the
            iteration budgets may grow).
        protocol: the budget and fixed hyperparameters (default :class:`Protocol`).
        settings: keys of :data:`SETTINGS` to run (default all).
        methods: keys of :data:`METHODS` (or map names) to run (default all); MetaMD needs MAML.
        workers: parallel worker processes (one torch thread each).
        progress: progress bars.
        publish: a docs folder to copy the report into.
        command: the command line to print above the tables.
        device: ``"cuda"`` to train and evaluate on a GPU (default the CPU); not part of the
            protocol (a folder may be continued on another device).

    Returns:
        The path of ``results.md``.

    Raises:
        ProtocolError: (a ``ValueError``) on an unknown setting or method, or a
            ``protocol.json`` that disagrees, before any run starts.
    """
    protocol = protocol or Protocol()
    out = Path(out_dir)
    chosen_settings = _select(SETTINGS, settings, "settings")
    chosen_methods = list(
        dict.fromkeys(
            METHODS
            if methods is None
            else [m for k in methods for m in METHODS if k in (m.key, m.map)]  # the caller's order
        )
    )
    if methods is not None:
        known = {m.key for m in METHODS} | {m.map for m in METHODS}
        unknown = sorted(set(methods) - known)
        if unknown:
            raise ProtocolError(
                f"`methods` {unknown} unknown; choose from {sorted(m.key for m in METHODS)}."
            )
    needed = {m.init_from for m in chosen_methods if m.init_from}
    chosen_methods += [m for m in METHODS if m.key in needed and m not in chosen_methods]
    protocol = _keep_budgets(out, protocol, chosen_settings)
    _check_protocol(out, protocol)
    if workers < 1:
        raise ProtocolError(f"`workers` must be ≥ 1, got {workers}.")
    started = time.perf_counter()
    finished = False
    try:
        if workers == 1:
            _worker(out, protocol, chosen_settings, chosen_methods, progress, device=device)
        else:
            import multiprocessing as mp
            import signal

            ctx = mp.get_context("spawn")
            procs = [
                ctx.Process(
                    target=_worker,
                    args=(out, protocol, chosen_settings, chosen_methods, progress, 1, device),
                    daemon=True,
                )
                for _ in range(workers)
            ]

            def stop(signum: int, _frame: Any) -> None:  # SIGTERM/SIGINT: stop the workers too
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                raise SystemExit(128 + signum)

            previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                for i, p in enumerate(procs):
                    p.start()
                    if i + 1 < len(procs):
                        time.sleep(2.0)  # stagger: each worker claims a different first job
                for p in procs:
                    p.join()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        finished = True
    finally:  # every invocation counts towards the folder's wall time, interrupted ones too
        log = out / "invocations.json"
        calls = json.loads(log.read_text()) if log.is_file() else []
        seconds = time.perf_counter() - started
        calls.append({"command": command, "seconds": seconds, "workers": workers})
        if not finished:
            calls[-1]["interrupted"] = True
        tmp = log.with_name(log.name + ".tmp")
        tmp.write_text(json.dumps(calls, indent=1))
        os.replace(tmp, log)
    return results_report(out, publish=publish)


def _select(items: Sequence[Setting], keys: Sequence[str] | None, what: str) -> list[Setting]:
    if keys is None:
        return list(items)
    unknown = sorted(set(keys) - {s.key for s in items})
    if unknown:
        raise ProtocolError(f"`{what}` {unknown} unknown; choose from {[s.key for s in items]}.")
    by_key = {s.key: s for s in items}
    return [by_key[k] for k in dict.fromkeys(keys)]  # the caller's order is the run order


def _keep_budgets(out: Path, protocol: Protocol, chosen: Sequence[Setting]) -> Protocol:
    """``protocol`` with the folder's budget for every setting this invocation does not run (so
    continuing one setting never changes another's), overrides equal to the default dropped."""
    path = out / "protocol.json"
    saved = Protocol.from_dict(json.loads(path.read_text())) if path.is_file() else None
    keys = {s.key for s in chosen}
    budgets = {
        s.key: (protocol.budget(s) if saved is None or s.key in keys else saved.budget(s))
        for s in SETTINGS
    }
    overrides = tuple((k, n) for k, n in budgets.items() if n != protocol._default_budget(k))
    return replace(protocol, budgets=overrides)


def _check_protocol(out: Path, protocol: Protocol) -> None:
    path = out / "protocol.json"
    mine = json.loads(json.dumps(protocol.to_dict()))
    if path.is_file():
        saved = json.loads(path.read_text())
        growing = ("iterations", "sinusoid_iterations", "budgets", "grid")
        fixed = {k: v for k, v in saved.items() if k not in growing}
        new = {k: v for k, v in mine.items() if k not in growing}
        if fixed != new:
            diff = sorted(k for k in new if fixed.get(k) != new[k])
            raise ProtocolError(
                f"`out_dir` {str(out)!r} holds a protocol that differs in {diff}; only the "
                f"iteration budgets and the grid may grow on a folder. Use another --out."
            )
        dropped = sorted(set(saved["grid"]) - set(mine["grid"]))
        if dropped:
            raise ProtocolError(
                f"`grid` {mine['grid']} drops {dropped} already tuned in {str(out)!r}; the grid "
                f"only grows (the runs of every value stay part of the selection)."
            )
        before = Protocol.from_dict(saved)
        for setting in SETTINGS:  # a setting with runs in the folder: its budget only grows
            n, ran = protocol.budget(setting), before.budget(setting)
            if n < ran and (out / setting.key).is_dir():
                raise ProtocolError(
                    f"`{protocol.budget_source(setting.key)}` {n} is below the {ran} already "
                    f"run for {setting.key} in {str(out)!r}; budgets only grow."
                )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=1))


# -------------------------------------------------------------------------------------------------
# the report


def _seed_records(runs: _Runs, setting: Setting, method: Method) -> dict[int, dict[str, Any]]:
    """The finished (selected) run of every seed of ``method``, at the protocol's budget."""
    value = runs.selected(setting, method)
    if value in ("pending", "failed"):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for seed in runs.protocol.seeds:
        job = _Job(setting, method, seed, value)  # type: ignore[arg-type]
        rec = runs.record(job)
        if rec is not None and runs.done(job):  # at the budget: a growing run is not mixed in
            out[seed] = rec
    return out


def _curve(rec: dict[str, Any], shots: str, what: str = "metric") -> list[float]:
    return list(rec["eval"][shots][what]["mean"])


def _aggregate(records: dict[int, dict[str, Any]], shots: str, what: str) -> dict[str, list[float]]:
    curves = [_curve(r, shots, what) for r in records.values()]
    means, halves = [], []
    for k in range(len(curves[0])):
        m, h = seed_ci([c[k] for c in curves])
        means.append(m)
        halves.append(h)
    return {"mean": means, "ci95": halves}


def results_report(
    out_dir: str | Path, *, publish: str | Path | None = None, command: str = ""
) -> Path:
    """Tables, claims, ``results.json`` and plots from everything recorded under ``out_dir``."""
    out = Path(out_dir)
    protocol = Protocol.from_dict(json.loads((out / "protocol.json").read_text()))
    runs = _Runs(out, protocol)
    summary: dict[str, Any] = {"protocol": protocol.to_dict(), "settings": {}}
    parts: list[str] = []
    shown: list[Setting] = []
    plots: list[Path] = []
    for setting in SETTINGS:
        per_method = {m.key: _seed_records(runs, setting, m) for m in METHODS}
        tuning = {
            m.key: {
                str(j.map_meta_lr): _tuning_cell(runs.record(j) or {})
                for j in runs.tune_jobs(setting, m)
                if runs.done(j) or runs.diverged_early(j)
            }
            for m in METHODS
        }
        growing = any(runs.record(j) for m in METHODS for j in runs.tune_jobs(setting, m))
        if not any(per_method.values()) and not any(tuning.values()) and not growing:
            continue
        png = _plot_setting(setting, per_method, out / "img" / f"{setting.key}.png")
        if png is not None:
            plots.append(png)
        section, info = _setting_report(runs, setting, per_method, tuning, png)
        parts.append(section)
        shown.append(setting)
        summary["settings"][setting.key] = info
    claims = _claims(summary)
    header = _header(out, protocol, command, shown)
    text = header + _claims_table(claims) + "\n".join(parts)
    summary["claims"] = claims
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(text)
    if publish is not None:
        dest = Path(publish)
        (dest / "img").mkdir(parents=True, exist_ok=True)
        (dest / "results.md").write_text(text)
        shutil.copy(out / "results.json", dest / "results.json")  # every per-seed curve
        for png in plots:
            shutil.copy(png, dest / "img" / png.name)
        for setting in SETTINGS:  # a plot of a setting this report does not show is stale
            stale = dest / "img" / f"{setting.key}.png"
            if stale.is_file() and all(png.name != stale.name for png in plots):
                stale.unlink()
    return out / "results.md"


def _tuning_cell(rec: dict[str, Any]) -> dict[str, Any]:
    """A tuning run's score (``None`` if it diverged before any) and where it diverged."""
    diverged = rec.get("diverged") or {}
    return {"best_value": rec.get("best_value"), "diverged_at": diverged.get("iteration")}


def _one_command(protocol: Protocol, out: Path) -> list[str]:
    """The header's lines that give the single command running ``protocol`` from scratch."""
    try:
        command = protocol.command(out)
    except ProtocolError as error:
        return [f"This protocol was set through the Python API ({error})", ""]
    return [
        "From an empty folder, one command runs this whole protocol (resumable; `--workers N` "
        "trains N runs at a time, `--publish docs` writes this page):",
        "",
        "```bash",
        command,
        "```",
        "",
    ]


def _header(out: Path, protocol: Protocol, command: str, shown: Sequence[Setting]) -> str:
    budgets = ", ".join(f"{protocol.budget(s)} ({s.title})" for s in shown) or "none run yet"
    log = out / "invocations.json"
    calls = json.loads(log.read_text()) if log.is_file() else []
    wall = sum(c["seconds"] for c in calls)
    # every distinct command that ran on this folder, in order (resumes, fixes, a grown budget)
    commands = (
        [command] if command else list(dict.fromkeys(c["command"] for c in calls if c["command"]))
    )
    lines = [
        "# Results",
        "",
        "Generated by"
        + (" these invocations, in order, on one folder" if len(commands) > 1 else ""),
        "",
        "```bash",
        *(commands or ["python -m mirroropt reproduce"]),
        "```",
        "",
        *_one_command(protocol, out),
        f"Protocol: seeds {list(protocol.seeds)} (map meta step sizes tuned on seed "
        f"{protocol.tune_seed} over {list(protocol.grid)}, chosen by meta-validation); "
        f"meta-iterations per run: {budgets}; meta-batch {protocol.meta_batch}, K = {protocol.steps}, "
        f"α = {protocol.lr}, Adam β = {protocol.meta_lr}; Conv4-{protocol.width} "
        f"({protocol.norm} norm); meta-validation every {protocol.val_every} iterations on "
        f"{protocol.val_tasks} tasks (best checkpoint kept); meta-test on {protocol.eval_tasks} "
        f"tasks (the same for every method and seed), k = 0 … {protocol.eval_steps}. "
        f"Wall time of all invocations on this folder: {wall / 3600:.2f} h "
        f"({len(calls)} invocation(s)).",
        "",
        "Cells: mean over seeds ± Student-t 95% CI across seeds (accuracy in %). Δ: paired "
        "difference to MAML on the same seeds, with the paired t-test's p-value. A method whose "
        "seeds are not all finished shows the seeds it has (the CI needs two). "
        "`results.json` beside the runs holds every per-seed curve with its test-task CI. "
        "'diverged' in a cell: some test task's adapted model was not finite at that k (the map "
        "diverges beyond the training horizon); 'diverged at N' after a best iteration: training "
        "turned non-finite at meta-iteration N and the run is its best checkpoint before that. "
        "'train min/seed' is wall time on a shared machine (other work ran alongside): not a "
        "speed comparison (see docs/performance.md for that); '≥' where some of a run's "
        "iterations were trained by an interrupted call whose time was not recorded (runs begun "
        "before checkpoints carried their training time; per seed: `untimed_iterations` in "
        "results.json).",
        "",
        "Reading these numbers: FontGlot's meta-test split is Ethiopic-heavy and easier than "
        "Omniglot's (docs/data.md); budgets here are CPU budgets, far below the papers' 60k "
        "iterations (`benchmarks/evidence_gpu.sh` runs that budget on a GPU); with three seeds "
        "the t quantile is 4.30, so only large, consistent differences reach p < 0.05.",
        "",
    ]
    return "\n".join(lines) + "\n"


def _fmt(mean: float, half: float, accuracy: bool) -> str:
    if not math.isfinite(mean):
        return "diverged"  # some test task's adapted model is not finite (mean inf or NaN)
    if math.isnan(half):
        return f"{100 * mean:.1f}" if accuracy else f"{mean:.3f}"
    return f"{100 * mean:.1f} ± {100 * half:.1f}" if accuracy else f"{mean:.3f} ± {half:.3f}"


def _setting_report(
    runs: _Runs,
    setting: Setting,
    per_method: dict[str, dict[int, dict[str, Any]]],
    tuning: dict[str, dict[str, Any]],
    plot: Path | None = None,
) -> tuple[str, dict[str, Any]]:
    accuracy = setting.config["benchmark"] != "sinusoid"
    shots_list = [str(s) for s in setting.eval_shots] or [str(setting.config["k_shot"])]
    ks = (0, 1, 2, 3, 5, 10) if accuracy else (0, 1, 5, 10)
    maml = per_method.get("maml", {})
    budget = runs.protocol.budget(setting)
    lines = [f"## {setting.title}", "", f"{budget} meta-iterations per run.", ""]
    if plot is not None:  # img/ sits beside results.md, in the runs folder and the published one
        lines += [f"![{setting.title}: mean over seeds vs inner steps](img/{plot.name})", ""]
    info: dict[str, Any] = {"budget": budget, "methods": {}}
    for shots in shots_list:
        if len(shots_list) > 1:
            lines += [f"### {shots}-shot evaluation", ""]
        head = " | ".join(f"k = {k}" for k in ks)
        lines += [
            f"| method | seeds | map meta-lr | {head} | Δ k = 1 (p) | Δ k = 5 (p) | best it. | "
            "train min/seed |",
            "|" + " --- |" * (len(ks) + 7),
        ]
        for method in METHODS:
            recs = per_method.get(method.key, {})
            if not recs:
                status = _status(runs, setting, method)
                lines.append(f"| {method.label} | {status} |" + " |" * (len(ks) + 5))
                continue
            seeds = sorted(recs)
            value = runs.selected(setting, method)
            curve = (
                _aggregate(recs, shots, "metric")
                if len(recs) > 1
                else {"mean": _curve(recs[seeds[0]], shots), "ci95": [math.nan] * 11}
            )
            cells = [_fmt(curve["mean"][k], curve["ci95"][k], accuracy) for k in ks]
            deltas = []
            entry: dict[str, Any] = {
                "label": method.label,
                "seeds": seeds,
                "map_meta_lr": value,
                "metric": curve,
                "per_seed": {
                    str(s): {
                        "metric": recs[s]["eval"][shots]["metric"],
                        "support_loss": recs[s]["eval"][shots]["support_loss"],
                        "best_iteration": recs[s]["best_iteration"],
                        "best_value": recs[s]["best_value"],
                        "train_seconds": recs[s]["train_seconds"],
                        "untimed_iterations": recs[s].get("untimed_iterations", 0),
                        "diverged_at": (recs[s].get("diverged") or {}).get("iteration"),
                    }
                    for s in seeds
                },
                "paired_vs_maml": {},
            }
            common = sorted(set(seeds) & set(maml))
            for k in (1, 5):
                if method.key == "maml" or len(common) < 2:
                    deltas.append("—")
                    continue
                test = paired_t_test(
                    [_curve(recs[s], shots)[k] for s in common],
                    [_curve(maml[s], shots)[k] for s in common],
                )
                entry["paired_vs_maml"][str(k)] = test
                scale = 100 if accuracy else 1
                deltas.append(
                    f"{scale * test['mean']:+.{1 if accuracy else 3}f} ({test['p']:.2f})"
                    if math.isfinite(test["p"])
                    else "diverged"
                )
            best_its = ", ".join(
                str(recs[s]["best_iteration"])
                + (
                    f" (diverged at {recs[s]['diverged']['iteration']})"
                    if recs[s].get("diverged")
                    else ""
                )
                for s in seeds
            )
            minutes = sum(recs[s]["train_seconds"] for s in seeds) / 60 / len(seeds)
            untimed = sum(recs[s].get("untimed_iterations", 0) for s in seeds)
            # an interrupted call's iterations whose time was not recorded: a lower bound
            train_min = f"≥ {minutes:.1f}" if untimed else f"{minutes:.1f}"
            mlr = "—" if value is None else f"{value:g}"
            if value is not None and len(runs.protocol.grid) > 1:
                if value in (min(runs.protocol.grid), max(runs.protocol.grid)):
                    mlr += " (edge)"  # the optimum may lie outside the grid
            lost = [  # seeds of the chosen value that ended without a result
                f"seed {seed} diverged at {(runs.record(job) or {})['diverged']['iteration']}"
                for seed in runs.protocol.seeds
                if runs.diverged_early(job := _Job(setting, method, seed, value))  # type: ignore[arg-type]
            ]
            n_seeds = f"{len(seeds)} ({'; '.join(lost)})" if lost else str(len(seeds))
            lines.append(
                f"| {method.label} | {n_seeds} | {mlr} | "
                + " | ".join(cells)
                + f" | {deltas[0]} | {deltas[1]} | {best_its} | {train_min} |"
            )
            info["methods"].setdefault(shots, {})[method.key] = entry
        lines.append("")
    tuned = {k: v for k, v in tuning.items() if v and len(v) > 1}
    if tuned:
        lines += [
            f"Tuning (seed {runs.protocol.tune_seed}, best meta-validation "
            f"{'accuracy' if accuracy else 'MSE'} at k = K per map meta step size; "
            "the chosen one is used for every seed):",
            "",
            "| method | " + " | ".join(f"{v:g}" for v in runs.protocol.grid) + " |",
            "|" + " --- |" * (len(runs.protocol.grid) + 1),
        ]
        for method in METHODS:
            vals = tuned.get(method.key)
            if vals:
                cells = [_fmt_tuning(vals.get(str(v)), accuracy) for v in runs.protocol.grid]
                lines.append(f"| {method.label} | " + " | ".join(cells) + " |")
        lines.append("")
    info["tuning"] = tuning
    return "\n".join(lines) + "\n", info


def _fmt_tuning(cell: dict[str, Any] | None, accuracy: bool) -> str:
    if cell is None:
        return "—"
    if cell["best_value"] is None:
        return f"diverged at {cell['diverged_at']}"
    text = _fmt(cell["best_value"], math.nan, accuracy)
    return text if cell["diverged_at"] is None else f"{text} (diverged at {cell['diverged_at']})"


def _status(runs: _Runs, setting: Setting, method: Method) -> str:
    jobs = runs.tune_jobs(setting, method)
    for job in jobs:
        rec = runs.record(job)
        if runs.failed(job) and not runs.diverged_early(job):
            return f"failed ({rec['status'].splitlines()[0][8:100]})"  # type: ignore[index]
    if runs.selected(setting, method) == "failed":
        return "failed (every tuning value diverged before its first meta-validation)"
    total = len(jobs) + len(runs.protocol.seeds) - 1
    done = sum(
        runs.done(j) or runs.diverged_early(j) for j in jobs
    )  # ended, with or without a result
    for seed in runs.protocol.seeds[1:]:
        final = runs.final_job(setting, method, seed)
        done += final is not None and (runs.done(final) or runs.diverged_early(final))
    budget = runs.protocol.budget(setting)
    if done:
        return f"{done} of {total} runs ended at {budget} meta-iterations"
    ran = [rec["config"]["iterations"] for rec in map(runs.record, jobs) if rec is not None]
    if ran:  # runs at a smaller budget, growing (their rows come back when they end)
        return f"not yet at {budget} meta-iterations (ran {max(ran)} before)"
    return "not run"


def _plot_setting(
    setting: Setting, per_method: dict[str, dict[int, dict[str, Any]]], path: Path
) -> Path | None:
    from mirroropt.workflow._report import plot_curves

    shots = str(setting.config["k_shot"])
    results = {}
    for method in METHODS:
        recs = per_method.get(method.key, {})
        if len(recs) < 2:
            continue
        results[f"{method.label} ({len(recs)} seeds)"] = EvalResult(
            recs[min(recs)]["eval"][shots]["metric_name"],
            _aggregate(recs, shots, "metric"),
            _aggregate(recs, shots, "query_loss"),
            _aggregate(recs, shots, "support_loss"),
            len(recs),
        )
    if not results:
        return None
    return plot_curves(
        results,
        path,
        title=f"{setting.title}: mean over seeds, 95% CI across seeds",
        horizon=int(
            next(iter(per_method.get("maml", {}).values()), {}).get("config", {}).get("steps", 5)
        ),
    )


# -------------------------------------------------------------------------------------------------
# claims of the seed papers


def _claims(summary: dict[str, Any]) -> list[dict[str, str]]:
    """Verdicts (holds / fails / not supported / not testable here) for the papers' claims."""
    claims: list[dict[str, str]] = []
    for key, info in summary["settings"].items():
        methods_by_shots = info["methods"]
        if not methods_by_shots:
            continue
        shots = sorted(methods_by_shots, key=int)[len(methods_by_shots) // 2]
        methods = methods_by_shots[shots]
        accuracy = not key.startswith("sinusoid")
        sign = 1.0 if accuracy else -1.0
        maml = methods.get("maml")
        if maml is None:
            continue
        # 1. one learned step beats several GD steps (MetaMiDA: > 54% vs < 40%, miniImageNet)
        for mkey, entry in methods.items():
            if mkey in ("maml", "metamd"):
                continue
            one = entry["per_seed"]
            common = sorted(set(one) & set(maml["per_seed"]))
            if len(common) < 2:
                continue
            test = paired_t_test(
                [sign * one[s]["metric"]["mean"][1] for s in common],
                [sign * maml["per_seed"][s]["metric"]["mean"][5] for s in common],
            )
            claims.append(
                _claim(
                    "after one step a learned map beats GD after several (k = 1 vs MAML k = 5)",
                    key,
                    entry["label"],
                    test,
                    accuracy,
                )
            )
        # 2. the ranking MetaMiDA > Meta-Curvature > Meta-SGD > MAML at k = K
        for top in ("convex-potential", "block-iaf"):
            order = [top, "meta-curvature", "meta-sgd", "maml"]
            claim = (
                f"MetaMiDA ({top.replace('-', ' ')}) > Meta-Curvature > Meta-SGD > MAML at k = K"
            )
            missing = [m for m in order if len(methods.get(m, {}).get("per_seed", {})) < 2]
            if missing:
                claims.append(_not_run_claim(claim, key, missing))
                continue
            verdicts = []
            for hi, lo in itertools.pairwise(order):
                a, b = methods[hi]["per_seed"], methods[lo]["per_seed"]
                common = sorted(set(a) & set(b))
                test = paired_t_test(
                    [sign * a[s]["metric"]["mean"][5] for s in common],
                    [sign * b[s]["metric"]["mean"][5] for s in common],
                )
                verdicts.append((hi, lo, test))
            if all(t["mean"] > 0 and t["p"] < 0.05 for _, _, t in verdicts):
                verdict = "holds"
            elif any(t["mean"] < 0 and t["p"] < 0.05 for _, _, t in verdicts):
                verdict = "fails"
            else:
                verdict = "not supported (within noise)"
            detail = "; ".join(
                f"{hi} − {lo}: {(100 if accuracy else 1) * t['mean']:+.2f} (p {t['p']:.2f})"
                for hi, lo, t in verdicts
            )
            claims.append(
                {
                    "claim": claim,
                    "setting": key,
                    "method": "—",
                    "verdict": verdict,
                    "numbers": detail,
                }
            )
        # 3. MetaMD converges faster without query data: support loss at k = 1 … 5 vs GD from the
        #    same φ₀ (MAML's), which is the MAML row itself
        md_claim = (
            "MetaMD converges faster without query data (support loss at k = 5 below "
            "GD's from the same φ₀)"
        )
        if len(methods.get("metamd", {}).get("per_seed", {})) < 2:
            claims.append(_not_run_claim(md_claim, key, ["metamd"]))
        else:
            md = methods["metamd"]["per_seed"]
            common = sorted(set(md) & set(maml["per_seed"]))
            if len(common) >= 2:
                losses = [
                    paired_t_test(
                        [maml["per_seed"][s]["support_loss"]["mean"][k] for s in common],
                        [md[s]["support_loss"]["mean"][k] for s in common],
                    )
                    for k in (1, 5)
                ]
                claims.append(
                    _claim(
                        md_claim,
                        key,
                        methods["metamd"]["label"],
                        losses[1],
                        False,
                        unit="support-loss reduction",
                    )
                )
        # 4. MetaMiDA's Remark 1: bounded (sigmoid) ICNN weights, against softplus (which decides
        #    ConvexPotential's default), both with the anchored start that trains
        sig_claim = (
            "MetaMiDA Remark 1: bounded (sigmoid) convex-potential weights are at least as good "
            "as softplus at k = K (anchored start)"
        )
        pair = ("convex-potential-anchored-sigmoid", "convex-potential-anchored")
        missing = [m for m in pair if len(methods.get(m, {}).get("per_seed", {})) < 2]
        if missing:
            claims.append(_not_run_claim(sig_claim, key, missing))
        else:
            a, b = methods[pair[0]]["per_seed"], methods[pair[1]]["per_seed"]
            common = sorted(set(a) & set(b))
            test = paired_t_test(
                [sign * a[s]["metric"]["mean"][5] for s in common],
                [sign * b[s]["metric"]["mean"][5] for s in common],
            )
            entry = _claim(sig_claim, key, "sigmoid − softplus", test, accuracy)
            if entry["verdict"].startswith("not supported"):  # "at least as good" is the claim
                entry["verdict"] = "no detectable difference"
            claims.append(entry)
    return claims


def _not_run_claim(text: str, setting: str, missing: list[str]) -> dict[str, str]:
    return {
        "claim": text,
        "setting": setting,
        "method": "—",
        "verdict": "not run yet",
        "numbers": f"needs ≥ 2 finished seeds of {', '.join(missing)}",
    }


def _claim(
    text: str, setting: str, label: str, test: dict[str, float], accuracy: bool, unit: str = ""
) -> dict[str, str]:
    if test["mean"] > 0 and test["p"] < 0.05:
        verdict = "holds"
    elif test["mean"] < 0 and test["p"] < 0.05:
        verdict = "fails"
    else:
        verdict = "not supported (within noise)"
    scale = 100 if accuracy else 1
    what = unit or ("accuracy points" if accuracy else "MSE reduction")
    return {
        "claim": text,
        "setting": setting,
        "method": label,
        "verdict": verdict,
        "numbers": f"{scale * test['mean']:+.2f} {what} ± {scale * test['ci95']:.2f} "
        f"(paired t, n = {int(test['n'])}, p = {test['p']:.3f})",
    }


def _claims_table(claims: list[dict[str, str]]) -> str:
    if not claims:
        return ""
    lines = [
        "## Claims of the seed papers",
        "",
        "A claim *holds* when the paired difference over seeds is positive with p < 0.05, "
        "*fails* when it is negative with p < 0.05, and is *not supported* otherwise.",
        "",
        "| claim | setting | method | verdict | numbers |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {c['claim']} | {c['setting']} | {c['method']} | {c['verdict']} | {c['numbers']} |"
        for c in claims
    ]
    return "\n".join(lines) + "\n\n"
