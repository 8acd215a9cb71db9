"""The benchmark scripts run end to end on a tiny setting (their numbers are read in the docs,
never asserted here): a broken import or a renamed ``peers.py`` row fails here, not on a user."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--width", "4", "--ways", "2", "--queries", "1", "--tasks", "2", "--steps", "1"]


def _script(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture
def profile_step():
    yield from _script("profile_step")


@pytest.fixture
def peers():
    yield from _script("peers")


def test_peers_writes_ratios_and_page_faults_per_method(
    peers, capsys, tmp_path, monkeypatch
) -> None:
    import itertools
    import json

    counter = itertools.count(0, 7)  # each reading 7 faults after the last: 7 per step
    monkeypatch.setattr(peers, "minor_faults", lambda: next(counter))
    usage = type("Usage", (), {"ru_maxrss": 3 << 20})  # Linux reports KiB: 3 GiB
    monkeypatch.setattr(peers.resource, "getrusage", lambda who: usage)
    out = tmp_path / "peers.json"
    only = ["--norms", "group", "--maps", "identity", "--integration-maps"]
    peers.main(["--rounds", "1", *only, *TINY, "--out", str(out)])
    table = capsys.readouterr().out
    assert "group: faults/it" in table and "| mirroropt identity |" in table
    rows = json.loads(out.read_text())["results"]["group"]
    assert rows["torch.func vmap"]["ratio"] == rows["torch.func vmap"]["ratio_best"] == 1.0
    assert all(r["ratio_best"] > 0 for r in rows.values())
    assert "group: best" in table
    assert {"torch.func loop", "higher SGD", "TorchOpt MetaSGD", "mirroropt identity"} <= set(rows)
    assert all(r["minor_faults"] == 7 for r in rows.values())
    assert "| 7 |" in table
    assert json.loads(out.read_text())["peak_rss_bytes"] == 3 << 30
    assert "peak RSS 3.00 GiB" in table


def test_peers_methods_times_only_the_named_rows_and_the_floor(peers, capsys, tmp_path) -> None:
    import json

    out = tmp_path / "peers.json"
    only = ["--norms", "group", "--maps", "identity", "--integration-maps"]
    peers.main(["--rounds", "1", *only, *TINY, "--methods", "higher SGD", "--out", str(out)])
    assert set(json.loads(out.read_text())["results"]["group"]) == {"torch.func vmap", "higher SGD"}
    with pytest.raises(SystemExit):
        peers.main(["--rounds", "1", *only, *TINY, "--methods", "higher SDG"])
    assert "--methods: expected rows of" in capsys.readouterr().err


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


@pytest.fixture
def maps_ab():
    yield from _script("maps_ab")


def test_maps_ab_compares_a_map_file_at_a_revision_with_the_working_tree(maps_ab, capsys):
    """One round, the Kronecker file at HEAD against the working tree's, with its integrations."""
    argv = ["--before", "HEAD", "--maps", "kronecker", "--rounds", "1", "--norms", "group"]
    maps_ab.main([*argv, *TINY])
    out = capsys.readouterr().out
    for row in ("mirroropt kronecker", "via higher kronecker", "via MirrorMAML kronecker"):
        assert f"| {row} |" in out
    assert "before = HEAD" in out and "keeps freed memory" not in out


def test_maps_ab_kernel_times_the_maps_own_work(maps_ab, capsys):
    """``--kernel``: vmapped rows for every map, per-task rows only for maps with ``to_dual``."""
    argv = ["--before", "HEAD", "--kernel", "--maps", "kronecker", "convex_potential"]
    maps_ab.main([*argv, "--rounds", "1", *TINY])
    out = capsys.readouterr().out
    for row in ("kernel kronecker", "kernel kronecker per task", "kernel convex_potential"):
        assert f"| {row} |" in out
    assert "kernel convex_potential per task" not in out  # no to_dual: it starts from z0
    assert "| mirroropt kronecker |" not in out  # no meta-iteration rows with --kernel


