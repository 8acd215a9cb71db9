"""The evidence protocol's driver: tuning on meta-validation, seeds, MetaMD from MAML's φ₀,
tables with across-seed CIs and paired tests, claims, plots, resume and budget growth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mirroropt.workflow import load_checkpoint
from mirroropt.workflow._reproduce import Protocol, reproduce
from mirroropt.workflow._stats import paired_t_test, seed_ci

TINY = dict(
    sinusoid_iterations=2,
    seeds=(0, 1),
    grid=(1e-3, 3e-2),
    val_every=1,
    val_tasks=2,
    eval_tasks=3,
    checkpoint_every=1,
)


def _run(tmp_path: Path, **over: object) -> Path:
    protocol = Protocol(**{**TINY, **over})  # type: ignore[arg-type]
    return reproduce(
        tmp_path,
        protocol,
        settings=["sinusoid"],
        methods=["maml", "meta-sgd", "metamd"],
        progress=False,
        command="python -m mirroropt reproduce (test)",
    )


def _rec(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "sinusoid" / name / "record.json").read_text())


def test_protocol_tunes_on_validation_runs_seeds_and_reports(tmp_path: Path) -> None:
    table = _run(tmp_path).read_text()
    folder = tmp_path / "sinusoid"
    # tuning: both grid values on seed 0; the chosen one (lowest val MSE) runs seed 1
    grid = {v: _rec(tmp_path, f"meta-sgd/seed0-mlr{v:g}") for v in (1e-3, 3e-2)}
    chosen = min(grid, key=lambda v: grid[v]["best_value"])
    assert (folder / f"meta-sgd/seed1-mlr{chosen:g}/record.json").is_file()
    other = 3e-2 if chosen == 1e-3 else 1e-3
    assert not (folder / f"meta-sgd/seed1-mlr{other:g}").exists()
    for rec in grid.values():
        vals = [r["value"] for r in rec["validation"]]
        assert rec["best_value"] == min(vals)
        assert rec["best_iteration"] == rec["validation"][vals.index(min(vals))]["iteration"]
        assert rec["config"]["map_meta_lr"] in (1e-3, 3e-2)
    # MAML has nothing to tune; MetaMD starts from MAML's selected best checkpoint, same seed
    maml1 = _rec(tmp_path, "maml/seed1")
    assert maml1["config"]["map_meta_lr"] is None
    md_grid = {v: _rec(tmp_path, f"metamd/seed0-mlr{v:g}") for v in (1e-3, 3e-2)}
    md_chosen = min(md_grid, key=lambda v: md_grid[v]["best_value"])
    md1 = _rec(tmp_path, f"metamd/seed1-mlr{md_chosen:g}")
    assert md1["config"]["init_from"].endswith("sinusoid/maml/seed1/checkpoint.best.pt")
    src = load_checkpoint(md1["config"]["init_from"])["learner"]
    own = load_checkpoint(folder / f"metamd/seed1-mlr{md_chosen:g}/checkpoint.pt")["learner"]
    for k, v in src.items():
        if k.startswith("model."):
            assert torch.equal(own[k], v), k  # φ₀ is MAML's and MetaMD never moved it
    # the table: across-seed t interval and the paired test against MAML, recomputed here
    out = json.loads((tmp_path / "results.json").read_text())
    entry = out["settings"]["sinusoid"]["methods"]["10"]["meta-sgd"]
    seeds = entry["per_seed"]
    k5 = [seeds[s]["metric"]["mean"][5] for s in ("0", "1")]
    assert entry["metric"]["mean"][5] == pytest.approx(seed_ci(k5)[0])
    assert entry["metric"]["ci95"][5] == pytest.approx(seed_ci(k5)[1])
    maml = out["settings"]["sinusoid"]["methods"]["10"]["maml"]["per_seed"]
    expected = paired_t_test(k5, [maml[s]["metric"]["mean"][5] for s in ("0", "1")])
    assert entry["paired_vs_maml"]["5"] == pytest.approx(expected)
    assert "| Meta-SGD (Diagonal) | 2 |" in table and "## Claims of the seed papers" in table
    assert "MetaMD converges faster without query data" in table
    assert "python -m mirroropt reproduce (test)" in table
    assert (tmp_path / "img" / "sinusoid.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun finds everything done and retrains nothing
    stamp = (folder / "maml/seed0/record.json").stat().st_mtime_ns
    _run(tmp_path)
    assert (folder / "maml/seed0/record.json").stat().st_mtime_ns == stamp
    # the report alone, published into a docs folder, names the command that made the runs
    from mirroropt.__main__ import main

    docs = tmp_path / "docs"
    (docs / "img").mkdir(parents=True)
    (docs / "img" / "fontglot-5w1s.png").write_bytes(b"a plot of an earlier report")
    (docs / "img" / "logo.png").write_bytes(b"not a plot of the protocol")
    assert main(["reproduce", "--out", str(tmp_path), "--report-only", "--publish", str(docs)]) == 0
    published = (docs / "results.md").read_text()
    assert "python -m mirroropt reproduce (test)" in published
    # TINY checkpoints every iteration, which no flag sets: the header says so instead
    assert "set through the Python API" in published and "checkpoint_every" in published
    assert (docs / "img" / "sinusoid.png").is_file()
    # the plot is shown under its setting's heading, by a path that resolves beside results.md
    heading = published.index("## Sinusoid")
    image = published.index("](img/sinusoid.png)")
    assert heading < image < published.index("| method |", heading)
    assert "](img/sinusoid.png)" in (tmp_path / "results.md").read_text()
    assert not (docs / "img" / "fontglot-5w1s.png").exists()  # stale: this report has no FontGlot
    assert (docs / "img" / "logo.png").is_file()  # not the protocol's: left alone


def test_budget_grows_by_resuming_and_the_protocol_is_fixed(tmp_path: Path) -> None:
    small = dict(seeds=(0, 1), grid=(1e-3,))
    protocol = Protocol(**{**TINY, **small})  # type: ignore[arg-type]
    reproduce(tmp_path, protocol, settings=["sinusoid"], methods=["maml"], progress=False)
    first = _rec(tmp_path, "maml/seed0")
    grown = Protocol(**{**TINY, **small, "sinusoid_iterations": 3})  # type: ignore[arg-type]
    reproduce(tmp_path, grown, settings=["sinusoid"], methods=["maml"], progress=False)
    second = _rec(tmp_path, "maml/seed0")
    assert [r["iteration"] for r in second["history"]] == [1, 2, 3]
    assert second["history"][:2] == first["history"]  # continued, not restarted
    assert len(second["segments"]) == 2
    # while a grown budget is under way, the tables show only runs at the new budget
    from mirroropt.workflow._reproduce import results_report

    assert "| MAML (Identity) | 2 |" in (tmp_path / "results.md").read_text()
    saved = json.loads((tmp_path / "protocol.json").read_text())
    (tmp_path / "protocol.json").write_text(json.dumps({**saved, "sinusoid_iterations": 4}))
    growing = results_report(tmp_path).read_text()
    assert "| MAML (Identity) | 2 |" not in growing
    assert "| MAML (Identity) | not yet at 4 meta-iterations (ran 3 before) |" in growing
    (tmp_path / "protocol.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"holds a protocol that differs in \['eval_tasks'\]"):
        reproduce(
            tmp_path,
            Protocol(**{**TINY, **small, "eval_tasks": 4}),  # type: ignore[arg-type]
            settings=["sinusoid"],
            methods=["maml"],
            progress=False,
        )
    with pytest.raises(ValueError, match=r"`sinusoid_iterations` 2 is below the 3 already run"):
        reproduce(tmp_path, protocol, settings=["sinusoid"], methods=["maml"], progress=False)


def test_a_settings_own_budget_is_used_and_kept_by_invocations_on_other_settings(
    tmp_path: Path,
) -> None:
    from mirroropt.__main__ import build_parser

    args = build_parser().parse_args(
        ["reproduce", "--budget", "fontglot-aug-20w1s=300", "--budget", "sinusoid=7"]
    )
    assert args.budget == [("fontglot-aug-20w1s", 300), ("sinusoid", 7)]
    base = {**TINY, "seeds": (0, 1), "grid": (1e-3,), "iterations": 1, "sinusoid_iterations": 3}
    own = Protocol(**{**base, "budgets": (("sinusoid", 2),)})  # type: ignore[arg-type]
    assert (own.budget("sinusoid"), own.budget("fontglot-5w1s")) == (2, 1)
    reproduce(tmp_path, own, settings=["sinusoid"], methods=["maml"], progress=False)
    assert _rec(tmp_path, "maml/seed0")["config"]["iterations"] == 2
    stamp = (tmp_path / "sinusoid/maml/seed0/record.json").stat().st_mtime_ns
    # another setting's invocation, without the override: sinusoid keeps 2, is not retrained
    plain = Protocol(**base)  # type: ignore[arg-type]
    table = reproduce(
        tmp_path, plain, settings=["fontglot-5w1s"], methods=["maml"], progress=False
    ).read_text()
    assert json.loads((tmp_path / "protocol.json").read_text())["budgets"] == [["sinusoid", 2]]
    assert (tmp_path / "sinusoid/maml/seed0/record.json").stat().st_mtime_ns == stamp
    assert "meta-iterations per run: 1 (FontGlot 5-way 1-shot), 2 (Sinusoid (MSE))" in table
    assert "## Sinusoid (MSE)\n\n2 meta-iterations per run." in table
    assert "| MAML (Identity) | 2 |" in table.split("## Sinusoid")[1]  # still done at its budget
    # a setting with runs never shrinks; one without runs may start below the default
    with pytest.raises(ValueError, match=r"`budgets\[sinusoid\]` 1 is below the 2 already run"):
        reproduce(
            tmp_path,
            Protocol(**{**base, "budgets": (("sinusoid", 1),)}),  # type: ignore[arg-type]
            settings=["sinusoid"],
            methods=["maml"],
            progress=False,
        )
    small = Protocol(**{**base, "iterations": 2, "budgets": (("fontglot-aug-20w1s", 1),)})  # type: ignore[arg-type]
    reproduce(tmp_path, small, settings=["fontglot-aug-20w1s"], methods=[], progress=False)
    saved = json.loads((tmp_path / "protocol.json").read_text())
    # fontglot-5w1s was not run by this invocation: it keeps its 1 against the new default 2
    assert saved["budgets"] == [["fontglot-5w1s", 1], ["fontglot-aug-20w1s", 1], ["sinusoid", 2]]
    with pytest.raises(ValueError, match=r"`budgets` names setting 'omniglot'"):
        Protocol(budgets=(("omniglot", 3),))
    with pytest.raises(ValueError, match=r"`budgets` names a setting twice"):
        Protocol(budgets=(("sinusoid", 3), ("sinusoid", 4)))


def test_stale_lock_of_a_dead_worker_is_taken_over(tmp_path: Path) -> None:
    protocol = Protocol(**{**TINY, "seeds": (0, 1), "grid": (1e-3,)})  # type: ignore[arg-type]
    lock = tmp_path / "sinusoid" / "maml" / "seed0" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("999999999")  # no such process
    reproduce(tmp_path, protocol, settings=["sinusoid"], methods=["maml"], progress=False)
    assert _rec(tmp_path, "maml/seed0")["status"] == "ok" and not lock.exists()


def test_lock_of_another_boot_is_stale_and_a_live_lock_is_respected(tmp_path: Path) -> None:
    import os

    from mirroropt.workflow._reproduce import METHODS, SETTINGS, _boot_id, _Job, _Runs

    runs = _Runs(tmp_path, Protocol(**TINY))  # type: ignore[arg-type]
    job = _Job(SETTINGS[-1], METHODS[0], 0, None)
    lock = runs.folder(job) / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{os.getpid()} {_boot_id()}")  # this live process, this boot: held
    assert not runs.claim(job)
    lock.write_text(f"{os.getpid()} another-boot")  # a committed or pre-reboot lock: stale
    assert runs.claim(job)
    assert lock.read_text() == f"{os.getpid()} {_boot_id()}"
    runs.release(job)
    assert not lock.exists()


def test_settings_and_methods_run_in_the_callers_order(tmp_path: Path) -> None:
    from mirroropt.workflow._reproduce import SETTINGS, _select

    assert [s.key for s in _select(SETTINGS, ["sinusoid", "fontglot-5w1s"], "settings")] == [
        "sinusoid",
        "fontglot-5w1s",
    ]
    protocol = Protocol(**{**TINY, "seeds": (0, 1), "grid": (1e-3,)})  # type: ignore[arg-type]
    reproduce(
        tmp_path, protocol, settings=["sinusoid"], methods=["meta-sgd", "maml"], progress=False
    )
    first = {m: (tmp_path / "sinusoid" / m).stat().st_mtime_ns for m in ("maml", "meta-sgd")}
    assert first["meta-sgd"] < first["maml"]  # meta-sgd's folder was made (claimed) first


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`settings` \['nope'\] unknown"):
        reproduce(tmp_path, Protocol(**TINY), settings=["nope"], progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`methods` \['nope'\] unknown"):
        reproduce(tmp_path, Protocol(**TINY), methods=["nope"], progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`seeds` must be at least 2 distinct seeds"):
        Protocol(seeds=(0,))


def _summary(curves: dict[str, list[float]]) -> dict:
    """A results summary with one setting whose methods have the given k = 5 accuracy per seed."""

    def entry(values: list[float], label: str) -> dict:
        per_seed = {
            str(s): {"metric": {"mean": [0.2] * 5 + [v] + [v] * 5}} for s, v in enumerate(values)
        }
        return {"label": label, "per_seed": per_seed}

    methods = {key: entry(values, key) for key, values in curves.items()}
    return {"settings": {"fontglot-5w1s": {"methods": {"1": methods}}}}


def test_sigmoid_claim_compares_the_two_anchored_convex_potentials_paired() -> None:
    from mirroropt.workflow._reproduce import _claims

    def verdict(sigmoid: list[float]) -> dict:
        curves = {
            "maml": [0.80, 0.82, 0.84],
            "convex-potential-anchored": [0.90, 0.85, 0.93],
            "convex-potential-anchored-sigmoid": sigmoid,
        }
        (found,) = [c for c in _claims(_summary(curves)) if "Remark 1" in c["claim"]]
        return found

    worse = verdict([0.80, 0.749, 0.831])  # 10 points below softplus on every seed
    assert worse["verdict"] == "fails" and worse["numbers"].startswith("-10.0")
    assert verdict([0.91, 0.84, 0.935])["verdict"] == "no detectable difference"
    better = verdict([0.95, 0.901, 0.979])
    assert better["verdict"] == "holds" and "+5.0" in better["numbers"]
    assert _claims(_summary({"maml": [0.8, 0.8]}))[-1]["verdict"] == "not run yet"


def test_the_grid_grows_on_a_folder_and_never_shrinks(tmp_path: Path) -> None:
    one = Protocol(**{**TINY, "seeds": (0, 1), "grid": (1e-3,)})  # type: ignore[arg-type]
    reproduce(tmp_path, one, settings=["sinusoid"], methods=["meta-sgd"], progress=False)
    stamp = (tmp_path / "sinusoid/meta-sgd/seed0-mlr0.001/record.json").stat().st_mtime_ns
    two = Protocol(**{**TINY, "seeds": (0, 1), "grid": (1e-3, 3e-2)})  # type: ignore[arg-type]
    table = reproduce(
        tmp_path, two, settings=["sinusoid"], methods=["meta-sgd"], progress=False
    ).read_text()
    assert (tmp_path / "sinusoid/meta-sgd/seed0-mlr0.001/record.json").stat().st_mtime_ns == stamp
    grid = {v: _rec(tmp_path, f"meta-sgd/seed0-mlr{v:g}")["best_value"] for v in (1e-3, 3e-2)}
    chosen = min(grid, key=grid.get)  # type: ignore[arg-type]
    assert (tmp_path / f"sinusoid/meta-sgd/seed1-mlr{chosen:g}/record.json").is_file()
    assert f"| {chosen:g} (edge) |" in table  # a value at the end of the grid is flagged
    with pytest.raises(ValueError, match=r"`grid` \[0.03\] drops \[0.001\]"):
        reproduce(
            tmp_path,
            Protocol(**{**TINY, "seeds": (0, 1), "grid": (3e-2,)}),  # type: ignore[arg-type]
            settings=["sinusoid"],
            methods=["meta-sgd"],
            progress=False,
        )


def test_a_diverging_run_ends_at_its_best_checkpoint_and_never_sinks_its_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reproducer: one diverging grid value (map meta-lr 0.1) marked the whole method "failed" in
    # the evidence run, so Meta-SGD and Meta-Curvature had no row although their other values ran.
    import mirroropt.workflow._train as train_module
    from mirroropt import NonFiniteError

    real = train_module._meta_step
    stops = {(0, 3e-2): 3, (0, 0.5): 1, (1, 3e-2): 3, (1, 1e-3): 3, (2, 3e-2): 1, (2, 1e-3): 1}

    def meta_step(it, objective, params, optimizer, adaptive, cfg, **kw):  # type: ignore[no-untyped-def]
        if stops.get((cfg.seed, cfg.map_meta_lr)) == it + 1:
            raise NonFiniteError("the meta-gradient is not finite")
        return real(it, objective, params, optimizer, adaptive, cfg, **kw)

    monkeypatch.setattr(train_module, "_meta_step", meta_step)
    grid = {"grid": (1e-3, 3e-2, 0.5), "seeds": (0, 1, 2)}  # (seed, map meta-lr) → it. above
    protocol = Protocol(**{**TINY, "sinusoid_iterations": 4, **grid})  # type: ignore[arg-type]
    args = dict(settings=["sinusoid"], methods=["maml", "meta-sgd"], progress=False)
    table = reproduce(tmp_path, protocol, **args).read_text()  # type: ignore[arg-type]
    late, early = _rec(tmp_path, "meta-sgd/seed0-mlr0.03"), _rec(tmp_path, "meta-sgd/seed0-mlr0.5")
    # diverged after two meta-validations: evaluated at its best checkpoint, which it records
    assert late["status"] == "ok" and late["diverged"]["iteration"] == 3
    assert [r["iteration"] for r in late["validation"]] == [1, 2]
    vals = [r["value"] for r in late["validation"]]
    assert late["best_value"] == min(vals) and late["best_iteration"] in (1, 2)
    assert len(late["eval"]["10"]["metric"]["mean"]) == 11
    # diverged before any meta-validation: no result, excluded from the selection
    assert early["status"].startswith("failed: NonFiniteError") and early["diverged"]
    scored = {v: _rec(tmp_path, f"meta-sgd/seed0-mlr{v:g}")["best_value"] for v in (1e-3, 3e-2)}
    chosen = min(scored, key=lambda v: scored[v])
    final = _rec(tmp_path, f"meta-sgd/seed1-mlr{chosen:g}")
    assert final["status"] == "ok" and final["diverged"]["iteration"] == 3  # a seed diverged too
    # a row with the seeds that have a result, naming the one that has none, not "failed"
    assert "| Meta-SGD (Diagonal) | 2 (seed 2 diverged at 1) |" in table
    assert "(diverged at 3)" in table and "| diverged at 1 |" in table
    entry = json.loads((tmp_path / "results.json").read_text())["settings"]["sinusoid"]
    assert entry["methods"]["10"]["meta-sgd"]["per_seed"]["1"]["diverged_at"] == 3
    # a grown budget continues the finished runs and leaves the diverged ones as they ended
    monkeypatch.setattr(train_module, "_meta_step", real)
    grown = Protocol(**{**TINY, "sinusoid_iterations": 5, **grid})  # type: ignore[arg-type]
    reproduce(tmp_path, grown, **args)  # type: ignore[arg-type]
    assert _rec(tmp_path, "meta-sgd/seed0-mlr0.03") == late
    assert _rec(tmp_path, "meta-sgd/seed0-mlr0.001")["history"][-1]["iteration"] == 5


def test_the_header_lists_every_invocation_and_counts_interrupted_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mirroropt.workflow._reproduce as rp

    protocol = Protocol(**{**TINY, "seeds": (0, 1), "grid": (1e-3,)})  # type: ignore[arg-type]
    args = dict(settings=["sinusoid"], methods=["maml"], progress=False)
    real = rp._worker

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rp, "_worker", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce(tmp_path, protocol, command="python -m mirroropt reproduce --first", **args)  # type: ignore[arg-type]
    monkeypatch.setattr(rp, "_worker", real)
    table = reproduce(tmp_path, protocol, command="python -m mirroropt reproduce --second", **args)  # type: ignore[arg-type]
    calls = json.loads((tmp_path / "invocations.json").read_text())
    assert [c.get("interrupted", False) for c in calls] == [True, False]
    text = table.read_text()
    first, second = text.index("reproduce --first"), text.index("reproduce --second")
    assert first < second < text.index("Protocol:")  # both, in order, above the protocol line
    assert "(2 invocation(s))" in text


@pytest.mark.parametrize(
    "protocol",
    [
        Protocol(iterations=1500, budgets=(("fontglot-aug-20w1s", 300),)),
        Protocol(
            iterations=7,
            sinusoid_iterations=9,
            seeds=(3, 5),
            grid=(0.5, 0.05),
            val_every=2,
            val_tasks=4,
            eval_tasks=6,
            width=8,
            norm="batch",
            fontglot="my fonts/set.npz",
        ),
    ],
)
def test_the_one_command_runs_exactly_this_protocol(protocol: Protocol) -> None:
    import shlex

    from mirroropt.__main__ import _protocol, build_parser

    command = protocol.command("runs/my evidence")
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "mirroropt"]
    args = build_parser().parse_args(words[3:])
    assert args.out == "runs/my evidence"
    assert _protocol(args) == protocol  # the CLI builds the same protocol back


def test_a_protocol_without_flags_for_its_fields_says_so_in_the_header(tmp_path: Path) -> None:
    from mirroropt.workflow._reproduce import ProtocolError, _one_command

    with pytest.raises(ProtocolError, match=r"\['steps'\]"):
        Protocol(steps=1).command()
    (line, _) = _one_command(Protocol(steps=1), tmp_path)
    assert "Python API" in line and "steps" in line
    lines = _one_command(Protocol(iterations=9), tmp_path)
    assert lines[0].startswith("From an empty folder, one command runs this whole protocol")
    assert f"python -m mirroropt reproduce --out {tmp_path} --iterations 9" in lines
