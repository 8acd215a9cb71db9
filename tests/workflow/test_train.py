"""Meta-training: exact resume, improvement over the untrained model, the adaptive meta step."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from mirroropt.workflow import (
    AdaptiveMetaStep,
    TrainConfig,
    build_benchmark,
    build_learner,
    evaluate,
    load_checkpoint,
    train,
)

SYNTH = dict(
    benchmark="synthetic", n_way=3, k_shot=1, q_query=2, width=4, steps=2, lr=0.1, meta_batch=2
)


@pytest.mark.parametrize(
    "extra",
    [
        dict(map="diagonal", meta_optimizer="adam", norm="batch"),
        dict(
            map="diagonal",
            meta_optimizer="sgd",
            meta_step="adaptive",
            norm="group",
            meta_lr=1.0,
            adaptive_scale=0.1,
        ),
        dict(map="diagonal", objective="metamd", norm="group"),
    ],
    ids=["adam-batchnorm", "sgd-nesterov-adaptive", "metamd"],
)
def test_resume_equals_uninterrupted_run(tmp_path: Path, extra: dict) -> None:
    cfg = TrainConfig(**{"meta_lr": 1e-2, **SYNTH, **extra}, iterations=4)
    straight = train(cfg, checkpoint=tmp_path / "a.pt")
    half = dataclasses.replace(cfg, iterations=2)
    train(half, checkpoint=tmp_path / "b.pt")
    torch.manual_seed(123)  # resume must restore the RNG, not depend on the caller's
    resumed = train(cfg, checkpoint=tmp_path / "b.pt", resume=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert [r["meta_lr"] for r in resumed.history] == [r["meta_lr"] for r in straight.history]
    for (n, a), (_, b) in zip(
        straight.learner.state_dict().items(), resumed.learner.state_dict().items()
    ):
        assert torch.equal(a, b), n
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a["iteration"] == b["iteration"] == 4
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    if extra.get("meta_step") == "adaptive":  # the smoothness estimate really set the step
        assert any(r["meta_lr"] < cfg.meta_lr for r in straight.history[1:])


def test_training_improves_over_the_untrained_model() -> None:
    cfg = TrainConfig(
        benchmark="sinusoid",
        map="diagonal",
        k_shot=10,
        q_query=10,
        meta_batch=10,
        iterations=150,
        meta_lr=3e-3,
        steps=1,
        lr=0.01,
    )
    bench = build_benchmark(cfg)
    before = evaluate(build_learner(cfg, bench), bench, lr=cfg.lr, steps=1, tasks=100, seed=7)
    after = evaluate(train(cfg).learner, bench, lr=cfg.lr, steps=1, tasks=100, seed=7)
    # query MSE after one step: untrained ≈ E[A²]/2 ≈ 4.2; meta-trained clearly below
    assert (
        after.metric["mean"][1] + after.metric["ci95"][1]
        < before.metric["mean"][1] - before.metric["ci95"][1]
    )


def test_adaptive_meta_step_recovers_the_curvature_of_a_quadratic() -> None:
    curvature = torch.tensor([4.0, 1.0])
    theta = torch.nn.Parameter(torch.tensor([1.0, 1.0]))

    def grad_fn() -> list[torch.Tensor]:
        return [curvature * theta.detach()]  # ∇F for F = ½ Σ c_i θ_i²

    step = AdaptiveMetaStep(beta_max=1.0, scale=0.5)
    assert step.lr([theta], grad_fn) == 1.0  # no previous iterate yet: the cap
    with torch.no_grad():
        theta.copy_(torch.tensor([0.0, 1.0]))  # move along the stiff axis only
    beta = step.lr([theta], grad_fn)
    assert step.smoothness == pytest.approx(4.0) and beta == pytest.approx(0.5 / 4.0)
    assert torch.equal(theta.detach(), torch.tensor([0.0, 1.0]))  # parameters restored
    # no move: the secant estimate is undefined → the cap
    assert step.lr([theta], grad_fn) == 1.0 and math.isnan(step.smoothness)


def test_config_and_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`map` must be one of \[.*'identity'.*\], got 'nope'"):
        TrainConfig(map="nope")
    with pytest.raises(ValueError, match=r"`benchmark` must be one of .*, got 'mnist'"):
        TrainConfig(benchmark="mnist")
    with pytest.raises(ValueError, match=r"`meta_batch` must be a positive int, got 0"):
        TrainConfig(meta_batch=0)
    with pytest.raises(ValueError, match=r"`steps` must be a non-negative int, got -1"):
        TrainConfig(steps=-1)
    with pytest.raises(ValueError, match=r"`lr` must be a positive finite number, got 0.0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match=r"`momentum` must lie in \[0, 1\), got 1.0"):
        TrainConfig(momentum=1.0)
    with pytest.raises(
        ValueError, match=r"`meta_optimizer` must be 'adam' or 'sgd', got 'rmsprop'"
    ):
        TrainConfig(meta_optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`meta_step` must be 'fixed' or 'adaptive', got 'x'"):
        TrainConfig(meta_step="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`objective` must be one of \('query', 'metamd'\)"):
        TrainConfig(objective="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`steps` must be ≥ 1 with objective='metamd'"):
        TrainConfig(objective="metamd", steps=0)
    with pytest.raises(ValueError, match=r"`norm` must be 'batch' or 'group', got 'layer'"):
        TrainConfig(norm="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Unknown TrainConfig fields \['bogus'\]"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match=r"`resume=True` needs a `checkpoint` path"):
        train(TrainConfig(**SYNTH, iterations=1), resume=True)
    with pytest.raises(FileNotFoundError, match=r"`checkpoint` .*missing.pt' does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": 99}, tmp_path / "other.pt")
    with pytest.raises(
        ValueError, match=r"is not a mirroropt checkpoint of format 2 \(found format 99\)"
    ):
        load_checkpoint(tmp_path / "other.pt")
    cfg = TrainConfig(**SYNTH, iterations=1, map="identity")
    train(cfg, checkpoint=tmp_path / "c.pt")
    other = dataclasses.replace(cfg, lr=0.2, iterations=2)
    with pytest.raises(ValueError, match=r"fields \['lr'\] differ from the given config"):
        train(other, checkpoint=tmp_path / "c.pt", resume=True)


def test_evaluation_can_keep_a_diverging_adaptation_in_its_curves() -> None:
    # Reproducer: Meta-Curvature's learned sinusoid map diverged at inner step 8 > K = 5 on a test
    # task; evaluate raised and the protocol lost a trained run. `check_finite=False` keeps it.
    import mirroropt

    cfg = TrainConfig(benchmark="sinusoid", map="identity", k_shot=10, q_query=10, iterations=1)
    bench = build_benchmark(cfg)
    learner = build_learner(cfg, bench)
    kwargs = dict(lr=1e6, steps=10, tasks=4, seed=7)  # α far past 2/L: the iterates blow up
    with pytest.raises(mirroropt.NonFiniteError, match=r"not finite"):
        evaluate(learner, bench, **kwargs)  # type: ignore[arg-type]
    result = evaluate(learner, bench, check_finite=False, **kwargs)  # type: ignore[arg-type]
    mse = result.metric["mean"]
    assert math.isfinite(mse[0]) and not math.isfinite(mse[-1])
    from mirroropt.workflow._reproduce import _fmt

    assert _fmt(mse[-1], result.metric["ci95"][-1], accuracy=False) == "diverged"
