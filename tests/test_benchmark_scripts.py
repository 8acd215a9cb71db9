"""The benchmark scripts run end to end on a tiny setting (their numbers are read in the docs,
never asserted here): a broken import or a renamed ``peers.py`` row fails here, not on a user."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--width", "4", "--ways", "2", "--queries", "1", "--tasks", "2", "--steps", "1"]


@pytest.fixture
def profile_step():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("profile_step")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("method", ["mirroropt convex_potential", "via MirrorMAML kronecker"])
def test_profile_step_prints_the_operator_table_and_the_ratio(profile_step, capsys, method):
    profile_step.main([method, "--steps-profiled", "1", "--rows", "5", *TINY])
    out = capsys.readouterr().out
    assert "Self CPU" in out  # the profiler's table
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"{method}: ") and "ratio" in line
    ratio = float(line.split("ratio ")[1].split()[0])
    assert ratio > 0


def test_profile_step_names_the_row_it_does_not_know(profile_step, capsys):
    with pytest.raises(SystemExit):
        profile_step.main(["mirroropt no_such_map", *TINY])
    err = capsys.readouterr().err
    assert "method: expected a map of" in err and "'mirroropt no_such_map'" in err


def test_profile_step_names_the_method_it_does_not_know(profile_step, capsys):
    with pytest.raises(SystemExit):
        profile_step.main(["torch.func while", *TINY])
    assert "method: expected one of" in capsys.readouterr().err
