"""docs/migration.md is generated from the example pairs; the diffs for styles 1 and 2 stay small.

Regenerate after editing an example: ``python tests/integrations/test_integ_docs.py``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "migration.md"

#: (style, GD script, mirror-descent script, prose shown above the diff)
PAIRS = [
    (
        "1. Hand-written `torch.func` (PyTorch's MAML example pattern)",
        "examples/maml_torchfunc.py",
        "examples/mirror_torchfunc.py",
        "Keep your loop. Start it with `z = mirroropt.init(mirror_map, params)` and replace\n"
        "`{k: p - g * lr}` by `z, new_params = mirror_step(mirror_map, z, grads, lr)`. Everything\n"
        "stays pure, so `vmap` over tasks and second-order meta-gradients work as before; give\n"
        "the map's parameters to the meta-optimizer. With `Identity` the numbers are bit for bit\n"
        "those of the `p - g * lr` loop. For maps with work that does not depend on z (Kronecker's\n"
        "factor exponentials, the convex potential's folded weights), make it once per task: put\n"
        "`prepared = mirror_map.prepared()` before the step loop, inside the task function, and\n"
        "pass `mirror_step(..., prepared=prepared)` (else it runs at every step; for Kronecker an\n"
        "`eigh`, which on a GPU waits for the device). To replace the whole loop instead, use\n"
        "`mirroropt.adapt(mirror_map, make_loss_fn(net, criterion, x, y), params, lr=..., steps=...)`.\n"
        "**BatchNorm trap:** with BatchNorm (or InstanceNorm) using batch statistics, `vmap` gives\n"
        "wrong second-order meta-gradients on torch 2.13; batch tasks with\n"
        "`mirroropt.map_tasks(fn, *tasks, model=net)`, which batches such a model exactly\n"
        "(see `examples/omniglot_style.py`).",
    ),
    (
        "2. `higher` (`innerloop_ctx`, `diffopt.step(loss)`)",
        "examples/maml_higher.py",
        "examples/mirror_higher.py",
        "Build a `mirroropt.MirrorDescent` instead of `SGD`; a plain `import mirroropt` is enough\n"
        "(it registers `MirrorDescent` with `higher` when `higher` is imported, and never imports\n"
        "`higher` itself; needs `pip install 'mirroropt[higher]'`). `MirrorDescent` takes\n"
        "`net.parameters()` as well as `net.named_parameters()` (matched to the map in order).\n"
        "The dual variable is kept, with its graph, in `diffopt.state`; the map is read by\n"
        "reference from the optimizer, so `backward()` of the query loss reaches the map's\n"
        "parameters (a module placed in a param group is refused: `higher` would deep-copy it).\n"
        "With `Identity` the fast weights and meta-gradients are those of `higher`'s SGD bit for\n"
        "bit. A tensor `lr` passed as `override={'lr': [lr]}` is meta-learned too. Maps without\n"
        "`to_dual` (a learned dual initialization) are for `MirrorMAML.clone(z=...)` or\n"
        "`mirroropt.adapt(..., z=...)`.",
    ),
    (
        "3. learn2learn-style wrappers (`maml.clone()`, `learner.adapt(loss)`)",
        "examples/maml_learner.py",
        "examples/mirror_learner.py",
        "`mirroropt.integrations.MAML(model, lr)` has the interface of learn2learn's `MAML` (learn2learn\n"
        "is not needed); swap it for `MirrorMAML(model, mirror_map, lr)`. A learner holds an explicit\n"
        "`(phi, z)` and runs the model with `torch.func.functional_call`: the model's parameters are\n"
        "never modified. `maml.parameters()` contains the model's and the map's parameters (and\n"
        "`lr` if it is an `nn.Parameter`); `first_order=True` gives first-order MAML.",
    ),
    (
        "4. TorchOpt (`torchopt.MetaSGD`, `extract_state_dict`/`recover_state_dict`)",
        "examples/maml_torchopt.py",
        "examples/mirror_torchopt.py",
        "Replace `torchopt.MetaSGD(net, lr=...)` by\n"
        "`mirroropt.integrations.torchopt.MetaMirrorDescent(net, mirror_map, lr=...)` (needs\n"
        "`pip install 'mirroropt[torchopt]'`). It adapts the module in place like `MetaSGD`, takes\n"
        "the parameter names from the module, and keeps the dual variable in its `state_dict()`,\n"
        "so `torchopt.extract_state_dict(inner_opt)`/`recover_state_dict(inner_opt, ...)` reset it\n"
        "per task exactly as they reset MetaSGD. With `Identity` it is `torchopt.MetaSGD` bit for\n"
        "bit; with other maps its meta-gradients are the functional core's (tests/integrations/).",
    ),
    (
        "5. Unnamed parameters (functorch's regression example: `net(params, x)` on a list)",
        "examples/maml_lists.py",
        "examples/mirror_lists.py",
        "Build the map with `Diagonal(mirroropt.integrations.named(params))` (names `'0'`,\n"
        "`'1'`, … in list order) and replace the list comprehension by\n"
        "`new_params = mirror_update(mirror_map, new_params, grads, lr)`: it takes and returns\n"
        "lists (or tuples, e.g. the gradients `torch.autograd.grad` returns, or dicts), matched by\n"
        "position, and recomputes the dual point z = ∇h(φ) at each step, so there is no state to\n"
        "carry (a linear map with a scalar step size needs no z at all: φ − lr·g(∇L)). With\n"
        "`Identity` it is bit for bit `[p - lr * g for ...]`; with other maps it gives the\n"
        "iterates and meta-gradients of the dual-state loop\n"
        "`z, new_params = mirror_step(mirror_map, z, grads, lr)` (started with\n"
        "`z = mirror_init(mirror_map, params)`), which saves one `to_dual` per step for nonlinear\n"
        "maps and also serves maps without `to_dual`. Both take `prepared=mirror_map.prepared()`,\n"
        "made once per task (style 1). `mirror_update` works in dict-based loops (style 1) too.",
    ),
]

HEADER = """# Migrating MAML code to learned mirror descent

