"""The command line: argument validation messages, and train → resume → eval → demo end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirroropt.__main__ import build_parser, main

TINY = [
    "--benchmark",
    "synthetic",
    "--n-way",
    "3",
    "--q-query",
    "2",
    "--width",
    "4",
    "--steps",
    "2",
    "--lr",
    "0.1",
    "--meta-batch",
    "2",
    "--no-progress",
]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--out", "x", "--map", "nope"],
            r"unknown map 'nope'; available maps: .*identity",
        ),
        (
            ["train", "--out", "x", "--benchmark", "mnist"],
            r"unknown benchmark 'mnist'; available: .*fontglot",
        ),
        (["train", "--out", "x", "--steps", "-1"], r"expected a positive integer .*, got -1"),
        (["train", "--out", "x", "--lr", "0"], r"expected a positive finite number, got 0.0"),
        (["train", "--out", "x", "--meta-batch", "two"], r"expected a positive integer, got 'two'"),
        (["train", "--out", "x", "--meta-optimizer", "rmsprop"], r"invalid choice: 'rmsprop'"),
        (["train", "--out", "x", "--objective", "maml"], r"invalid choice: 'maml'"),
        (
            ["reproduce", "--budget", "omniglot=300"],
            r"expected SETTING=N with SETTING one of \['fontglot-5w1s', .*got 'omniglot=300'",
        ),
        (["reproduce", "--budget", "sinusoid=0"], r"expected a positive integer, got 0"),
        (["train"], r"the following arguments are required: --out"),
        (["eval"], r"the following arguments are required: --checkpoint"),
        ([], r"the following arguments are required: \{train,eval,demo,reproduce\}"),
    ],
)
def test_rejects_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_parses_every_option() -> None:
    args = build_parser().parse_args(
        [
            "train",
            "--out",
            "r",
            "--benchmark",
            "sinusoid",
            "--map",
            "diagonal",
            "--steps",
            "3",
            "--lr",
            "0.05",
            "--meta-batch",
            "8",
            "--meta-optimizer",
            "sgd",
            "--meta-lr",
            "0.1",
            "--meta-step",
            "adaptive",
            "--first-order",
            "--objective",
            "metamd",
            "--seed",
            "4",
            "--augment",
            "--norm",
            "group",
            "--k-shot",
            "5",
            "--n-way",
            "20",
        ]
    )
    assert (args.map, args.steps, args.lr, args.meta_batch, args.meta_optimizer) == (
        "diagonal",
        3,
        0.05,
        8,
        "sgd",
    )
    assert args.first_order and args.augment and args.objective == "metamd" and args.seed == 4


def test_resume_of_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--resume given but .*checkpoint.pt does not exist"):
        main(["train", *TINY, "--out", str(tmp_path), "--resume", "--iterations", "1"])


def test_train_resume_eval_and_demo_write_their_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--map", "diagonal", "--iterations", "2", "--out", str(run)]) == 0
    assert (
        main(
            [
                "train",
                *TINY,
                "--map",
                "diagonal",
                "--iterations",
                "3",
                "--out",
                str(run),
                "--resume",
                "--eval-tasks",
                "4",
                "--max-steps",
                "2",
            ]
        )
        == 0
    )
    history = json.loads((run / "history.json").read_text())
    assert [r["iteration"] for r in history] == [1, 2, 3]
    out = capsys.readouterr().out
    assert "trained iterations 1–2 in" in out  # the first call
    assert "trained iterations 3–3 in" in out and " s in all its calls;" in out  # the resume
    assert (run / "eval.md").read_text().count("|") > 4
    assert (run / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run / "checkpoint.pt"),
                "--tasks",
                "6",
                "--max-steps",
                "3",
                "--out",
                str(tmp_path / "ev"),
                "--no-progress",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    (result,) = saved.values()
    assert result["tasks"] == 6 and len(result["metric"]["mean"]) == 4
    assert (tmp_path / "ev" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert (
        main(
            [
                "demo",
                "--quick",
                "--benchmark",
                "synthetic",
                "--out",
                str(tmp_path / "demo"),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "MAML (identity)" in out and "learned map (convex_potential)" in out and "k = 3" in out
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 1000


def test_missing_optional_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from mirroropt.workflow._optional import require_matplotlib, require_tqdm

    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` raise ImportError
    with pytest.raises(
        ImportError, match=r"Progress bars need tqdm; .*pip install mirroropt\[workflow\]"
    ):
        require_tqdm()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        ImportError, match=r"Plots need matplotlib; .*pip install mirroropt\[workflow\]"
    ):
        require_matplotlib()
    with pytest.raises(ImportError, match=r"pip install mirroropt\[workflow\]"):
        main(["eval", "--checkpoint", "x.pt"])


def test_demo_runs_on_the_shipped_fontglot(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's demo command, on its default (shipped, offline) data, at a tiny budget."""
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MAML (identity)" in out and "learned map (convex_potential)" in out
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert set(saved) == {"MAML (identity)", "learned map (convex_potential)"}
    for result in saved.values():
        accuracy = result["metric"]["mean"]
        assert len(accuracy) == 4 and all(0.0 <= a <= 1.0 for a in accuracy)
    assert (tmp_path / "demo" / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_defaults_to_the_protocols_anchored_convex_potential(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mirroropt.workflow

    seen = []
    real = mirroropt.workflow.train

    def spy(cfg, **kw):  # type: ignore[no-untyped-def]
        seen.append(cfg)
        return real(cfg, **kw)

    monkeypatch.setattr(mirroropt.workflow, "train", spy)
    argv = ["demo", "--quick", "--benchmark", "synthetic", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    maml, learned = seen
    assert (maml.map, maml.map_meta_lr) == ("identity", None)
    assert (learned.map, learned.start, learned.map_meta_lr) == (
        "convex_potential",
        "anchored",
        0.01,
    )
    assert dict(learned.map_kwargs) == {"init_scale": 0.1}
    seen.clear()  # another map gets no convex-potential keywords
    assert main([*argv, "--map", "diagonal", "--out", str(tmp_path / "b")]) == 0
    assert seen[1].map == "diagonal" and dict(seen[1].map_kwargs) == {}


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--seeds", "0"], "`seeds` must be at least 2 distinct seeds"),
        (["--val-tasks", "1"], "`eval_tasks` and `val_tasks` must be ≥ 2"),
    ],
)
def test_reproduce_refuses_a_bad_protocol_in_one_line_before_any_run(
    tmp_path: Path, extra: list[str], says: str
) -> None:
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:  # not a traceback: SystemExit with the line
        main(["reproduce", "--out", str(out), "--no-progress", "--settings", "sinusoid", *extra])
    message = str(exc.value.code)
    assert message.startswith("mirroropt reproduce: error: ") and says in message
    assert "\n" not in message
    assert not (out / "protocol.json").exists() and not list(out.rglob("record.json"))


def test_reproduce_refuses_a_folder_of_another_protocol_in_one_line(tmp_path: Path) -> None:
    from mirroropt.workflow._reproduce import Protocol

    out = tmp_path / "runs"
    out.mkdir()
    saved = Protocol(width=8).to_dict()
    (out / "protocol.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--out", str(out), "--no-progress", "--settings", "sinusoid"])
    message = str(exc.value.code)
    assert message.startswith("mirroropt reproduce: error: `out_dir`") and "['width']" in message
    assert (out / "protocol.json").read_text() == json.dumps(saved)  # the folder is untouched
