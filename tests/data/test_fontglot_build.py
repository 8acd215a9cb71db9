import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mirroropt.data._licences import is_allowed, parse_dep5
from mirroropt.data.fontglot_build import BuildParams, build_fontglot, checksum

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansCondensed.ttf",
)
PARAMS = BuildParams(min_families=3, samples=4, assume_licence="Bitstream-Vera-Fonts")


@pytest.fixture(scope="module")
def fonts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fonts")
    pkg = root / "fonts-dejavu-core"
    pkg.mkdir()
    for name in FILES:
        shutil.copy(DEJAVU / name, pkg / name)
    shutil.copy(DEJAVU / "DejaVuSans.ttf", pkg / "DejaVuSans-copy.ttf")  # exact duplicate renders
    return root


@pytest.fixture(scope="module")
def built(fonts: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("out") / "fg.npz"
    manifest = build_fontglot(fonts, out, PARAMS, quiet=True)
    with np.load(out) as data:
        arrays = {k: data[k] for k in data.files}
    return manifest, arrays


def test_renders_and_manifest(built: tuple[dict, dict]) -> None:
    manifest, a = built
    n, c = manifest["counts"]["samples"], manifest["counts"]["classes"]
    assert a["images"].shape == (n, 28, 28) and a["images"].dtype == np.uint8
    assert n == 4 * c and c > 50  # Latin, Greek, Cyrillic, … survive with 3 families
    assert "Latin" in manifest["scripts"] and "Cyrillic" in manifest["scripts"]
    # 2-px empty border, ink reaches 255, every image has ink.
    im = a["images"]
    assert not im[:, :2].any() and not im[:, -2:].any() and not im[:, :, :2].any()
    assert im.reshape(n, -1).max(1).min() > 200
    assert manifest["checksum"]["value"] == checksum(im, a["labels"])
    assert len(manifest["sample_fonts"]) == n
    assert {f["package"] for f in manifest["fonts"]} == {"fonts-dejavu-core"}
    assert all(f["licence"] == "Bitstream-Vera-Fonts" for f in manifest["fonts"])
    cps = [int(x["codepoint"][2:], 16) for x in manifest["classes"]]
    assert cps == a["class_codepoints"].tolist()


def test_deduplicates_and_drops_lookalikes(built: tuple[dict, dict]) -> None:
    manifest, a = built
    assert manifest["filters"]["dropped_renders"]["duplicate"] >= manifest["counts"]["classes"]
    files = {f["file"] for f in manifest["fonts"]}
    assert not {"DejaVuSans.ttf", "DejaVuSans-copy.ttf"} <= files  # the copy never adds a sample
    flat = a["images"].reshape(len(a["images"]), -1)
    for c in range(len(a["class_codepoints"])):
        members = flat[a["labels"] == c]
        assert len({m.tobytes() for m in members}) == len(members)  # no exact duplicates
    # o/O render identically after crop-and-resize: only one of them may remain.
    kept = set(a["class_codepoints"].tolist())
    assert not {ord("o"), ord("O")} <= kept
    assert any(
        x["codepoint"] in ("U+006F", "U+004F") for x in manifest["filters"]["lookalike_classes"]
    )
    means = np.stack([flat[a["labels"] == c].mean(0) for c in range(len(kept))]).astype(float)
    means -= means.mean(1, keepdims=True)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    corr = means @ means.T
    np.fill_diagonal(corr, 0)
    assert corr.max() < PARAMS.lookalike_corr


def test_deterministic_checksum(fonts: Path, built: tuple[dict, dict], tmp_path: Path) -> None:
    again = build_fontglot(fonts, tmp_path / "again.npz", PARAMS, quiet=True)
    assert again["checksum"]["value"] == built[0]["checksum"]["value"]
    on_disk = json.loads((tmp_path / "again_manifest.json").read_text(encoding="utf-8"))
    assert on_disk["checksum"] == again["checksum"]
    other = build_fontglot(
        fonts,
        tmp_path / "other.npz",
        PARAMS.__class__(**{**PARAMS.__dict__, "seed": 1}),
        quiet=True,
    )
    assert other["checksum"]["value"] != again["checksum"]["value"]  # the seed matters


def test_licence_filter(fonts: Path, tmp_path: Path) -> None:
    gpl = BuildParams(min_families=3, samples=4, assume_licence="GPL-2")
    with pytest.raises(ValueError, match=r"No font under .* has a licence that allows"):
        build_fontglot(fonts, tmp_path / "x.npz", gpl, quiet=True)
    with pytest.raises(ValueError, match=r"No font under"):  # unknown licence: excluded
        build_fontglot(fonts, tmp_path / "x.npz", BuildParams(), quiet=True)
    with pytest.raises(ValueError, match=r"`fonts` must be a folder of fonts"):
        build_fontglot(tmp_path / "nope", tmp_path / "x.npz", PARAMS, quiet=True)


@pytest.mark.parametrize(
    ("licence", "allowed"),
    [
        ("OFL-1.1", True),
        ("OFL-1.1-RFN", True),
        ("SIL Open Font License, Version 1.1", True),
        ("Apache-2.0", True),
        ("Expat", True),
        ("IPA-1", True),
        ("Bitstream-Vera-Fonts", True),
        ("GPL-2+ with Font exception", True),
        ("GPL-2-fonts-exception", True),
        ("AGPL-3 with Font exception", True),
        ("Public Domain", True),
        ("CC-BY-3.0", True),
        ("GPL-2", False),
        ("GPL-3.0+", False),
        ("LGPL-2.1+", False),
        ("GNU-GPL-3", False),
        ("CC-BY-SA-3.0", False),
        ("CC-BY-SA-3.0 or OFL-1.1", True),
        ("other", False),
        ("", False),
        ("GPL-2-and-LICENSE-BITSTREAM", False),
        ("M+Font and SazanamiFont and BSD-3-Clause", True),
        ("OFL-1.1 and GPL-2", False),
    ],
)
def test_licence_rule(licence: str, allowed: bool) -> None:
    assert is_allowed(licence) is allowed


def test_dep5_per_file_last_match_wins() -> None:
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: x\nLicense: GPL-2\n\n"
        "Files: BPG_Sans_Modern_GPL&GNU.ttf\nLicense: Bitstream-Vera-Fonts\n\n"
        "Files: nectec/Loma*.sfd\nLicense: GPL-2+ with Font exception\n\n"
        "Files: tools/*\nLicense: GPL-3+\n\n"
        "Files: debian/*\nLicense: OFL-1.1\n"
    )
    dep5 = parse_dep5(text)
    assert dep5 is not None
    base = "usr/share/fonts/truetype/x/"
    assert dep5.licence_of(base + "BPG_Sans_Modern_GPL&GNU.ttf") == "Bitstream-Vera-Fonts"
    assert dep5.licence_of(base + "BPGGlaho.ttf") == "GPL-2"
    assert dep5.licence_of(base + "Loma-Bold.ttf") == "GPL-2+ with Font exception"  # .sfd stem
    assert parse_dep5("This package is GPL.\n") is None


def test_missing_build_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from mirroropt.data.fontglot_build import build_fontglot

    monkeypatch.setitem(sys.modules, "fontTools", None)
    with pytest.raises(
        ImportError,
        match=r"needs fontTools and Pillow \(fontTools is missing\): pip install 'mirroropt\[build-data\]'",
    ):
        build_fontglot("/nonexistent", "/tmp/x.npz")


def test_reading_image_folders_without_pillow_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import sys
    from pathlib import Path

    from mirroropt.data._images import read_image

    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"needs Pillow: pip install 'mirroropt\[images\]'"):
        read_image(Path(tmp_path) / "a.png", size=28, mode="L")
