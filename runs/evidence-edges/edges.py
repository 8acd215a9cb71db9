"""Edge check of runs/evidence's tuning. Where a method's chosen map meta step size sits at an
edge of the grid [0.001, 0.01, 0.1], train one grid step beyond the edge with the evidence
protocol unchanged but for that value (the protocol's own job runner, so each record here is
what `reproduce` would have written for it), compare meta-validation at k = K with the grid's
values, and where the new value wins, train the other seeds at it and compare on meta-test.

    OMP_NUM_THREADS=1 nice -n 5 python runs/evidence-edges/edges.py run fontglot-5w1s meta-curvature 0.0001 0
    python runs/evidence-edges/edges.py report

Resumable (the protocol's checkpoints); a run's lock keeps two processes off it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from mirroropt.workflow import _reproduce as rp
from mirroropt.workflow._stats import paired_t_test, seed_ci

HERE = Path(__file__).resolve().parent
EVIDENCE = HERE.parent / "evidence"
GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def _evidence() -> rp.Protocol:
    return rp.Protocol.from_dict(json.loads((EVIDENCE / "protocol.json").read_text()))


def run(setting_key: str, method_key: str, value: float, seed: int) -> None:
    evidence = _evidence()
    runs = rp._Runs(HERE, dataclasses.replace(evidence, grid=(value,)))
    setting = next(s for s in rp.SETTINGS if s.key == setting_key)
    method = next(m for m in rp.METHODS if m.key == method_key)
    job = rp._Job(setting, method, seed, value)
    if runs.done(job) or not runs.claim(job):
        print(f"{job.name}: done or taken", flush=True)
        return
    init_from = rp._Runs(EVIDENCE, evidence).init_source(job)  # MetaMD: MAML's φ₀ of that seed
    try:
        if init_from is None:
            raise SystemExit(f"{job.name}: its φ₀ source in {EVIDENCE} is not finished")
        print(f"training {job.name}", flush=True)
        rp._run_job(runs, job, init_from, progress=False)
    finally:
        runs.release(job)


def _record(setting: str, method: str, folder: str) -> dict:
    for root in (HERE, EVIDENCE):
        path = root / setting / method / folder / "record.json"
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def report() -> None:
    for setting in sorted(p.name for p in HERE.iterdir() if p.is_dir()):
        print(f"\n{setting}: meta-validation at k = K, seed 0 (% accuracy)\n")
        print("| method | " + " | ".join(f"{v:g}" for v in GRID) + " |")
        print("|" + " --- |" * (len(GRID) + 1))
        methods = sorted(p.name for p in (HERE / setting).iterdir() if p.is_dir())
        for method in methods:
            cells = []
            for v in GRID:
                rec = _record(setting, method, f"seed0-mlr{v:g}")
                best = rec.get("best_value")
                cell = "—" if best is None else f"{100 * best:.1f}"
                if (rec.get("diverged") or {}).get("iteration"):
                    cell += f" (diverged at {rec['diverged']['iteration']})"
                cells.append(cell)
            print(f"| {method} | " + " | ".join(cells) + " |")
        evidence = _evidence()
        budget = evidence.budget(next(s for s in rp.SETTINGS if s.key == setting))
        for method in methods:
            for v in GRID:
                if v in evidence.grid:
                    continue  # the evidence's own values: docs/results.md has their rows
                recs = [_record(setting, method, f"seed{s}-mlr{v:g}") for s in (0, 1, 2)]
                maml = [_record(setting, "maml", f"seed{s}") for s in (0, 1, 2)]
                if not all(r.get("eval") and r["config"]["iterations"] == budget for r in recs):
                    continue
                shots = next(iter(recs[0]["eval"]))
                for k in (1, 5):
                    acc = [100 * r["eval"][shots]["metric"]["mean"][k] for r in recs]
                    base = [100 * m["eval"][shots]["metric"]["mean"][k] for m in maml]
                    mean, half = seed_ci(acc)
                    test = paired_t_test(acc, base)
                    print(
                        f"\n{method} at {v:g}, 3 seeds, meta-test k = {k}: {mean:.1f} ± {half:.1f} %"
                        f" (MAML {sum(base) / 3:.1f}); paired Δ {test['mean']:+.1f}, "
                        f"p = {test['p']:.2f}"
                    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 6:
        run(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    elif sys.argv[1:] == ["report"]:
        report()
    else:
        raise SystemExit("usage: edges.py run SETTING METHOD VALUE SEED  |  edges.py report")
