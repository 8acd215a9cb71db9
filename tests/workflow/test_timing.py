"""A run's training time survives interruption: the checkpoint carries it, the evidence records
show which iterations an interrupted call left untimed, and the report says "at least"."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from mirroropt.workflow import TrainConfig, TrainingInterrupted, load_checkpoint, train
from mirroropt.workflow._checkpoint import write_payload
from mirroropt.workflow._reproduce import Protocol, _timing, reproduce, results_report

SYNTH = dict(
    benchmark="synthetic", n_way=3, k_shot=1, q_query=2, width=4, steps=2, lr=0.1, meta_batch=2
)


class _StopAfter(threading.Event):
    """A SIGTERM that arrives during meta-iteration ``n``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


def test_an_interrupted_calls_time_is_kept_in_the_checkpoint(tmp_path: Path) -> None:
    cfg = TrainConfig(**SYNTH, iterations=4, checkpoint_every=1)  # type: ignore[arg-type]
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingInterrupted):
        train(cfg, checkpoint=ckpt, stop=_StopAfter(2))
    before = load_checkpoint(ckpt)
    assert before["iteration"] == 2
    assert before["train_seconds"] > 0  # the interrupted call's two iterations, timed
    run = train(cfg, checkpoint=ckpt, resume=True)
    assert run.start_iteration == 2
    assert run.total_seconds is not None
    # the total is the interrupted call's time plus this call's, not this call's alone
    assert run.total_seconds == pytest.approx(before["train_seconds"] + run.seconds, rel=1e-6)
    assert run.total_seconds > run.seconds
    assert load_checkpoint(ckpt)["train_seconds"] >= run.total_seconds
    fresh = train(cfg)
    assert fresh.start_iteration == 0 and fresh.total_seconds == pytest.approx(fresh.seconds)


def test_a_checkpoint_without_its_time_resumes_with_unknown_total(tmp_path: Path) -> None:
    cfg = TrainConfig(**SYNTH, iterations=1)  # type: ignore[arg-type]
    ckpt = tmp_path / "checkpoint.pt"
    train(cfg, checkpoint=ckpt)
    payload = load_checkpoint(ckpt)
    del payload["train_seconds"]  # as written by mirroropt 0.1
    write_payload(ckpt, payload)
    run = train(TrainConfig(**SYNTH, iterations=2), checkpoint=ckpt, resume=True)  # type: ignore[arg-type]
    assert run.start_iteration == 1 and run.total_seconds is None
    assert load_checkpoint(ckpt)["train_seconds"] is None  # unknown stays unknown


def test_timing_counts_the_iterations_an_interrupted_call_left_unrecorded() -> None:
    # the checkpoint's own total wins when known
    assert _timing([{"from": 0, "to": 300, "seconds": 131.0}], 140.0) == (140.0, 0)
    # 300 → 1200 were trained by a call that was killed before it wrote its record
    segments = [
        {"to": 300, "seconds": 131.0},  # written before segments carried "from": contiguous
        {"from": 1200, "to": 1500, "seconds": 50.0},
    ]
    assert _timing(segments, None) == (181.0, 900)
    assert _timing(
        [{"from": 0, "to": 5, "seconds": 1.0}, {"from": 5, "to": 9, "seconds": 2.0}], None
    ) == (3.0, 0)


def test_the_report_shows_an_untimed_run_as_a_lower_bound(tmp_path: Path) -> None:
    protocol = Protocol(
        sinusoid_iterations=2, seeds=(0, 1), grid=(1e-3,), val_every=1, val_tasks=2, eval_tasks=3
    )
    reproduce(tmp_path, protocol, settings=["sinusoid"], methods=["maml"], progress=False)
    record = json.loads((tmp_path / "sinusoid/maml/seed0/record.json").read_text())
    assert record["untimed_iterations"] == 0
    assert [s["from"] for s in record["segments"]] == [0]
    assert record["train_seconds"] == pytest.approx(record["segments"][0]["seconds"])
    row = next(r for r in results_report(tmp_path).read_text().splitlines() if "| MAML" in r)
    assert "≥" not in row
    record["untimed_iterations"] = 1
    (tmp_path / "sinusoid/maml/seed0/record.json").write_text(json.dumps(record))
    row = next(r for r in results_report(tmp_path).read_text().splitlines() if "| MAML" in r)
    assert row.rstrip().endswith(" |") and "| ≥ " in row
    out = json.loads((tmp_path / "results.json").read_text())
    per_seed = out["settings"]["sinusoid"]["methods"]["10"]["maml"]["per_seed"]
    assert per_seed["0"]["untimed_iterations"] == 1 and per_seed["1"]["untimed_iterations"] == 0
