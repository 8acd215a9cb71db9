"""The evidence protocol's training pieces (issue 8): MetaMD trains the map only, the map's own
meta step size, meta-validation selection, ``init_from`` and a user's FontGlot file."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from mirroropt.data import FontGlotChecksumError, default_fontglot_path
from mirroropt.workflow import (
    TrainConfig,
    build_benchmark,
    build_learner,
    load_checkpoint,
    meta_loss,
    train,
)
from mirroropt.workflow._train import best_checkpoint_path, meta_validate

SYNTH = dict(
    benchmark="synthetic",
    n_way=3,
    k_shot=1,
    q_query=2,
    width=4,
    steps=2,
    lr=0.1,
    meta_batch=2,
    norm="group",
)


def test_metamd_objective_gives_phi0_zero_gradient() -> None:
    """The regret bound's gradient w.r.t. φ₀ was ≈ Σ_k ∇L_support(φ_k) (joint training on
    label-permuted support sets); it must be exactly zero, while the map still gets one."""
    cfg = TrainConfig(**SYNTH, map="diagonal", objective="metamd")
    bench = build_benchmark(cfg)
    learner = build_learner(cfg, bench)
    value, _ = meta_loss(
        learner, bench, bench.sample("train", 1, 2), lr=cfg.lr, steps=cfg.steps, objective="metamd"
    )
    grads = torch.autograd.grad(
        value, learner.meta_parameters(), allow_unused=True, materialize_grads=True
    )
    n_init = len(learner.init_parameters())
    assert all(float(g.abs().max()) == 0.0 for g in grads[:n_init])
    assert max(float(g.abs().max()) for g in grads[n_init:]) > 0.0


def test_metamd_training_leaves_phi0_unchanged_and_moves_the_map() -> None:
    cfg = TrainConfig(**SYNTH, map="diagonal", objective="metamd", iterations=3, meta_lr=0.05)
    before = build_learner(cfg, build_benchmark(cfg))
    run = train(cfg)
    for (n, a), b in zip(before.model.named_parameters(), run.learner.model.parameters()):
        assert torch.equal(a, b), n
    moved = [
        float((a - b).detach().abs().max())
        for a, b in zip(before.mirror_map.parameters(), run.learner.mirror_map.parameters())
    ]
    assert max(moved) > 1e-3


def test_map_param_group_uses_its_own_meta_step_size() -> None:
    """Plain SGD, no momentum: each parameter moves by exactly −(its group's lr)·grad."""
    base = dict(SYNTH, map="diagonal", meta_optimizer="sgd", momentum=0.0, iterations=1)
    cfg = TrainConfig(**base, meta_lr=1e-3, map_meta_lr=0.3)
    bench = build_benchmark(cfg)
    learner = build_learner(cfg, bench)
    value, _ = meta_loss(
        learner,
        bench,
        bench.sample("train", _train_seed(cfg), cfg.meta_batch),
        lr=cfg.lr,
        steps=cfg.steps,
    )
    grads = torch.autograd.grad(value, learner.meta_parameters())
    start = [p.detach().clone() for p in learner.meta_parameters()]
    run = train(cfg)
    after = run.learner.meta_parameters()
    n_init = len(learner.init_parameters())
    for i, (p0, g, p1) in enumerate(zip(start, grads, after)):
        lr = 1e-3 if i < n_init else 0.3
        torch.testing.assert_close(p1.detach(), p0 - lr * g, rtol=1e-5, atol=1e-7)
    groups = {g["name"]: g["lr"] for g in _optimizer_groups(cfg)}
    assert groups == {"init": 1e-3, "map": 0.3}


def _train_seed(cfg: TrainConfig) -> int:
    from mirroropt.workflow import task_seed

    return task_seed(cfg.seed, "train", 0)


def _optimizer_groups(cfg: TrainConfig) -> list[dict]:
    learner = build_learner(cfg, build_benchmark(cfg))
    return learner.param_groups(meta_lr=cfg.meta_lr, map_meta_lr=cfg.map_meta_lr)


def test_meta_validation_selects_the_recorded_best_iteration(tmp_path: Path) -> None:
    cfg = TrainConfig(
        **SYNTH,
        map="diagonal",
        iterations=6,
        val_every=2,
        val_tasks=4,
        meta_lr=0.05,
        checkpoint_every=2,
    )
    ckpt = tmp_path / "run.pt"
    run = train(cfg, checkpoint=ckpt)
    rows = run.validation
    assert [r["iteration"] for r in rows] == [2, 4, 6]
    best = max(rows, key=lambda r: (r["value"], -r["iteration"]))  # earliest on ties
    assert run.best_iteration == best["iteration"] and run.best_value == best["value"]
    saved = load_checkpoint(best_checkpoint_path(ckpt))
    assert saved["iteration"] == best["iteration"]
    # the saved best learner really scores the recorded value (same val tasks every time)
    learner = run.best_learner()
    assert meta_validate(learner, run.benchmark, cfg) == best["value"]
    for k, v in saved["learner"].items():
        assert torch.equal(v, run.best_state[k]), k  # type: ignore[index]
    # resuming keeps the selection: the same validation log and best as one straight run
    half = dataclasses.replace(cfg, iterations=4)
    train(half, checkpoint=tmp_path / "half.pt")
    resumed = train(cfg, checkpoint=tmp_path / "half.pt", resume=True)
    assert resumed.validation == rows and resumed.best_iteration == run.best_iteration


def test_init_from_copies_the_source_initialization(tmp_path: Path) -> None:
    src = TrainConfig(**SYNTH, map="identity", iterations=2, meta_lr=0.05)
    train(src, checkpoint=tmp_path / "maml.pt")
    source = load_checkpoint(tmp_path / "maml.pt")["learner"]
    cfg = TrainConfig(
        **SYNTH,
        map="diagonal",
        objective="metamd",
        iterations=2,
        seed=5,
        init_from=str(tmp_path / "maml.pt"),
    )
    run = train(cfg)
    for n, p in run.learner.model.named_parameters():
        assert torch.equal(p, source[f"model.{n}"]), n  # φ₀ from MAML, and MetaMD kept it


def test_fontglot_path_rejects_a_file_whose_checksum_does_not_match(tmp_path: Path) -> None:
    src = default_fontglot_path()
    path = tmp_path / "mine.npz"
    shutil.copy(src, path)
    manifest = json.loads(src.with_name(src.stem + "_manifest.json").read_text())
    manifest["checksum"]["value"] = "0" * 64
    (tmp_path / "mine_manifest.json").write_text(json.dumps(manifest))
    cfg = TrainConfig(benchmark="fontglot", fontglot=str(path), width=4, steps=1, iterations=1)
    with pytest.raises(FontGlotChecksumError, match=r"checksum mismatch for .*mine\.npz"):
        build_benchmark(cfg)  # refused before any training
    with pytest.raises(ValueError, match=r"`fontglot` is a FontGlot file; it needs benchmark="):
        TrainConfig(benchmark="synthetic", fontglot=str(path))


def test_fontglot_path_runs_on_a_valid_copy(tmp_path: Path) -> None:
    src = default_fontglot_path()
    shutil.copy(src, tmp_path / "copy.npz")
    shutil.copy(src.with_name(src.stem + "_manifest.json"), tmp_path / "copy_manifest.json")
    cfg = TrainConfig(
        benchmark="fontglot",
        fontglot=str(tmp_path / "copy.npz"),
        width=4,
        steps=1,
        q_query=1,
        iterations=1,
        norm="group",
    )
    default = dataclasses.replace(cfg, fontglot="")
    a = build_benchmark(cfg).sample("test", 7, 2)
    b = build_benchmark(default).sample("test", 7, 2)
    assert torch.equal(a.x_support, b.x_support)


def _double_meta_grads(cfg: TrainConfig, params_of: object) -> tuple[torch.Tensor, list]:
    bench = build_benchmark(cfg)
    learner = build_learner(cfg, bench).double()
    b = bench.sample("train", 3, 2)
    batch = type(b)(b.x_support.double(), b.y_support, b.x_query.double(), b.y_query)
    value, _ = meta_loss(learner, bench, batch, lr=cfg.lr, steps=cfg.steps)
    return value, list(torch.autograd.grad(value, params_of(learner)))  # type: ignore[operator]


def test_anchored_convex_potential_at_init_is_per_tensor_meta_sgd() -> None:
    """Anchored, g̃(z) = φ₀ + μ_t z at the identity initialization: the same inner loop and the
    same meta-gradients as Diagonal(per="tensor") with d_t = μ_t. With MetaMiDA's learned z₀ the
    gradient on μ_t also rescales φ₀ = μ_t z₀, so it differs."""
    base = dict(SYNTH, lr=0.3)
    anchored = TrainConfig(**base, map="convex_potential", start="anchored")
    diag = TrainConfig(**base, map="diagonal", map_kwargs={"per": "tensor"})
    learned = TrainConfig(**base, map="convex_potential", start="learned")
    v_a, g_a = _double_meta_grads(
        anchored, lambda lr: [*lr.model.parameters(), *lr.mirror_map.log_mu.values()]
    )
    v_d, g_d = _double_meta_grads(
        diag, lambda lr: [*lr.model.parameters(), *lr.mirror_map.log_scale.values()]
    )
    torch.testing.assert_close(v_a, v_d, rtol=1e-12, atol=0)
    for a, d in zip(g_a, g_d):
        torch.testing.assert_close(a, d.reshape(a.shape), rtol=1e-9, atol=1e-13)
    _, g_l = _double_meta_grads(learned, lambda lr: list(lr.mirror_map.log_mu.values()))
    n = len(g_l)
    gap = max(float((a - d.reshape(a.shape)).abs().max()) for a, d in zip(g_l, g_d[-n:]))
    assert gap > 1e-4


def test_anchored_start_begins_at_the_backbone_and_trains_it() -> None:
    cfg = TrainConfig(
        **SYNTH,
        map="convex_potential",
        start="anchored",
        iterations=2,
        meta_lr=0.05,
        map_kwargs={"init_scale": 0.1},
    )
    bench = build_benchmark(cfg)
    learner = build_learner(cfg, bench)
    assert learner.z0 is None  # no learned dual initialization: the backbone is φ₀
    phi0 = learner.initialization()
    for n, p in learner.model.named_parameters():
        torch.testing.assert_close(phi0[n], p.detach(), rtol=0, atol=1e-6)
    before = [p.detach().clone() for p in learner.model.parameters()]
    run = train(cfg)
    moved = [
        float((a - b.detach()).abs().max()) for a, b in zip(before, run.learner.model.parameters())
    ]
    assert max(moved) > 1e-3
    with pytest.raises(ValueError, match=r"`start` must be one of \('learned', 'anchored'\)"):
        TrainConfig(**SYNTH, start="zero")  # type: ignore[arg-type]


def test_a_checkpoint_written_before_a_config_field_existed_still_resumes(tmp_path: Path) -> None:
    cfg = TrainConfig(**SYNTH, map="diagonal", iterations=1)
    train(cfg, checkpoint=tmp_path / "old.pt")
    payload = load_checkpoint(tmp_path / "old.pt")
    del payload["config"]["start"]  # as written by a version without the field (and without
    payload["format"] = 1  # checkpoint checksums: format 1, a plain torch.save archive)
    torch.save(payload, tmp_path / "old.pt")
    run = train(dataclasses.replace(cfg, iterations=2), checkpoint=tmp_path / "old.pt", resume=True)
    assert [r["iteration"] for r in run.history] == [1, 2]


def test_a_moved_runs_folder_resumes_although_init_from_changed(tmp_path: Path) -> None:
    src = TrainConfig(**SYNTH, map="identity", iterations=1)
    train(src, checkpoint=tmp_path / "a" / "maml.pt")
    cfg = TrainConfig(
        **SYNTH,
        map="diagonal",
        objective="metamd",
        iterations=1,
        init_from=str(tmp_path / "a" / "maml.pt"),
    )
    train(cfg, checkpoint=tmp_path / "a" / "md.pt")
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = dataclasses.replace(cfg, iterations=2, init_from=str(tmp_path / "b" / "maml.pt"))
    run = train(moved, checkpoint=tmp_path / "b" / "md.pt", resume=True)
    assert [r["iteration"] for r in run.history] == [1, 2]
