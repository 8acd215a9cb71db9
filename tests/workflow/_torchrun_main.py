"""``python -m mirroropt`` for torchrun, with two test-only changes (the tests' harness).

    torchrun --standalone --nproc_per_node 2 tests/workflow/_torchrun_main.py \\
        [--float64] [--fail-rank R --fail-at N] -- train ...

``--float64`` runs the whole command in float64 (``torch.set_default_dtype``: the synthetic
benchmark's tasks and the Conv4 then are float64), so two processes can be compared with one at
1e-12. ``--fail-rank R --fail-at N`` makes rank R raise a ``RuntimeError`` in its N-th meta-loss
(meta-iteration N without an adaptive step), as a bug or a lost device would.
"""

from __future__ import annotations

import os
import sys

import torch


def run(argv: list[str]) -> int:
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    if "--float64" in options:
        torch.set_default_dtype(torch.float64)
    if "--fail-rank" in options:
        rank = int(options[options.index("--fail-rank") + 1])
        at = int(options[options.index("--fail-at") + 1])
        if int(os.environ["RANK"]) == rank:
            import mirroropt.workflow._train as train_module

            real, calls = train_module.meta_loss, [0]

            def meta_loss(*args, **kwargs):  # type: ignore[no-untyped-def]
                calls[0] += 1
                if calls[0] == at:
                    raise RuntimeError(f"injected failure on rank {rank}")
                return real(*args, **kwargs)

            train_module.meta_loss = meta_loss  # type: ignore[assignment]
    from mirroropt.__main__ import main

    return main(command)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
