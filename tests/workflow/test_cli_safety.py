"""Nothing silent, nothing lost (issue 11): misuse is refused before work, faults never lose a run.

Every test is a reproducer of a reported defect and runs on the synthetic benchmark at a tiny
budget; the subprocess tests (SIGTERM, kills at random points) pay one interpreter start each.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mirroropt
from mirroropt.__main__ import build_parser, main
from mirroropt.maps import MAPS
from mirroropt.workflow import TrainConfig, load_checkpoint, save_checkpoint, train
from mirroropt.workflow._checkpoint import CheckpointError
from tests.workflow._poison import PoisonedBenchmark
from tests.workflow.test_cli import TINY

ROOT = Path(__file__).resolve().parents[2]
SYNTH = dict(
    benchmark="synthetic", n_way=3, k_shot=1, q_query=2, width=4, steps=2, lr=0.1, meta_batch=2
)


def _train_argv(out: Path, *extra: str, iterations: int = 2) -> list[str]:
    return ["train", *TINY, "--iterations", str(iterations), "--out", str(out), *extra]


def _one_line_error(exc: pytest.ExceptionInfo[SystemExit] | SystemExit) -> str:
    message = str(exc.code if isinstance(exc, SystemExit) else exc.value.code)
    assert "\n" not in message.strip(), message
    assert "weights_only" not in message
    return message


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["learner"]


def _assert_same_run(a: Path, b: Path) -> None:
    pa, pb = load_checkpoint(a), load_checkpoint(b)
    assert pa["iteration"] == pb["iteration"]
    assert pa["history"] == pb["history"]
    for name, tensor in pa["learner"].items():
        assert torch.equal(tensor, pb["learner"][name]), name
    # (not torch_rng: training never draws from the global generator, whose state a fresh
    # process starts from a random seed)
    for key, state in pa["optimizer"]["state"].items():
        for field, value in state.items():
            other = pb["optimizer"]["state"][key][field]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


# ------------------------------------------------------------------------------------------------
# silent bad results


@pytest.mark.parametrize("norm", ["group", "batch"])  # the vmap path and the loop path
def test_nan_stops_training_naming_iteration_and_task_and_keeps_the_last_checkpoint(
    tmp_path: Path, norm: str
) -> None:
    # Reproducer (issue 11): `train --norm group --lr 1e4` printed "trained 6 iterations", exited
    # 0 and saved NaN weights (under vmap the inner finite check was skipped).
    cfg = TrainConfig(**{**SYNTH, "norm": norm}, iterations=6, checkpoint_every=1)
    ckpt = tmp_path / "checkpoint.pt"
    bench = PoisonedBenchmark(cfg, bad=3)
    with pytest.raises(
        mirroropt.NonFiniteError,
        match=r"Training stopped at meta-iteration 4 of 6: Task 1 of 2: The gradient of `loss_fn` at inner step 0.*"
        r"kept the last good checkpoint .*checkpoint.pt \(iteration 3\)",
    ):
        train(cfg, checkpoint=ckpt, benchmark=bench)  # type: ignore[arg-type]
    payload = load_checkpoint(ckpt)
    assert payload["iteration"] == 3
    assert all(bool(torch.isfinite(t).all()) for t in payload["learner"].values())


def test_cli_nan_run_exits_with_one_line_and_writes_no_nan_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run turns non-finite at meta-iteration 3 by construction (a NaN in that iteration's
    # data), not by hoping a huge `lr` diverges: whether it does depends on the platform's numerics
    # (it stopped diverging on one CI machine).
    import mirroropt.workflow

    real = mirroropt.workflow.build_benchmark
    monkeypatch.setattr(  # the CLI builds the benchmark once, in its preflight
        mirroropt.workflow,
        "build_benchmark",
        lambda cfg, device=None: PoisonedBenchmark(cfg, bad=2, build=real),
    )
    argv = [
        *_train_argv(tmp_path / "r", "--checkpoint-every", "1", iterations=6),
        "--norm",
        "group",
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert re.search(
        r"mirroropt train: error: Training stopped at meta-iteration 3 of 6: .*not finite.*"
        r"kept the last good checkpoint .*checkpoint.pt \(iteration 2\)",
        _one_line_error(exc),
    )
    ckpt = tmp_path / "r" / "checkpoint.pt"
    assert load_checkpoint(ckpt)["iteration"] == 2
    assert all(bool(torch.isfinite(t).all()) for t in _state(ckpt).values())


def test_save_checkpoint_refuses_non_finite_weights(tmp_path: Path) -> None:
    cfg = TrainConfig(**SYNTH, iterations=1)
    run = train(cfg)
    with torch.no_grad():
        next(run.learner.parameters())[0].fill_(float("inf"))
    opt = torch.optim.Adam(run.learner.meta_parameters())
    with pytest.raises(mirroropt.NonFiniteError, match=r"not finite.*not written"):
        save_checkpoint(
            tmp_path / "c.pt",
            config=cfg,
            learner=run.learner,
            optimizer=opt,
            iteration=1,
            history=[],
        )
    assert not (tmp_path / "c.pt").exists()


def test_train_into_an_existing_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    # Reproducer (issue 11): a 20-iteration checkpoint was silently replaced by a 5-iteration one.
    run = tmp_path / "run"
    assert main(_train_argv(run, iterations=3)) == 0
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(_train_argv(run, iterations=2))
    assert re.search(
        r"already holds a run \(checkpoint.pt at iteration 3\); pass --resume to continue it "
        r"or --overwrite",
        _one_line_error(exc),
    )
    assert (run / "checkpoint.pt").read_bytes() == before
    assert main([*_train_argv(run, iterations=2), "--overwrite"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2


def test_a_flipped_bit_in_a_checkpoint_is_detected(tmp_path: Path) -> None:
    # Reproducer (issue 11): a bit flip loaded silently (an Adam moment changed by 4.9e36).
    ckpt = tmp_path / "checkpoint.pt"
    train(TrainConfig(**SYNTH, iterations=1), checkpoint=ckpt)
    good = ckpt.read_bytes()
    rng = random.Random(0)
    for _ in range(20):
        bad = bytearray(good)
        bit = rng.randrange(8 * len(bad))
        bad[bit // 8] ^= 1 << (bit % 8)
        ckpt.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match=r"checkpoint.pt' is (corrupt|truncated|not)"):
            load_checkpoint(ckpt)


# ------------------------------------------------------------------------------------------------
# corrupt checkpoints: one line naming the file and what is wrong


def _corrupt(kind: str, path: Path, good: bytes) -> Path:
    if kind == "directory":
        path.mkdir()
        return path
    data = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "text": b"epoch 1 loss 0.3\n",
        "garbage": random.Random(1).randbytes(4096),
    }[kind]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", r"is (truncated or corrupt|corrupt or truncated)"),
        ("empty", r"is empty \(0 bytes\)"),
        ("text", r"is a text file, not a mirroropt checkpoint"),
        ("garbage", r"is not a torch archive"),
        ("directory", r"is a directory, not a checkpoint file"),
    ],
)
def test_corrupt_checkpoints_are_one_line_errors_naming_the_file(
    tmp_path: Path, kind: str, message: str
) -> None:
    good_path = tmp_path / "good.pt"
    train(TrainConfig(**SYNTH, iterations=1), checkpoint=good_path)
    bad = _corrupt(kind, tmp_path / "bad.pt", good_path.read_bytes())
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", str(bad), "--tasks", "2", "--no-progress"])
    line = _one_line_error(exc)
    assert str(bad) in line and re.search(message, line), line


def test_a_leftover_temp_file_is_cleaned_at_start(tmp_path: Path) -> None:
    # Reproducer (issue 11): a 0-byte checkpoint.pt.tmp left by a killed write stayed (here: a
    # resume that is then refused never reached a save that would have replaced it).
    run = tmp_path / "run"
    assert main(_train_argv(run, iterations=1)) == 0
    tmp = run / "checkpoint.pt.tmp"
    tmp.write_bytes(b"")  # a write killed before its rename
    with pytest.raises(SystemExit) as exc:
        main([*_train_argv(run, "--resume", iterations=2), "--lr", "0.2"])
    assert re.search(r"fields \['lr'\] differ", _one_line_error(exc))
    assert not tmp.exists()
    tmp.write_bytes(b"")
    assert main(_train_argv(run, "--resume", iterations=2)) == 0
    assert not tmp.exists()
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2


# ------------------------------------------------------------------------------------------------
# validate before any work


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--benchmark", "fontglot", "--n-way", "400"], r"'val' split cannot serve tasks.*400"),
        (
            ["--benchmark", "fontglot", "--k-shot", "10", "--q-query", "10"],
            r"'train' split cannot serve tasks.*k_shot \+ q_query = 20",
        ),
        (["--benchmark", "synthetic", "--n-way", "1"], r"error: `n_way` must be an int ≥ 2, got 1"),
        (["--map", "entropic"], r"--map entropic cannot be used on synthetic.*non-negative"),
    ],
)
def test_train_is_refused_before_any_work(tmp_path: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main([*_train_argv(out), *extra])
    assert re.search(message, _one_line_error(exc))
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--out", "x", "--momentum", "1.5"], r"expected a number in \[0, 1\), got 1.5"),
        (["train", "--out", "x", "--momentum", "-0.1"], r"expected a number in \[0, 1\)"),
        (["train", "--out", "x", "--steps", "0"], r"expected a positive integer .*--steps 0"),
    ],
)
def test_parser_refuses_out_of_range_values(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("command", ["train", "demo", "eval"])
def test_out_that_is_a_file_is_refused_first(tmp_path: Path, command: str) -> None:
    # Reproducer (issue 11): `demo --out FILE` failed only after the whole demo had run.
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    ckpt = tmp_path / "c.pt"
    train(TrainConfig(**SYNTH, iterations=1), checkpoint=ckpt)
    argv = {
        "train": _train_argv(target),
        "demo": ["demo", "--quick", "--benchmark", "synthetic", "--out", str(target)],
        "eval": ["eval", "--checkpoint", str(ckpt), "--tasks", "2", "--out", str(target)],
    }[command] + ["--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert re.search(r"`--out` '.*a-file' is a file, not a folder", _one_line_error(exc))


@pytest.mark.parametrize("command", ["train", "demo"])
def test_entropic_map_is_refused_before_maml_trains(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Reproducer (issue 11): `demo --map entropic` crashed after MAML had already trained.
    argv = {
        "train": [*_train_argv(tmp_path / "r"), "--map", "entropic"],
        "demo": ["demo", "--quick", "--benchmark", "synthetic", "--map", "entropic"],
    }[command] + ["--out", str(tmp_path / "o"), "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert re.search(
        r"--map entropic cannot be used on .*must be non-negative", _one_line_error(exc)
    )
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("name", sorted(MAPS))
def test_every_map_name_runs_or_is_refused_before_training(tmp_path: Path, name: str) -> None:
    out = tmp_path / "run"
    try:
        code = main([*_train_argv(out, iterations=1), "--map", name])
    except SystemExit as exc:  # refused: one line, before the first meta-iteration
        assert re.search(rf"--map {name} cannot be used on", _one_line_error(exc))
        assert not (out / "checkpoint.pt").exists()
    else:
        assert code == 0
        assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 1


def test_resume_with_other_threads_is_refused(tmp_path: Path) -> None:
    # Reproducer (issue 11): resuming with another --threads changed results by 3.9e-7 silently.
    run = tmp_path / "run"
    assert main(_train_argv(run, iterations=1)) == 0
    with pytest.raises(SystemExit) as exc:
        main([*_train_argv(run, iterations=2), "--resume", "--threads", "2"])
    assert re.search(
        r"was trained with --threads 1; resuming with --threads 2 would change its results",
        _one_line_error(exc),
    )
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 1


def test_resume_with_fewer_iterations_is_refused(tmp_path: Path) -> None:
    # Reproducer (issue 11): the resumed run wrote a config (iterations 2) that disagreed with its
    # contents (4 iterations).
    run = tmp_path / "run"
    assert main(_train_argv(run, iterations=3)) == 0
    with pytest.raises(SystemExit) as exc:
        main([*_train_argv(run, iterations=2), "--resume"])
    assert re.search(
        r"--iterations 2 is below the 3 iterations .* already holds", _one_line_error(exc)
    )
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["iteration"] == payload["config"]["iterations"] == 3


def test_help_shows_defaults_choices_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    from mirroropt.workflow._reproduce import METHODS, SETTINGS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert re.search(r"--meta-lr META_LR\s+meta step size.*?\(default: 0\.001\)", text, re.S)
    assert re.search(r"--momentum MOMENTUM\s+.*?\(default: 0\.9\)", text, re.S)
    assert all(name in re.sub(r"\s+", "", text) for name in MAPS)  # (help wraps at hyphens)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--help"])
    flat = re.sub(r"\s+", "", capsys.readouterr().out)
    assert all(s.key in flat for s in SETTINGS)
    assert all(m.key in flat for m in METHODS)
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mirroropt {mirroropt.__version__}"


def test_reproduce_refuses_unknown_settings_and_methods(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--settings", "imagenet"])
    assert re.search(r"invalid choice: 'imagenet'", capsys.readouterr().err)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--methods", "adam"])
    assert re.search(r"invalid choice: 'adam'", capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# faults: SIGTERM, kills at random points and inside checkpoint writes, corrupt files


def _cli(*argv: str, driver: str = "") -> subprocess.Popen[str]:
    """``python -m mirroropt ARGV`` in a subprocess (``driver``: Python run first, to inject)."""
    code = (
        f"{driver}\nimport sys\nfrom mirroropt.__main__ import main\nsys.exit(main({list(argv)!r}))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_started(proc: subprocess.Popen[str]) -> None:
    """Block until the CLI says it started meta-training (its signal handler is installed)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("training "):
            return
    raise AssertionError(
        f"never started: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
    )