<!-- Generated by tests/integrations/test_integ_docs.py from the example pairs; do not edit. -->

Mirror descent keeps a dual variable z = ∇h(φ), steps it with the task gradient and maps back with
the learned inverse mirror map g: z ← z − α∇L(g(z)). With the `Identity` map it is MAML's gradient
descent, so each style below switches by changing a few lines, and every integration is tested to
give the same meta-gradients as the functional core `mirroropt.adapt` (tests/integrations/).
Each diff turns the MAML script (left) into its mirror-descent version (right); `Diagonal` stands
for any map in `mirroropt.maps`.
"""

FOOTER = """
## Code as it is found upstream

- **The inner optimizer is built inside `train()`/`test()`** (higher's and TorchOpt's Omniglot
  scripts build it there): the map holds the learned geometry, so it must be built once, next
  to the model, and be the same object at every iteration (a map built inside `train()` would
  restart from the identity). Either pass it to `train()`/`test()` (their signatures and calls:
  4 more lines) or, the smallest edit, make it a module global where the model is built:
  `global mirror_map; mirror_map = mirroropt.maps.Diagonal(net)`.
- **Gradients as tuples, parameters as lists or tuples** (`make_functional` returns a tuple,
  `torch.autograd.grad` a tuple): `mirror_update`/`mirror_step` take them as they are (style 5);
  `named(params)` is the one place names are made up.
