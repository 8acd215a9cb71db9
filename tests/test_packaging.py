"""Packaging: the sdist carries the whole test tree and pytest runs from it; PEP 639 licence."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what the tests read besides the package; every file under these must be in the sdist
TREES = ["tests", "examples", "benchmarks", "docs"]
FILES = ["LICENSE", "CITATION.cff", "CHANGELOG.md", "README.md", "mkdocs.yml", "pyproject.toml"]


def source_files() -> set[str]:
    found = set(FILES)
    for tree in TREES:
        for path in (ROOT / tree).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found.add(path.relative_to(ROOT).as_posix())
    return found


def test_the_sdist_ships_the_tests_and_pytest_runs_from_it(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (archive,) = tmp_path.glob("mirroropt-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "x", filter="data")
    missing = sorted(source_files() - names)
    assert not missing, missing
    assert "tests/conftest.py" in names and "mirroropt/data/fontglot.npz" in names
    (unpacked,) = (tmp_path / "x").iterdir()
    metadata = (unpacked / "PKG-INFO").read_text()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    # pytest runs from the unpacked sdist (its own conftest, its own copy of the package)
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_functional.py",
            "tests/integrations/test_integ_docs.py",
        ],
        cwd=unpacked,
        env={**os.environ, "PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert " passed" in ran.stdout and "error" not in ran.stdout.lower()


def test_licence_metadata_is_pep_639() -> None:
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python ≥ 3.11; we support 3.10)
    assert '\nlicense = "MIT"\n' in text and '\nlicense-files = ["LICENSE"]\n' in text
    assert "license = {" not in text.replace(" ", "").replace("license={", "license = {")
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    for extra in ["higher", "torchopt", "docs", "test", "workflow"]:
        assert f"\n{extra} = [" in text, extra
    assert "\n[project.urls]\n" in text