#: Kill the process inside the Nth checkpoint write: after half the bytes reached the temp file
#: ("torn"), or with the whole temp file written but not yet renamed ("unrenamed").
_KILL_IN_WRITE = """
import os, signal
from mirroropt.workflow import _checkpoint
calls = [0]
real_fsync, real_replace = os.fsync, os.replace
class _Os:
    def __getattr__(self, name): return getattr(os, name)
    def fsync(self, fd):
        calls[0] += 1
        if calls[0] == {n} and "{mode}" == "torn":
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)
    def replace(self, a, b):
        if calls[0] == {n} and "{mode}" == "unrenamed":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(a, b)
_checkpoint.os = _Os()
"""


def test_fault_injection_resume_is_bit_identical_or_refused(tmp_path: Path) -> None:
    """Kill inside checkpoint writes and at a random point, SIGTERM, corrupt files; resume.

    Each fault is a fresh interpreter (the costly part: one torch import each), so there are
    four; the uninterrupted reference, the refusals and the last resume run in this process.
    """
    iterations = 10
    common = ("--checkpoint-every", "1")
    reference = tmp_path / "reference"
    assert main(_train_argv(reference, *common, iterations=iterations)) == 0

    run = tmp_path / "run"
    rng = random.Random(11)
    for fault in ("torn", "unrenamed", "sigkill", "sigterm"):
        resume = ("--resume",) if (run / "checkpoint.pt").exists() else ()
        argv = _train_argv(run, *common, *resume, iterations=iterations)
        if fault in ("torn", "unrenamed"):  # killed inside the 1st or 2nd checkpoint write
            proc = _cli(*argv, driver=_KILL_IN_WRITE.format(n=rng.randint(1, 2), mode=fault))
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == -signal.SIGKILL, err
            assert (run / "checkpoint.pt.tmp").exists()  # the write really was interrupted
            continue
        proc = _cli(*argv)
        _wait_started(proc)
        if fault == "sigkill":  # at a random point of the run (maybe inside a write)
            try:
                proc.wait(timeout=rng.uniform(0.0, 1.0))
            except subprocess.TimeoutExpired:
                proc.kill()
            proc.communicate(timeout=600)
        else:  # SIGTERM: finish the iteration, write the checkpoint, exit 143
            before = load_checkpoint(run / "checkpoint.pt")["iteration"]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:  # (0: it had already finished)
                assert proc.returncode == 128 + signal.SIGTERM, err
                match = re.search(
                    r"stopped by SIGTERM at iteration (\d+); checkpoint .* written", err
                )
                assert match, err
                payload = load_checkpoint(run / "checkpoint.pt")
                assert payload["iteration"] == int(match[1]) >= before
                assert len(payload["history"]) == payload["iteration"]
    # corrupt checkpoints are one-line refusals, never silent loads
    ckpt = run / "checkpoint.pt"
    good = ckpt.read_bytes()
    for damaged in (good[: len(good) // 2], _flip(good, len(good) // 3), b""):
        ckpt.write_bytes(damaged)
        with pytest.raises(SystemExit) as exc:
            main(_train_argv(run, *common, "--resume", iterations=iterations))
        assert re.search(r"checkpoint.pt' is (corrupt|truncated|empty)", _one_line_error(exc))
    ckpt.write_bytes(good)
    # the repaired run resumes to the end: bit-identical to the uninterrupted one
    assert main(_train_argv(run, *common, "--resume", iterations=iterations)) == 0
    assert not (run / "checkpoint.pt.tmp").exists()
    _assert_same_run(reference / "checkpoint.pt", run / "checkpoint.pt")


def _flip(data: bytes, byte: int) -> bytes:
    out = bytearray(data)
    out[byte] ^= 0x10
    return bytes(out)


def test_library_train_resume_rejects_a_checkpoint_from_fewer_threads(tmp_path: Path) -> None:
    cfg = TrainConfig(**SYNTH, iterations=1)
    train(cfg, checkpoint=tmp_path / "c.pt")
    torch.set_num_threads(2)
    with pytest.raises(ValueError, match=r"torch.set_num_threads\(1\)"):
        train(dataclasses.replace(cfg, iterations=2), checkpoint=tmp_path / "c.pt", resume=True)
