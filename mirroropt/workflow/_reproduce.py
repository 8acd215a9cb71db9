"""The reproduction table of docs/results.md: every method under one protocol, one run each."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mirroropt.maps import MAPS
from mirroropt.workflow._evaluate import evaluate
from mirroropt.workflow._learner import TrainConfig
from mirroropt.workflow._train import train

__all__ = [
    "METHODS",
    "SETTINGS",
    "Method",
    "Setting",
    "reproduce",
    "results_plots",
    "results_table",
]


@dataclass(frozen=True)
class Method:
    """A row of the table: a map, a meta-objective and the meta-optimizer settings."""

    label: str
    map: str
    objective: str = "query"
    meta_optimizer: str = "adam"


@dataclass(frozen=True)
class Setting:
    """A column group: a benchmark configuration and how it is evaluated."""

    key: str
    title: str
    config: dict[str, Any]
    eval_shots: tuple[int, ...] = ()  # sinusoid: evaluate this model at other support sizes


METHODS: tuple[Method, ...] = (
    Method("MAML (Identity)", "identity"),
    Method("Meta-SGD (Diagonal)", "diagonal"),
    Method("Meta-Curvature (Kronecker)", "kronecker"),
    Method("MetaMiDA blockIAF", "block_iaf"),
    Method("MetaMiDA convex potential", "convex_potential"),
    Method("MetaMD (Diagonal, regret bound)", "diagonal", objective="metamd"),
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


def reproduce(
    out_dir: str | Path,
    *,
    iterations: int,
    sinusoid_iterations: int,
    eval_tasks: int,
    width: int = 32,
    norm: str = "group",
    meta_batch: int = 4,
    seed: int = 0,
    settings: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Meta-train and evaluate every (setting, method) pair not yet in ``out_dir``; write tables.

    Protocol: K = 5 inner steps at α = 0.01 for every method; evaluation at k = 0 … 10 on
    ``eval_tasks`` meta-test tasks (the same tasks for every method). Each finished pair is saved
    as ``out_dir/<setting>/<map>-<objective>.json`` (evaluation + training log + seconds), so a
    rerun only fills in what is missing (e.g. maps that landed later). Maps not in
    :data:`mirroropt.maps.MAPS` are recorded as not run; a run that raises is recorded with its
    error.
    """
    out = Path(out_dir)
    chosen = [s for s in SETTINGS if settings is None or s.key in settings]
    rows = [m for m in METHODS if methods is None or m.map in methods or m.label in methods]
    for setting in chosen:
        for method in rows:
            path = out / setting.key / f"{method.map}-{method.objective}.json"
            if path.exists() and json.loads(path.read_text()).get("status") == "ok":
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if method.map not in MAPS:
                path.write_text(json.dumps({"status": "missing map", "method": method.label}))
                continue
            is_sin = setting.config["benchmark"] == "sinusoid"
            cfg = TrainConfig(
                **{
                    "meta_batch": meta_batch,
                    "width": width,
                    "norm": norm,
                    **setting.config,
                    "map": method.map,
                    "objective": method.objective,
                    "meta_optimizer": method.meta_optimizer,
                    "steps": 5,
                    "lr": 0.01,
                    "iterations": sinusoid_iterations if is_sin else iterations,
                    "seed": seed,
                }
            )
            record: dict[str, Any] = {"method": method.label, "config": cfg.to_dict()}
            try:
                t0 = time.perf_counter()
                run = train(cfg, progress=progress)
                record["train_seconds"] = time.perf_counter() - t0
                record["history"] = run.history
                evals = {}
                for shots in setting.eval_shots or (cfg.k_shot,):
                    bench = run.benchmark
                    if shots != cfg.k_shot:
                        from mirroropt.workflow._benchmarks import build_benchmark

                        bench = build_benchmark(replace(cfg, k_shot=shots))
                    t1 = time.perf_counter()
                    result = evaluate(
                        run.learner,
                        bench,
                        lr=cfg.lr,
                        steps=10,
                        tasks=eval_tasks,
                        seed=seed + 1000,
                        label=method.label,
                        progress=progress,
                    )
                    record.setdefault("eval_seconds", 0.0)
                    record["eval_seconds"] += time.perf_counter() - t1
                    evals[str(shots)] = result.to_dict()
                record["eval"] = evals
                record["status"] = "ok"
            except Exception as err:  # recorded, not hidden: the table shows the failure
                record["status"] = f"failed: {type(err).__name__}: {err}"
                record["traceback"] = traceback.format_exc()
            path.write_text(json.dumps(record))
    table = results_table(out)
    (out / "results.md").write_text(table)
    results_plots(out)
    return out / "results.md"


def results_plots(out_dir: str | Path) -> list[Path]:
    """One PNG per setting under ``out_dir``: accuracy (or MSE) and support loss vs inner step,
    every finished method, 95% CI bands (sinusoid: the 10-shot evaluation)."""
    from mirroropt.workflow._evaluate import EvalResult
    from mirroropt.workflow._report import plot_curves

    out, paths = Path(out_dir), []
    for setting in SETTINGS:
        results = {}
        for m in METHODS:
            p = out / setting.key / f"{m.map}-{m.objective}.json"
            rec = json.loads(p.read_text()) if p.exists() else {}
            if rec.get("status") == "ok":
                shots = str(rec["config"]["k_shot"])
                results[m.label] = EvalResult.from_dict(rec["eval"][shots])
        if results:
            paths.append(plot_curves(results, out / f"{setting.key}.png"))
    return paths


def _cell(result: dict[str, Any], k: int) -> str:
    mean, half = result["metric"]["mean"][k], result["metric"]["ci95"][k]
    if result["metric_name"] == "accuracy":
        return f"{100 * mean:.1f} ± {100 * half:.1f}"
    return f"{mean:.3f} ± {half:.3f}"


def results_table(out_dir: str | Path) -> str:
    """The markdown tables of everything recorded under ``out_dir``."""
    out = Path(out_dir)
    parts = []
    for setting in SETTINGS:
        folder = out / setting.key
        if not folder.is_dir():
            continue
        records = {
            m.label: json.loads(p.read_text())
            for m in METHODS
            if (p := folder / f"{m.map}-{m.objective}.json").exists()
        }
        if not records:
            continue
        parts.append(f"### {setting.title}\n")
        ks: tuple[int, ...]
        if setting.eval_shots:
            ks = (0, 1, 5, 10)
            head = " | ".join(f"{s}-shot k = {k}" for s in setting.eval_shots for k in ks)
            parts.append(f"| method | {head} | train s |")
            parts.append("|" + " --- |" * (len(setting.eval_shots) * len(ks) + 2))
        else:
            ks = (0, 1, 2, 3, 4, 5, 10)
            parts.append("| method | " + " | ".join(f"k = {k}" for k in ks) + " | train s |")
            parts.append("|" + " --- |" * (len(ks) + 2))
        for label, rec in records.items():
            if rec.get("status") != "ok":
                status = rec.get("status", "?")
                parts.append(f"| {label} | not run ({status.splitlines()[0][:120]}) |")
                continue
            shots = setting.eval_shots or (rec["config"]["k_shot"],)
            cells = [_cell(rec["eval"][str(s)], k) for s in shots for k in ks]
            parts.append(f"| {label} | " + " | ".join(cells) + f" | {rec['train_seconds']:.0f} |")
        parts.append("")
    return "\n".join(parts) + "\n"
