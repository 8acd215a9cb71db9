"""keep_freed_memory: the CPU meta-iteration's page-fault storm goes away, results do not change.

Page faults are counted (``getrusage``), never timed. Each case runs in a fresh process: the
allocator settings are process-wide, and the storm depends on the heap's history.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

SCRIPT = r"""
import json, resource, sys
import torch
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "keep":
    from mirroropt.workflow import keep_freed_memory
    assert keep_freed_memory()
import argparse, peers
parser = argparse.ArgumentParser(); peers.add_setting_arguments(parser)
args = parser.parse_args(["--steps", "2"])
args.maps, args.integration_maps = [], []
torch.manual_seed(0); torch.set_num_threads(1)
step, leaves = peers.build(args, "group", torch.device("cpu"))["torch.func vmap"]
for _ in range(3):  # warm-up: the heap grows to the step's peak
    for p in leaves: p.grad = None
    step()
faults = []
for _ in range(3):  # per step: the heap may still grow now and then
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for p in leaves: p.grad = None
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults, "grad": [float(p.grad.double().sum()) for p in leaves]}))
"""


def _step(mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MIRROROPT_KEEP_FREED_MEMORY", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(BENCHMARKS), mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_keep_freed_memory_removes_the_page_faults_of_a_meta_iteration_not_its_result() -> None:
    default, keep = _step("default"), _step("keep")
    # Conv4-32, meta-batch 4: by default every step gets memory back as fresh pages; kept, a
    # steady step gets none (the best of three steps: the heap may still grow in one of them)
    assert min(default["faults"]) > 5000
    assert min(keep["faults"]) < min(default["faults"]) / 50
    assert keep["grad"] == default["grad"]  # bit for bit


def test_the_environment_variable_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from mirroropt.workflow import keep_freed_memory
    from mirroropt.workflow._malloc import KEEP_FREED_MEMORY_ENV

    monkeypatch.setenv(KEEP_FREED_MEMORY_ENV, "0")
    assert keep_freed_memory() is False


LARGE = r"""
import json, resource, sys
import torch
if sys.argv[1] != "default":
    from mirroropt.workflow import keep_freed_memory
    assert keep_freed_memory(large_blocks=sys.argv[1] == "large")
faults = []
for _ in range(8):  # a 64 MiB activation, freed and allocated again (a Conv4-64 84x84 layer)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 << 20).fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_blocks_above_glibcs_mmap_threshold_are_kept_with_large_blocks() -> None:
    """64 MiB is above the largest mmap threshold glibc accepts (32 MiB): by default and with
    keep_freed_memory() it is mapped at every allocation (16 384 fresh 4 KiB pages each time);
    with large_blocks=True only while the heap grows (once or twice), then never."""

    def faults(mode: str) -> list[int]:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("MIRROROPT_KEEP_FREED_MEMORY", None)
        run = subprocess.run(
            [sys.executable, "-c", LARGE, mode], capture_output=True, text=True, env=env, check=True
        )
        return json.loads(run.stdout.strip().splitlines()[-1])

    default, keep, large = faults("default"), faults("keep"), faults("large")
    assert min(default[4:]) > 10_000 and min(keep[4:]) > 10_000  # mapped afresh every time
    assert max(large[4:]) < 100  # reused from the heap once it has grown (measured: by the 3rd)
