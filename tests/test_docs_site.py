"""The docs site builds with ``mkdocs build --strict``, and a broken reference fails the build."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_site_builds_strict_with_the_api_reference(tmp_path: Path) -> None:
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "site" / "api" / "integrations" / "index.html").read_text()
    assert (
        "MetaMirrorDescent" in api and "mirror_step" in api and "DifferentiableMirrorDescent" in api
    )
    assert ":math:" not in api and 'class="arithmatex"' in api  # the math is rendered
    for page in ["migration", "distributed", "maps", "results", "api/maps", "api/distributed"]:
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_a_broken_reference_fails_the_strict_build(tmp_path: Path) -> None:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "mirroropt").symlink_to(ROOT / "mirroropt")
    index = tmp_path / "docs" / "index.md"
    index.write_text(
        index.read_text() + "\nSee [a missing page](no-such-page.md) and [adapt][mirroropt.nope].\n"
    )
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr and "mirroropt.nope" in done.stderr, done.stderr


def test_the_docstring_rewriter_turns_rst_into_markdown() -> None:
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "docs" / "_griffe_rst.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (
        "Step :math:`z - \\alpha g` by :func:`~mirroropt.adapt`.\n\n"
        ".. math::\n\n    z_{k+1} = z_k\n\nExample:\n    >>> 1 + 1\n    2\n"
    )
    assert module.rewrite(text) == (
        "Step \\(z - \\alpha g\\) by `mirroropt.adapt`.\n\n"
        "\\[\nz_{k+1} = z_k\n\\]\n\nExamples:\n    >>> 1 + 1\n    2\n"
    )


def test_the_readme_links_and_images_resolve() -> None:
    import re

    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)\)", text)
    local = [t for t in targets if not t.startswith("https://")]
    assert "docs/img/fontglot-5w1s.png" in local and "CITATION.cff" in local
    assert all((ROOT / t).exists() for t in local), [t for t in local if not (ROOT / t).exists()]
    assert all(t.startswith(("https://", "docs/", "CITATION", "LICENSE")) for t in targets)
