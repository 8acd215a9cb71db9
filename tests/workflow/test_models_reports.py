"""Backbones (shapes, errors) and report writers (table content, plots, errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mirroropt.models import Conv4, SinusoidMLP
from mirroropt.workflow import EvalResult, markdown_table, plot_training, write_report


def test_conv4_shapes_and_parameter_count() -> None:
    net = Conv4(5, width=8)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    big = Conv4(5, in_channels=3, width=8, image_size=84, norm="group", groups=2)
    assert big(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
    conv = (1 * 8 * 9 + 8) + 3 * (8 * 8 * 9 + 8) + 4 * 16  # convs + 4 norms (γ, β)
    assert sum(p.numel() for p in net.parameters()) == conv + 8 * 5 + 5
    assert not list(net.buffers())  # batch statistics only: nothing to mutate under vmap
    assert SinusoidMLP()(torch.zeros(3, 1)).shape == (3, 1)
    assert sum(p.numel() for p in SinusoidMLP().parameters()) == 40 + 40 + 1600 + 40 + 41


def test_model_errors() -> None:
    with pytest.raises(ValueError, match=r"`n_way` must be an int ≥ 2, got 1"):
        Conv4(1)
    with pytest.raises(ValueError, match=r"`width` must be a positive int, got 0"):
        Conv4(5, width=0)
    with pytest.raises(ValueError, match=r"`norm` must be 'batch' or 'group', got 'layer'"):
        Conv4(5, norm="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`image_size` must be 28 or 84, got 32"):
        Conv4(5, image_size=32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`groups` \(3\) must divide `width` \(8\)"):
        Conv4(5, width=8, norm="group", groups=3)
    with pytest.raises(ValueError, match=r"`hidden` must be a positive int, got -2"):
        SinusoidMLP(-2)


def _result(label: str, acc: list[float]) -> EvalResult:
    curve = {"mean": acc, "ci95": [0.01] * len(acc)}
    return EvalResult(
        "accuracy", curve, curve, {"mean": [1.0] * len(acc), "ci95": [0.1] * len(acc)}, 600, label
    )


def test_markdown_table_and_files(tmp_path: Path) -> None:
    results = {"MAML": _result("MAML", [0.2, 0.5, 0.6]), "MD": _result("MD", [0.2, 0.7, 0.8])}
    table = markdown_table(results, steps=[0, 2])
    assert "| method | k = 0 | k = 2 |" in table
    assert (
        "| MAML | 20.0 ± 1.0 | 60.0 ± 1.0 |" in table
        and "| MD | 20.0 ± 1.0 | 80.0 ± 1.0 |" in table
    )
    assert "over 600 test tasks" in table
    paths = write_report(results, tmp_path, name="r")
    assert EvalResult.from_dict(__import__("json").loads(paths["json"].read_text())["MD"]).metric[
        "mean"
    ] == [0.2, 0.7, 0.8]
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    png = plot_training(
        {"a": [{"iteration": 1, "loss": 2.0}, {"iteration": 2, "loss": 1.0}]}, tmp_path / "t.png"
    )
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"`results` must hold at least one evaluation, got none"):
        markdown_table({})
    with pytest.raises(ValueError, match=r"`steps` \[5\] outside the evaluated range 0 … 2"):
        markdown_table(results, steps=[5])


def test_log_panel_bands_with_an_edge_below_zero_run_to_the_floor_not_vanish(
    tmp_path, monkeypatch
) -> None:
    from mirroropt.workflow import _report
    from mirroropt.workflow._evaluate import EvalResult

    curve = {"mean": [0.5, 0.6, 0.7], "ci95": [0.1, 0.1, 0.1]}
    loss = {"mean": [1.0, 0.1, 0.01], "ci95": [0.5, 0.2, 0.05]}  # two lower edges below 0
    seen = {}
    monkeypatch.setattr(_report, "_save", lambda plt, fig, path: seen.setdefault("fig", fig))
    _report.plot_curves({"m": EvalResult("accuracy", curve, loss, loss, 10)}, tmp_path / "p.png")
    ax_l = seen["fig"].axes[1]
    (band,) = ax_l.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == 0.01 / 2  # half the smallest positive value: drawn, at the floor
    assert ys.max() == 1.5  # the upper edges are untouched


def test_accuracy_bands_stay_within_0_and_100_percent(tmp_path, monkeypatch) -> None:
    from mirroropt.workflow import _report
    from mirroropt.workflow._evaluate import EvalResult

    curve = {"mean": [0.02, 0.5, 0.97], "ci95": [0.05, 0.1, 0.08]}  # edges at -3% and 105%
    loss = {"mean": [1.0, 0.5, 0.2], "ci95": [0.1, 0.1, 0.1]}
    seen = {}
    monkeypatch.setattr(_report, "_save", lambda plt, fig, path: seen.setdefault("fig", fig))
    _report.plot_curves({"m": EvalResult("accuracy", curve, loss, loss, 10)}, tmp_path / "p.png")
    (band,) = seen["fig"].axes[0].collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == 0.0 and ys.max() == 100.0
    assert 60.0 in ys.round(6) and 40.0 in ys.round(6)  # an edge inside the range is untouched


def test_plots_carry_title_ci_label_horizon_marker_percent_and_integer_ticks(
    tmp_path, monkeypatch
) -> None:
    # issue 12's plot conventions, read back from the figure a wrong plot would not have
    from matplotlib.ticker import MaxNLocator

    from mirroropt.workflow import _report
    from mirroropt.workflow._evaluate import EvalResult

    curve = {"mean": [0.2, 0.5, 0.7], "ci95": [0.01, 0.02, 0.03]}
    loss = {"mean": [1.0, 0.5, 0.2], "ci95": [0.1, 0.1, 0.1]}
    results = {
        "MAML": EvalResult("accuracy", curve, loss, loss, 10),
        "Meta-SGD": EvalResult("accuracy", curve, loss, loss, 10),
    }
    seen = {}
    monkeypatch.setattr(_report, "_save", lambda plt, fig, path: seen.setdefault("fig", fig))
    title = "FontGlot 5-way 1-shot, 300 test tasks"
    _report.plot_curves(results, tmp_path / "p.png", title=title, horizon=2)
    fig = seen["fig"]
    ax_m, ax_l = fig.axes
    assert fig._suptitle.get_text() == title
    labels = [t.get_text() for t in ax_m.get_legend().get_texts()]
    assert labels.count("95% CI") == 1 and "training horizon K = 2" in labels
    assert {"MAML", "Meta-SGD"} <= set(labels)
    assert ax_m.get_ylabel() == "query accuracy (%)" and ax_l.get_yscale() == "log"
    assert max(ax_m.lines[0].get_ydata()) == 70.0  # the table's unit, %
    assert [ax.get_xlabel() for ax in (ax_m, ax_l)] == ["inner step k"] * 2
    assert ax_m.get_title().endswith("vs inner steps") and ax_l.get_title().endswith(
        "vs inner steps"
    )
    for ax in (ax_m, ax_l):
        locator = ax.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer
        assert any(list(line.get_xdata()) == [2, 2] for line in ax.lines)  # the K marker