def test_peers_best_is_the_fastest_round_over_the_floors_fastest(peers, tmp_path, monkeypatch):
    import json
    import random

    rng = random.Random(0)
    consumed: list[float] = []
    now = [0.0]
    calls = [0]

    def clock() -> float:  # start/stop pairs; each stop adds a random duration
        calls[0] += 1
        if calls[0] % 2 == 0:
            consumed.append(rng.uniform(1.0, 2.0))
            now[0] += consumed[-1]
        return now[0]

    monkeypatch.setattr(peers.time, "process_time", clock)
    out = tmp_path / "peers.json"
    only = ["--norms", "group", "--maps", "identity", "--integration-maps", "identity"]
    peers.main(["--rounds", "3", *only, *TINY, "--out", str(out)])
    rows = json.loads(out.read_text())["results"]["group"]
    names = list(rows)
    timed = consumed[len(names) :]  # after one warm-up call per method
    per = {n: timed[i :: len(names)] for i, n in enumerate(names)}
    for name, r in rows.items():
        assert r["ratio_best"] == pytest.approx(min(per[name]) / min(per["torch.func vmap"]))
    own = rows["via MirrorMAML identity"]
    assert own["vs_own_gd_best"] == pytest.approx(1.0)
    mm = min(per["via higher identity"]) / min(per["higher SGD"])
    assert rows["via higher identity"]["vs_own_gd_best"] == pytest.approx(mm)
    # the shells against the same map through mirroropt.adapt, task by task
    for shell in ("via higher identity", "via MirrorMAML identity"):
        want = min(per[shell]) / min(per["mirroropt identity loop"])
        assert rows[shell]["vs_map_loop_best"] == pytest.approx(want)
        paired = sorted(a / b for a, b in zip(per[shell], per["mirroropt identity loop"]))
        assert rows[shell]["vs_map_loop"] == pytest.approx(paired[1])  # median of 3
    assert rows["mirroropt identity"]["vs_map_loop"] is None


def test_peers_isolate_runs_every_row_in_its_own_process_with_its_references(
    peers, capsys, tmp_path, monkeypatch
) -> None:
    import json
    import statistics

    calls: list[list[str]] = []
    floors: list[float] = []

    def child(argv: list[str]) -> None:  # the fresh process, run in this one
        calls.append(argv)
        peers.main(argv)
        out = argv[argv.index("--out") + 1]
        floors.append(json.loads(Path(out).read_text())["results"]["group"][peers.FLOOR]["ms"])

    monkeypatch.setattr(peers, "run_child", child)
    out = tmp_path / "peers.json"
    only = ["--norms", "group", "--maps", "identity", "--integration-maps", "identity"]
    peers.main(
        ["--rounds", "1", *only, *TINY, "--keep-freed-memory", "--isolate", "--out", str(out)]
    )
    table = capsys.readouterr().out
    groups = [argv[argv.index("--methods") + 1 : argv.index("--out")] for argv in calls]
    # every row but the floor once, first in its process, with the rows its columns need
    assert sorted(g[0] for g in groups) == sorted(
        ["torch.func loop", "higher SGD", "TorchOpt MetaSGD", "mirroropt identity",
         "mirroropt identity loop", "via higher identity", "via MirrorMAML identity",
         "via TorchOpt identity", "via torch.func identity"]
    )  # fmt: skip
    by_row = {g[0]: g[1:] for g in groups}
    assert by_row["via higher identity"] == ["higher SGD", "mirroropt identity loop"]
    assert by_row["via TorchOpt identity"] == ["TorchOpt MetaSGD", "mirroropt identity loop"]
    assert by_row["via torch.func identity"] == ["mirroropt identity"]  # its own GD: the floor
    assert by_row["via MirrorMAML identity"] == ["mirroropt identity loop"]  # its own GD is itself
    assert by_row["mirroropt identity"] == []
    for argv in calls:  # the setting and the allocator travel to each process
        assert argv[argv.index("--width") + 1] == "4" and "--keep-freed-memory" in argv
        assert argv[argv.index("--norms") + 1] == "group"
    rows = json.loads(out.read_text())["results"]["group"]
    assert set(rows) == {peers.FLOOR, *by_row}
    assert rows[peers.FLOOR]["ms"] == pytest.approx(statistics.median(floors))
    assert rows["via higher identity"]["vs_own_gd"] > 0
    assert rows["via higher identity"]["vs_map_loop"] > 0
    assert rows["via TorchOpt identity"]["vs_own_gd"] > 0
    assert rows["via torch.func identity"]["vs_own_gd"] == rows["via torch.func identity"]["ratio"]
    assert "(`--isolate`)" in table
    with pytest.raises(SystemExit, match="a row besides the floor"):
        peers.main(["--rounds", "1", *only, *TINY, "--isolate", "--methods", peers.FLOOR])


def test_peers_isolated_groups_leave_out_references_that_are_not_rows(peers) -> None:
    names = [peers.FLOOR, "higher SGD", "via higher kronecker", "via MirrorMAML kronecker"]
    assert peers.isolated_groups(names) == [
        ["higher SGD"],
        ["via higher kronecker", "higher SGD"],
        ["via MirrorMAML kronecker"],
    ]
    # --methods: the references come from every row the setting builds
    available = [*names, "via MirrorMAML identity", "mirroropt kronecker loop"]
    assert peers.isolated_groups([peers.FLOOR, "via MirrorMAML kronecker"], available) == [
        ["via MirrorMAML kronecker", "via MirrorMAML identity", "mirroropt kronecker loop"]
    ]
