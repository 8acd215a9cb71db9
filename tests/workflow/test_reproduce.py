"""The reproduction driver: records every (setting, method), resumes, writes tables and plots."""

from __future__ import annotations

import json
from pathlib import Path

from mirroropt.workflow._reproduce import reproduce


def test_reproduce_records_tables_plots_and_skips_finished_runs(tmp_path: Path) -> None:
    kwargs = dict(
        iterations=1,
        sinusoid_iterations=2,
        eval_tasks=3,
        settings=["sinusoid"],
        methods=["identity", "diagonal"],
        progress=False,
    )
    table_path = reproduce(tmp_path, **kwargs)  # type: ignore[arg-type]
    folder = tmp_path / "sinusoid"
    records = {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}
    # a map name selects every row that uses the map: Meta-SGD and MetaMD both use "diagonal"
    assert set(records) == {"identity-query.json", "diagonal-query.json", "diagonal-metamd.json"}
    for rec in records.values():
        assert rec["status"] == "ok" and rec["config"]["iterations"] == 2
        assert set(rec["eval"]) == {"5", "10", "20"}  # the sinusoid row's three shot counts
        assert len(rec["eval"]["10"]["metric"]["mean"]) == 11  # k = 0 … 10
    table = table_path.read_text()
    assert "| MAML (Identity) |" in table and "| Meta-SGD (Diagonal) |" in table
    assert "| MetaMD (Diagonal, regret bound) |" in table
    assert "Kronecker" not in table  # not chosen: not recorded
    assert (tmp_path / "sinusoid.png").read_bytes()[:4] == b"\x89PNG"
    stamp = (folder / "identity-query.json").stat().st_mtime_ns
    reproduce(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert (folder / "identity-query.json").stat().st_mtime_ns == stamp  # finished runs are kept