- **BatchNorm under `vmap`** (functorch's `maml-omniglot-transforms` vmaps a model whose
  BatchNorm uses batch statistics): on torch 2.13 `vmap` then gives wrong second-order
  meta-gradients without an error (`benchmarks/batchnorm_trap.py` measures it). Where
  mirroropt sees the model it refuses: the loss from `make_loss_fn(net, ...)` raises under a
  plain `vmap` for such a model; `mirror_update` sees only tensors. Replace `vmap(fn)(*tasks)`
  by `mirroropt.map_tasks(fn, *tasks, model=net)`, which vmaps such a model exactly
  (BatchNorm's affine part split out; InstanceNorm is looped), or use GroupNorm / eval-mode
  BatchNorm.

### Five upstream scripts

The edits below switch each upstream MAML script to mirror descent with a learned `Diagonal`
map (MAML when the map is `Identity`). They were enumerated on the files at the commits given,
read with this repository's search tools (not copied here), and counted as in the next section;
the migrated scripts were not run (they need Omniglot and CUDA, or deprecated `functorch` APIs).

| upstream script (commit) | edits | changed |
| --- | --- | --- |
| higher `examples/maml-omniglot.py` (0c478d0) | `import mirroropt`; `global mirror_map; mirror_map = mirroropt.maps.Diagonal(net)`; `meta_opt` over `[*net.parameters(), *mirror_map.parameters()]`; `torch.optim.SGD(net.parameters(), lr=1e-1)` → `mirroropt.MirrorDescent(net.parameters(), mirror_map, lr=1e-1)` in `train` and `test` | 5 |
| functorch `maml_omniglot/maml-omniglot-transforms.py` (24c5633) | `import mirroropt`; the global map over `mirroropt.integrations.named(params)`; `meta_opt` over params + map; the two `[p - g * 1e-1 ...]` → `mirroropt.integrations.mirror_update(mirror_map, new_params, grads, 1e-1)`; `vmap(compute_loss_for_task)(...)` → `mirroropt.map_tasks(compute_loss_for_task, ..., model=net)` (its BatchNorm) | 6 |
| functorch `maml_regression/evjang_transforms.py` (f2e1710) | `import mirroropt`; `mirror_map = mirroropt.maps.Diagonal(mirroropt.integrations.named(params))`; `Adam` over params + map; the two list comprehensions → `mirror_update(mirror_map, ..., grads, alpha)` | 5 |
| learn2learn `examples/vision/maml_omniglot.py` (23568c6) | `import mirroropt`; `l2l.algorithms.MAML(model, lr=fast_lr, first_order=False)` → `mirroropt.integrations.MirrorMAML(model, mirroropt.maps.Diagonal(model), lr=fast_lr)` (`maml.parameters()` then holds the map's) | 2 |
| TorchOpt `examples/few-shot/maml_omniglot.py` (187fa54) | `import mirroropt`; the global map; `meta_opt` over params + map; `torchopt.MetaSGD(net, lr=1e-1)` → `mirroropt.integrations.torchopt.MetaMirrorDescent(net, mirror_map, lr=1e-1)` in `train` and `test` | 5 |

Passing the map as an argument instead of a global adds 4 lines to the higher and TorchOpt
scripts (9 each).

## How many lines change in the pairs above

Counted by `tests/integrations/test_integ_docs.py` on the pairs above: a changed line is a
line added or rewritten (a hunk that removes r lines and adds a counts max(r, a)), blank lines
excluded; every pair changes at most 6.

| style | changed | added | removed |
| --- | --- | --- | --- |
{table}
"""


def unified(before: str, after: str) -> str:
    a = (ROOT / before).read_text().splitlines(keepends=True)
    b = (ROOT / after).read_text().splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, fromfile=before, tofile=after, n=2))


def render() -> str:
    parts = [HEADER]
    rows = []
    for title, before, after, prose in PAIRS:
        diff = unified(before, after)
        parts.append(f"\n## {title}\n\n{prose}\n\n```diff\n{diff}```\n")
        added, removed = changed_lines(diff)
        rows.append(f"| {title.split(' (')[0]} | {touched_lines(diff)} | {added} | {removed} |")
    parts.append(FOOTER.format(table="\n".join(rows)))
    return "".join(parts)


def changed_lines(diff: str) -> tuple[int, int]:
    """(added, removed) non-blank lines of a unified diff, headers excluded."""
    lines = [ln for ln in diff.splitlines() if not ln.startswith(("+++", "---"))]
    added = sum(1 for ln in lines if ln.startswith("+") and ln[1:].strip())
    removed = sum(1 for ln in lines if ln.startswith("-") and ln[1:].strip())
    return added, removed


def touched_lines(diff: str) -> int:
    """Changed lines of a unified diff: per run of -/+ lines, max(removed, added) (non-blank)."""
    total, added, removed = 0, 0, 0
    for ln in [*diff.splitlines(), " "]:
        if ln.startswith(("+++", "---", "@@")):
            continue
        if ln.startswith("+") or ln.startswith("-"):
            if ln[1:].strip():
                added += ln.startswith("+")
                removed += ln.startswith("-")
            continue
        total, added, removed = total + max(added, removed), 0, 0
    return total


def test_checked_in_migration_guide_matches_the_examples() -> None:
    assert DOC.read_text() == render(), "run: python tests/integrations/test_integ_docs.py"


def test_switching_styles_1_and_2_changes_at_most_five_lines() -> None:
    for _, before, after, _ in PAIRS[:2]:
        added, removed = changed_lines(unified(before, after))
        assert 1 <= added <= 5 and removed <= 5, (before, added, removed)
    added, removed = changed_lines(unified(*PAIRS[2][1:3]))
    assert added <= 5 and removed <= 5


def test_changed_lines_counts_a_known_diff() -> None:
    diff = "--- a\n+++ b\n@@ -1,2 +1,3 @@\n x\n-y\n+y2\n+\n+z\n"
    assert changed_lines(diff) == (2, 1)
    # one rewritten line + one added (2), then one line removed without replacement (1)
    assert touched_lines(diff + " w\n-v\n") == 3


@pytest.mark.parametrize("pair", PAIRS, ids=[p[1].split("/")[1] for p in PAIRS])
def test_every_migration_changes_at_most_six_lines(pair: tuple[str, str, str, str]) -> None:
    diff = unified(pair[1], pair[2])
    added, _ = changed_lines(diff)
    assert added >= 1 and touched_lines(diff) <= 6, (pair[1], touched_lines(diff))


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC.relative_to(ROOT)}")
