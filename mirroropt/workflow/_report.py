"""Tables (markdown, JSON) and plots (PNG) of evaluation curves and training logs."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mirroropt.workflow._evaluate import EvalResult
from mirroropt.workflow._optional import require_matplotlib

__all__ = ["markdown_table", "plot_curves", "plot_training", "write_report"]


def _fmt(mean: float, half: float, metric_name: str) -> str:
    if metric_name == "accuracy":
        return f"{100 * mean:.1f} ± {100 * half:.1f}"
    return f"{mean:.3f} ± {half:.3f}"


def markdown_table(results: Mapping[str, EvalResult], *, steps: Sequence[int] | None = None) -> str:
    """A markdown table: one row per result, one column per inner step k (mean ± 95% CI).

    Accuracies are shown in percent. ``steps`` defaults to every k of the shortest curve.

    Raises:
        ValueError: if ``results`` is empty or a requested k exceeds a curve.
    """
    if not results:
        raise ValueError("`results` must hold at least one evaluation, got none.")
    longest = min(r.steps for r in results.values())
    ks = list(range(longest + 1)) if steps is None else list(steps)
    bad = [k for k in ks if not 0 <= k <= longest]
    if bad:
        raise ValueError(f"`steps` {bad} outside the evaluated range 0 … {longest}.")
    first = next(iter(results.values()))
    unit = " (%)" if first.metric_name == "accuracy" else ""
    header = "| method | " + " | ".join(f"k = {k}" for k in ks) + " |"
    lines = [
        f"{first.metric_name}{unit}, mean ± 95% CI over {first.tasks} test tasks",
        "",
        header,
        "|" + " --- |" * (len(ks) + 1),
    ]
    for label, r in results.items():
        cells = [_fmt(r.metric["mean"][k], r.metric["ci95"][k], r.metric_name) for k in ks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(
    results: Mapping[str, EvalResult],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    horizon: int | None = None,
) -> Path:
    """Two panels: query metric vs inner step (MetaMiDA Fig. 2) and support (training) loss vs
    step (Fig. 1), with bands labelled "95% CI", accuracy in % (the tables' unit), integer step
    ticks and a dashed marker at the training horizon K (``horizon``). Returns the PNG path."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_m, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    first = next(iter(results.values()))
    scale = 100.0 if first.metric_name == "accuracy" else 1.0
    # the log panel cannot show a band edge ≤ 0: such edges run to the panel's floor, half the
    # smallest positive mean or edge, instead of vanishing
    positive = [
        v
        for r in results.values()
        for m, h in zip(r.support_loss["mean"], r.support_loss["ci95"])
        for v in (m, m - h)
        if v > 0 and math.isfinite(v)
    ]
    floor = min(positive, default=1e-12) / 2
    for i, (label, r) in enumerate(results.items()):
        ks = list(range(r.steps + 1))
        for ax, curve, factor in ((ax_m, r.metric, scale), (ax_l, r.support_loss, 1.0)):
            mean = [factor * m for m in curve["mean"]]
            half = [factor * h for h in curve["ci95"]]
            lower = [m - h for m, h in zip(mean, half)]
            upper = [m + h for m, h in zip(mean, half)]
            if ax is ax_l:
                lower = [v if v > 0 else floor for v in lower]
            else:  # a t-interval over few seeds can pass 0 (accuracy, MSE) or 100% (accuracy)
                lower = [max(v, 0.0) for v in lower]
                if first.metric_name == "accuracy":
                    upper = [min(v, scale) for v in upper]
            (line,) = ax.plot(ks, mean, marker="o", ms=3, label=label)
            ax.fill_between(
                ks,
                lower,
                upper,
                color=line.get_color(),
                alpha=0.15,
                label="95% CI" if i == 0 and ax is ax_m else None,
            )
    unit = " (%)" if first.metric_name == "accuracy" else ""
    ax_m.set(
        xlabel="inner step k",
        ylabel=f"query {first.metric_name}{unit}",
        title=f"query {first.metric_name} vs inner steps",
    )
    ax_l.set(
        xlabel="inner step k",
        ylabel="support loss (log scale)",
        title="support loss vs inner steps",
    )
    ax_l.set_yscale("log")
    for ax in (ax_m, ax_l):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if horizon is not None:
            ax.axvline(
                horizon,
                color="grey",
                ls="--",
                lw=1,
                label=f"training horizon K = {horizon}" if ax is ax_m else None,
            )
    ax_m.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def plot_training(
    histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike[str]
) -> Path:
    """Meta-training loss per iteration (moving average over 10), one line per run."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, rows in histories.items():
        losses = [r["loss"] for r in rows]
        smooth = [
            sum(losses[max(0, i - 9) : i + 1]) / len(losses[max(0, i - 9) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot([r["iteration"] for r in rows], smooth, label=label)
    ax.set(xlabel="meta-iteration", ylabel="meta-objective (moving avg.)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str | os.PathLike[str]) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    results: Mapping[str, EvalResult],
    out_dir: str | os.PathLike[str],
    *,
    name: str = "eval",
    steps: Sequence[int] | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and (``plot``) ``<name>.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps({k: r.to_dict() for k, r in results.items()}, indent=1))
    paths["md"].write_text(markdown_table(results, steps=steps))
    if plot:
        paths["png"] = plot_curves(results, out / f"{name}.png")
    return paths
