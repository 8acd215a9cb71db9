"""One-off repair of runs/evidence's records written before records carried each call's start.

Records from mirroropt before 0.2 list one segment per *completed* call (its end iteration and
its seconds); a call killed at the end of a session left its iterations in the checkpoint but no
segment, so the next call's seconds cover only what it trained itself. This script finds each
legacy segment's start from git: the folder is committed at the end of every session, so the
call that wrote a segment began from the checkpoint as committed just before the record first
held that segment — more exactly, as committed at the end of the *invocation* before the one
that wrote it (commits that change ``invocations.json``, which every invocation appends to when
it ends; commits taken while runs continued are skipped), for the working tree's records the
last such commit at or before ``HEAD``. It writes ``from`` into every
segment and ``untimed_iterations`` (iterations no recorded call timed) into the record, so
``python -m mirroropt reproduce --report-only`` shows those runs' training time as a lower bound.
It changes nothing else. Limitation: two calls on one run between two commits (a restart within
a session) look like one, so such a gap is missed (an undercount of untimed iterations).

    python runs/evidence/repairs/timing_from_git.py runs/evidence [--dry-run]   # at the repo root
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mirroropt.workflow._checkpoint import read_payload


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], check=True, capture_output=True).stdout


def at(commit: str, path: Path) -> bytes | None:
    try:
        return git("show", f"{commit}:{path.as_posix()}")
    except subprocess.CalledProcessError:
        return None  # not in that commit


def checkpoint_iteration(commit: str, path: Path) -> int:
    blob = at(commit, path)
    if blob is None:
        return 0
    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        f.write(blob)
        f.flush()
        return int(read_payload(f.name)["iteration"])


def repair(record_path: Path, write: bool = True) -> tuple[int, int]:
    record = json.loads(record_path.read_text())
    segments = record.get("segments", [])
    if all("from" in s for s in segments):
        return 0, int(record.get("untimed_iterations", 0))
    commits = git("log", "--format=%H", "--reverse", "--", str(record_path)).decode().split()
    versions = []  # (commit that wrote this version, number of segments in it)
    for c in commits:
        blob = at(c, record_path)
        versions.append((c, len(json.loads(blob).get("segments", [])) if blob else 0))
    if git("status", "--porcelain", "--", str(record_path)).strip() or not versions:
        versions.append(("WORKTREE", len(segments)))
    checkpoint = record_path.with_name("checkpoint.pt")
    history = git("log", "--format=%H", "--reverse").decode().split()  # linear: oldest first
    order = {c: i for i, c in enumerate(history)}
    order["WORKTREE"] = len(history)
    log = record_path.parents[3] / "invocations.json"  # <folder>/<setting>/<method>/<run>
    ends = [order[c] for c in git("log", "--format=%H", "--", str(log)).decode().split()]

    def invocation_start(commit: str) -> str | None:
        """The commit that closed the invocation before the one that wrote ``commit``'s file."""
        before = [i for i in ends if i < order[commit]]
        return history[max(before)] if before else None

    end, untimed = 0, 0
    for i, segment in enumerate(segments):
        if "from" not in segment:
            first = next(c for c, n in versions if n > i)
            start = invocation_start(first)
            begun = 0 if start is None else checkpoint_iteration(start, checkpoint)
            segment["from"] = min(max(begun, end), segment["to"])
        untimed += max(0, segment["from"] - end)
        end = segment["to"]
    record["untimed_iterations"] = untimed
    if not write:
        print(f"  {[(s['from'], s['to'], round(s['seconds'])) for s in segments]}")
        return 1, untimed
    tmp = record_path.with_name(record_path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, record_path)
    return 1, untimed


def main(folder: str, write: bool) -> None:
    for record_path in sorted(Path(folder).glob("*/*/*/record.json")):
        changed, untimed = repair(record_path, write)
        if changed:
            print(f"{record_path.parent}: untimed {untimed} iterations")


if __name__ == "__main__":
    main(sys.argv[1], write="--dry-run" not in sys.argv[2:])
