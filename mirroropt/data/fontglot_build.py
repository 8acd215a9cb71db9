"""Build FontGlot: an Omniglot-like few-shot set rendered from real, redistributable fonts.

A class is one letter of one writing system; a sample is that letter drawn by one font face.

Run on any folder of fonts laid out as ``DIR/<package>/**/*.{ttf,otf,ttc}`` (what
``dpkg -x PKG.deb DIR/PKG`` produces), or let ``--debian`` fetch and unpack the Debian bookworm
font packages first::

    python -m mirroropt.data.fontglot_build --debian --out mirroropt/data/fontglot.npz
    python -m mirroropt.data.fontglot_build --fonts /tmp/fontglot-debs/unpacked \\
        --out mirroropt/data/fontglot.npz

Steps (the defaults reproduce the shipped file):

1. Keep only fonts whose licence allows shipping rendered images (see ``_licences.py``; the
   licence comes from the package's Debian copyright file, or from ``--assume-licence``).
2. Keep letters of the scripts in ``_scripts.SCRIPTS`` that ≥ ``min_families`` font families
   (nameID 16, else 1) map in their cmap. Every face (regular, bold, italic, …) is a candidate
   sample; step 5 spreads each class over as many families as it can.
3. Render each letter with Pillow/FreeType (basic layout), crop to its ink, pad to a square,
   resize to ``size - 2 * border`` px, and centre in a ``size x size`` canvas; ink = 255.
4. Drop empty renders, renders identical to the font's .notdef glyph, and exact duplicates
   within a class. A render whose median correlation with the rest of its class is below
   ``outlier_corr`` is an outlier; a face that is an outlier in ≥ ``ban_fraction`` of its
   classes of one script is banned from that script; then outliers are dropped.
5. Keep classes with ≥ ``samples`` renders and draw ``samples`` of them (seeded shuffle, then
   round-robin over families: a second face of a family only once every family has one).
6. Drop look-alike classes: a class whose mean image correlates ≥ ``lookalike_corr`` with the
   mean image of an earlier kept class (Latin ``o``/``O``, Greek capital alpha/Latin ``A``, …).
   Then drop scripts left with fewer than ``min_script_classes`` classes.

Writes ``<out>.npz`` (``images`` uint8 [N, 28, 28], ``labels`` int32 [N], ``class_codepoints``
int32 [C], ``class_scripts`` int32 [C], ``script_names`` str [S]) and
``<out stem>_manifest.json`` (provenance per font, class, sample; split; parameters; the SHA-256
of the raw arrays, which a rebuild from the same fonts with the same Pillow/FreeType reproduces).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing
import platform
import shutil
import subprocess
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mirroropt.data._licences import RESOLVED, REVIEWED, is_allowed, parse_dep5
from mirroropt.data._scripts import META_TEST_SCRIPTS, META_VAL_SCRIPTS, SCRIPTS, script_letters

__all__ = ["DEBIAN_PACKAGES", "BuildParams", "build_fontglot", "checksum", "main"]

# Debian bookworm packages of the trial build (shared/data/fontglot/packages.txt), without
# fonts-yozvox-yozfont (1.2 GB unpacked, adds nothing).
DEBIAN_PACKAGES: tuple[str, ...] = tuple(
    """
culmus fonts-arabeyes fonts-baekmuk fonts-beng-extra fonts-bpg-georgian fonts-cardo fonts-cmu
fonts-croscore fonts-ddc-uchen fonts-deva-extra fonts-ebgaramond fonts-farsiweb fonts-freefarsi
fonts-freefont-ttf fonts-gargi fonts-georgewilliams fonts-gfs-artemisia fonts-gfs-baskerville
fonts-gfs-bodoni-classic fonts-gfs-complutum fonts-gfs-didot fonts-gfs-didot-classic
fonts-gfs-gazis fonts-gfs-neohellenic fonts-gfs-olga fonts-gfs-porson fonts-gfs-solomos
fonts-gfs-theokritos fonts-go fonts-gujr-extra fonts-horai-umefont fonts-hosny-amiri
fonts-ipafont-gothic fonts-ipafont-mincho fonts-junicode fonts-kacst fonts-kalapi fonts-khmeros
fonts-kiloji fonts-klee fonts-konatu fonts-lao fonts-ldco fonts-lg-aboriginal fonts-liberation2
fonts-linuxlibertine fonts-lohit-beng-assamese fonts-lohit-beng-bengali fonts-lohit-deva
fonts-lohit-gujr fonts-lohit-mlym fonts-lohit-telu fonts-monlam fonts-motoya-l-cedar
fonts-motoya-l-maruberi fonts-mph-2b-damase fonts-myanmar fonts-nafees fonts-nakula
fonts-noto-core fonts-oldstandard fonts-pagul fonts-paktype fonts-paratype fonts-sahadeva
fonts-sambhota-yigchung fonts-samyak-deva fonts-samyak-gujr fonts-samyak-mlym
fonts-sawarabi-gothic fonts-sawarabi-mincho fonts-senamirmir-washra fonts-seto
fonts-sil-abyssinica fonts-sil-andika fonts-sil-annapurna fonts-sil-charis fonts-sil-doulos
fonts-sil-ezra fonts-sil-galatia fonts-sil-gentiumplus fonts-sil-harmattan fonts-sil-lateef
fonts-sil-mondulkiri fonts-sil-nuosusil fonts-sil-padauk fonts-sil-scheherazade
fonts-smc-anjalioldlipi fonts-smc-chilanka fonts-smc-dyuthi fonts-smc-gayathri fonts-smc-karumbi
fonts-smc-keraleeyam fonts-smc-manjari fonts-smc-meera fonts-smc-rachana
fonts-smc-raghumalayalamsans fonts-smc-suruma fonts-smc-uroob fonts-takao-gothic
fonts-takao-mincho fonts-telu-extra fonts-teluguvijayam fonts-texgyre fonts-tibetan-machine
fonts-tlwg-garuda-ttf fonts-tlwg-kinnari-ttf fonts-tlwg-laksaman-ttf fonts-tlwg-loma-ttf
fonts-tlwg-mono-ttf fonts-tlwg-norasi-ttf fonts-tlwg-purisa-ttf fonts-tlwg-sawasdee-ttf
fonts-tlwg-typewriter-ttf fonts-tlwg-typist-ttf fonts-tlwg-typo-ttf fonts-tlwg-umpush-ttf
fonts-tlwg-waree-ttf fonts-triod-postnaja fonts-unfonts-core fonts-uralic fonts-urw-base35
fonts-vlgothic fonts-yrsa-rasa
""".split()
)

_FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
_NOTDEF_PROBE = "\U0010fffd"  # a private-use code point no font maps: renders glyph 0


@dataclass(frozen=True)
class BuildParams:
    """Parameters of a FontGlot build (all recorded in the manifest).

    Attributes:
        size: side of the output images (px).
        border: empty border around the glyph (px); the glyph fits ``size - 2 * border``.
        render_size: font size (px) at which glyphs are rendered before resizing.
        min_families: a letter needs this many families mapping it to become a class.
        samples: samples per class (classes with fewer surviving renders are dropped).
        outlier_corr: a render whose median correlation with its class is below this is an
            outlier.
        ban_fraction: a face that is an outlier in at least this fraction of its classes of a
            script is banned from that script.
        lookalike_corr: a class whose mean image correlates at least this much with an earlier
            kept class is dropped.
        min_script_classes: scripts left with fewer classes than this are dropped.
        seed: seed of the per-class sample draw.
        assume_licence: licence to assume for fonts whose package has no copyright information
            (``None``: such fonts are excluded).
    """

    size: int = 28
    border: int = 2
    render_size: int = 64
    min_families: int = 8
    samples: int = 15
    outlier_corr: float = 0.45
    ban_fraction: float = 0.25
    lookalike_corr: float = 0.95
    min_script_classes: int = 5
    seed: int = 0
    assume_licence: str | None = None


@dataclass(frozen=True)
class _Font:
    package: str
    file: str  # relative to the package root
    path: str  # absolute
    index: int  # face index in a collection
    licence: str


def checksum(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the raw arrays: ``images`` as C-ordered uint8, then ``labels`` as ``<i4``.

    This, not the hash of the ``.npz`` (whose zip entries carry timestamps), identifies a build.
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i4").tobytes())
    return h.hexdigest()


def _package_version(pkg_root: Path, package: str) -> str | None:
    log = pkg_root / "usr" / "share" / "doc" / package / "changelog.Debian.gz"
    try:
        with gzip.open(log, "rt", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return None
    if "(" in first and ")" in first:
        return first.split("(", 1)[1].split(")", 1)[0]
    return None


def _discover(fonts: Path, params: BuildParams) -> tuple[list[_Font], dict[str, dict]]:
    """Font files under ``fonts`` with their licence; and a per-package licence report."""
    entries = sorted(p for p in fonts.iterdir() if not p.name.startswith("."))
    if any(p.is_file() for p in entries):  # a flat folder of fonts: one pseudo-package
        packages = [(fonts.name, fonts)]
    else:
        packages = [(p.name, p) for p in entries if p.is_dir()]
    out: list[_Font] = []
    report: dict[str, dict] = {}
    seen: set[Path] = set()
    for package, root in packages:
        copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
        dep5 = None
        if package not in REVIEWED and copyright_file.is_file():
            dep5 = parse_dep5(copyright_file.read_text(encoding="utf-8", errors="replace"))
        files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in _FONT_SUFFIXES and p.is_file() and not p.is_symlink()
        )
        kept, excluded = 0, {}
        for p in files:
            real = p.resolve()
            if real in seen:
                continue
            seen.add(real)
            rel = p.relative_to(root).as_posix()
            licence = REVIEWED.get(package) or (dep5.licence_of(rel) if dep5 else None)
            licence = RESOLVED.get((package, licence or ""), licence)
            if licence is None:
                licence = params.assume_licence
            if licence is None or not is_allowed(licence):
                excluded[rel] = licence
                continue
            n_faces = _face_count(p)
            for index in range(n_faces):
                out.append(_Font(package, rel, str(p), index, licence))
            kept += 1
        report[package] = {
            "version": _package_version(root, package),
            "font_files": len(files),
            "font_files_allowed": kept,
            "excluded": {f: lic for f, lic in excluded.items()},
        }
    return out, report


def _face_count(path: Path) -> int:
    if path.suffix.lower() != ".ttc":
        return 1
    from fontTools.ttLib import TTCollection

    with TTCollection(str(path), lazy=True) as coll:
        return len(coll.fonts)


def _scan(args: tuple[str, int, tuple[int, ...]]) -> tuple[str, str, list[int]] | None:
    """(family, style, mapped letters) of one face; None if it cannot be read."""
    import logging

    from fontTools.ttLib import TTFont

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # benign table warnings

    path, index, letters = args
    try:
        with TTFont(path, fontNumber=index, lazy=True) as font:
            names = font["name"]
            family = names.getDebugName(16) or names.getDebugName(1) or Path(path).stem
            style = names.getDebugName(17) or names.getDebugName(2) or ""
            cmap = font.getBestCmap() or {}
    except Exception:
        return None
    return family, style, [cp for cp in letters if cp in cmap]


def _render(args: tuple[str, int, tuple[int, ...], BuildParams]) -> list[np.ndarray | None]:
    """Render ``letters`` with one face; None for empty or .notdef-looking renders."""
    from PIL import Image, ImageDraw, ImageFont

    path, index, letters, p = args
    try:
        font = ImageFont.truetype(
            path, size=p.render_size, index=index, layout_engine=ImageFont.Layout.BASIC
        )
    except OSError:
        return [None] * len(letters)
    inner = p.size - 2 * p.border

    def draw(ch: str) -> Image.Image | None:
        left, top, right, bottom = (int(v) for v in font.getbbox(ch))
        w, h = max(right - left, 1) + 8, max(bottom - top, 1) + 8
        im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(im).text((4 - left, 4 - top), ch, font=font, fill=255)
        box = im.getbbox()
        return None if box is None else im.crop(box)

    try:
        notdef = draw(_NOTDEF_PROBE)
    except (OSError, ValueError):
        notdef = None
    notdef_bytes = None if notdef is None else (notdef.size, notdef.tobytes())
    out: list[np.ndarray | None] = []
    for cp in letters:
        try:
            glyph = draw(chr(cp))
        except (OSError, ValueError):
            glyph = None
        if glyph is None or (
            notdef_bytes is not None and (glyph.size, glyph.tobytes()) == notdef_bytes
        ):
            out.append(None)
            continue
        w, h = glyph.size
        side = max(w, h)
        square = Image.new("L", (side, side), 0)
        square.paste(glyph, ((side - w) // 2, (side - h) // 2))
        small = square.resize((inner, inner), Image.Resampling.LANCZOS)
        canvas = np.zeros((p.size, p.size), dtype=np.uint8)
        canvas[p.border : p.border + inner, p.border : p.border + inner] = np.asarray(small)
        out.append(canvas if canvas.any() else None)
    return out


def _corr(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    return x @ x.T


def _outliers(images: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask: median correlation with the other members of the class < threshold."""
    if len(images) < 3:
        return np.zeros(len(images), dtype=bool)
    c = _corr(images)
    np.fill_diagonal(c, np.nan)
    return np.nanmedian(c, axis=1) < threshold


def _progress(iterable, total: int, desc: str, quiet: bool):
    if quiet:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr)


def _require_build_dependencies() -> None:
    try:
        import fontTools  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"Building FontGlot needs fontTools and Pillow ({error.name} is missing): "
            "pip install 'mirroropt[build-data]'."
        ) from error


def build_fontglot(
    fonts: str | Path,
    out: str | Path,
    params: BuildParams = BuildParams(),
    *,
    jobs: int = 1,
    quiet: bool = False,
) -> dict:
    """Build FontGlot from a font folder; write ``out`` (.npz) and its manifest.

    Args:
        fonts: ``DIR/<package>/**/*.{ttf,otf,ttc}`` (Debian packages unpacked with ``dpkg -x``),
            or a flat folder of fonts (one pseudo-package named after the folder).
        out: path of the ``.npz``; the manifest goes to ``<stem>_manifest.json`` beside it.
        params: build parameters.
        jobs: worker processes for scanning and rendering (1: in this process).
        quiet: no progress bars.

    Returns:
        The manifest (also written as JSON).

    Raises:
        ValueError: if ``fonts`` is not a folder, no font has an allowed licence, or no class
            survives the filters.

    Example:
        >>> build_fontglot("/tmp/fonts", "/tmp/fg.npz", BuildParams(min_families=2, samples=2),
        ...                quiet=True)["counts"]  # doctest: +SKIP
        {'classes': ..., 'samples': ..., 'scripts': ..., 'fonts': ...}
    """
    _require_build_dependencies()
    fonts, out = Path(fonts), Path(out)
    if not fonts.is_dir():
        raise ValueError(f"`fonts` must be a folder of fonts, got {str(fonts)!r}.")
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"`jobs` must be an integer ≥ 1, got {jobs}.")
    letters = script_letters()
    all_letters = tuple(sorted(letters))
    faces, report = _discover(fonts, params)
    if not faces:
        raise ValueError(
            f"No font under {str(fonts)!r} has a licence that allows shipping rendered images "
            "(see docs/data.md); pass `assume_licence` for fonts without copyright files."
        )

    def pool_map(fn, items, desc):
        if jobs == 1:
            return list(_progress(map(fn, items), len(items), desc, quiet))
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx) as ex:
            return list(_progress(ex.map(fn, items, chunksize=4), len(items), desc, quiet))

    scans = pool_map(_scan, [(f.path, f.index, all_letters) for f in faces], "scan fonts")
    # reps: every readable face as (face index, family, mapped letters), in sorted order.
    reps: list[tuple[int, str, list[int]]] = []
    unreadable = []
    for i, s in enumerate(scans):
        if s is None:
            unreadable.append(f"{faces[i].package}/{faces[i].file}#{faces[i].index}")
            continue
        family, _style, mapped = s
        if mapped:
            reps.append((i, family, mapped))
    family_cover: dict[int, set[str]] = {}
    for _, family, mapped in reps:
        for cp in mapped:
            family_cover.setdefault(cp, set()).add(family)
    classes = [cp for cp in all_letters if len(family_cover.get(cp, ())) >= params.min_families]
    # Class order: script order of SCRIPTS, then code point.
    script_order = {name: k for k, (name, _) in enumerate(SCRIPTS)}
    classes.sort(key=lambda cp: (script_order[letters[cp]], cp))
    class_set = set(classes)
    jobs_render = [
        (faces[i].path, faces[i].index, tuple(cp for cp in mapped if cp in class_set), params)
        for i, _, mapped in reps
    ]
    renders = pool_map(_render, jobs_render, "render")

    # Gather per class: (font id, image), font ids in family order.
    per_class: dict[int, list[tuple[int, np.ndarray]]] = {cp: [] for cp in classes}
    dropped = {"empty_or_notdef": 0, "duplicate": 0, "outlier": 0, "banned_font": 0}
    for font_id, (job, imgs) in enumerate(zip(jobs_render, renders, strict=True)):
        for cp, img in zip(job[2], imgs, strict=True):
            if img is None:
                dropped["empty_or_notdef"] += 1
                continue
            members = per_class[cp]
            if any(np.array_equal(img, other) for _, other in members):
                dropped["duplicate"] += 1
                continue
            members.append((font_id, img))
    # Outliers, then fonts that are outliers too often.
    # A face is banned *within a script* where it is an outlier in ≥ ban_fraction of that
    # script's classes it renders (legacy-encoded and symbol fonts); its other scripts stay.
    outlier_count: dict[tuple[int, str], int] = {}
    class_count: dict[tuple[int, str], int] = {}
    for cp, members in per_class.items():
        if not members:
            continue
        mask = _outliers(np.stack([im for _, im in members]), params.outlier_corr)
        for (f, _), bad in zip(members, mask, strict=True):
            key = (f, letters[cp])
            class_count[key] = class_count.get(key, 0) + 1
            outlier_count[key] = outlier_count.get(key, 0) + int(bad)
    banned = {
        key for key, n in class_count.items() if outlier_count[key] >= params.ban_fraction * n
    }
    for cp, members in per_class.items():
        kept = [(f, im) for f, im in members if (f, letters[cp]) not in banned]
        dropped["banned_font"] += len(members) - len(kept)
        if kept:
            mask = _outliers(np.stack([im for _, im in kept]), params.outlier_corr)
            dropped["outlier"] += int(mask.sum())
            kept = [m for m, bad in zip(kept, mask, strict=True) if not bad]
        per_class[cp] = kept
    # Fixed-size classes (seeded draw), then look-alike removal on class means.
    rng = np.random.default_rng(params.seed)
    chosen: list[tuple[int, list[tuple[int, np.ndarray]]]] = []
    too_small = 0
    for cp in classes:
        members = per_class[cp]
        if len(members) < params.samples:
            too_small += 1
            continue
        # Seeded shuffle, then round-robin over families: as many distinct families as there
        # are, before a second face (bold, italic, …) of any family.
        order = rng.permutation(len(members))
        rank: dict[str, int] = {}
        keyed: list[tuple[int, int, int]] = []
        for k in order:
            family = reps[members[k][0]][1]
            keyed.append((rank.get(family, 0), len(keyed), int(k)))
            rank[family] = rank.get(family, 0) + 1
        pick = sorted(k for _, _, k in sorted(keyed)[: params.samples])
        chosen.append((cp, [members[k] for k in pick]))
    final: list[tuple[int, list[tuple[int, np.ndarray]]]] = []
    unit_means = np.zeros((len(chosen), params.size * params.size))  # rows of kept classes
    lookalikes: list[dict] = []
    for cp, members in chosen:
        mean = np.stack([im for _, im in members]).astype(np.float64).mean(axis=0).ravel()
        mean -= mean.mean()
        mean /= np.linalg.norm(mean) + 1e-12
        if final:
            corr = unit_means[: len(final)] @ mean
            j = int(np.argmax(corr))
            if corr[j] >= params.lookalike_corr:
                lookalikes.append(
                    {
                        "codepoint": f"U+{cp:04X}",
                        "like": f"U+{final[j][0]:04X}",
                        "corr": round(float(corr[j]), 4),
                    }
                )
                continue
        unit_means[len(final)] = mean
        final.append((cp, members))
    script_sizes: dict[str, int] = {}
    for cp, _ in final:
        script_sizes[letters[cp]] = script_sizes.get(letters[cp], 0) + 1
    small_scripts = {k: v for k, v in script_sizes.items() if v < params.min_script_classes}
    final = [(cp, members) for cp, members in final if letters[cp] not in small_scripts]
    if not final:
        raise ValueError(
            f"No class survived the filters for fonts in {str(fonts)!r} "
            f"(min_families={params.min_families}, samples={params.samples})."
        )

    script_names = [name for name, _ in SCRIPTS if any(letters[cp] == name for cp, _ in final)]
    script_index = {name: k for k, name in enumerate(script_names)}
    images = np.stack([im for _, members in final for _, im in members]).astype(np.uint8)
    labels = np.repeat(np.arange(len(final), dtype=np.int32), params.samples)
    class_codepoints = np.array([cp for cp, _ in final], dtype=np.int32)
    class_scripts = np.array([script_index[letters[cp]] for cp, _ in final], dtype=np.int32)
    sample_fonts = [f for _, members in final for f, _ in members]

    used_fonts = sorted(set(sample_fonts))
    font_ids = {f: k for k, f in enumerate(used_fonts)}
    font_table = [
        {
            "id": font_ids[f],
            "family": reps[f][1],
            "style": scans[reps[f][0]][1],  # type: ignore[index]
            "package": faces[reps[f][0]].package,
            "version": report[faces[reps[f][0]].package]["version"],
            "file": faces[reps[f][0]].file,
            "face_index": faces[reps[f][0]].index,
            "licence": faces[reps[f][0]].licence,
        }
        for f in used_fonts
    ]
    per_script = {name: int((class_scripts == k).sum()) for name, k in script_index.items()}
    split = {
        "test": [s for s in META_TEST_SCRIPTS if s in script_index],
        "val": [s for s in META_VAL_SCRIPTS if s in script_index],
    }
    split["train"] = [s for s in script_names if s not in split["test"] and s not in split["val"]]
    import fontTools
    from PIL import features

    manifest = {
        "name": "FontGlot",
        "description": "One class per letter of a writing system; one sample per font family.",
        "arrays": {
            "images": "uint8 [N, size, size], ink 255 on 0",
            "labels": "int32 [N], class index",
            "class_codepoints": "int32 [C]",
            "class_scripts": "int32 [C], index into script_names",
            "script_names": "str [S]",
        },
        "checksum": {
            "algorithm": "sha256",
            "of": "images.astype(uint8).tobytes() + labels.astype('<i4').tobytes()",
            "value": checksum(images, labels),
        },
        "counts": {
            "classes": len(final),
            "samples": len(images),
            "scripts": len(script_names),
            "faces": len(used_fonts),
            "families": len({reps[f][1] for f in used_fonts}),
            "per_script": per_script,
            "per_split_classes": {k: sum(per_script[s] for s in v) for k, v in split.items()},
        },
        "split": split,
        "scripts": script_names,
        "params": asdict(params),
        "filters": {
            "candidate_classes": len(classes),
            "faces": len(reps),
            "families": len({fam for _, fam, _ in reps}),
            "dropped_renders": dropped,
            "banned_faces": [
                f"{script}: {faces[reps[f][0]].package}/{faces[reps[f][0]].file}"
                f"#{faces[reps[f][0]].index}"
                for f, script in sorted(banned)
            ],
            "classes_too_small": too_small,
            "scripts_too_small": small_scripts,
            "lookalike_classes": lookalikes,
            "unreadable_faces": unreadable,
        },
        "software": {
            "python": platform.python_version(),
            "unicodedata": unicodedata.unidata_version,
            "numpy": np.__version__,
            "pillow": __import__("PIL").__version__,
            "freetype": features.version("freetype2"),
            "fonttools": fontTools.version,
        },
        "packages": {
            pkg: {
                "version": r["version"],
                "font_files": r["font_files"],
                "font_files_allowed": r["font_files_allowed"],
                "fonts_used": sum(1 for f in font_table if f["package"] == pkg),
                "excluded_files": r["excluded"],
            }
            for pkg, r in report.items()
        },
        "fonts": font_table,
        "classes": [
            {
                "label": k,
                "codepoint": f"U+{cp:04X}",
                "char": chr(cp),
                "unicode_name": unicodedata.name(chr(cp), ""),
                "script": letters[cp],
            }
            for k, (cp, _) in enumerate(final)
        ],
        "sample_fonts": [font_ids[f] for f in sample_fonts],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=images,
        labels=labels,
        class_codepoints=class_codepoints,
        class_scripts=class_scripts,
        script_names=np.array(script_names),
    )
    manifest_path = out.with_name(out.stem + "_manifest.json")
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def _fetch_debian(scratch: Path, packages: tuple[str, ...], update: bool) -> Path:
    debs = scratch / "debs"
    unpacked = scratch / "unpacked"
    debs.mkdir(parents=True, exist_ok=True)
    unpacked.mkdir(parents=True, exist_ok=True)
    if update:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "download", "-q", *packages], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        package = deb.name.split("_", 1)[0]
        if package not in packages:
            continue
        target = unpacked / package
        if not target.is_dir():  # unpack beside, then rename: a failed unpack leaves no target
            partial = unpacked / f".{package}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(["dpkg", "-x", str(deb), str(partial)], check=True)
            partial.rename(target)
    return unpacked


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m mirroropt.data.fontglot_build", description=__doc__.split("\n\n")[0]
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--fonts", type=Path, help="folder DIR/<package>/**/*.ttf|otf|ttc")
    src.add_argument("--debian", action="store_true", help="apt-get download + dpkg -x, then build")
    parser.add_argument(
        "--scratch", type=Path, default=Path("/tmp/fontglot-debs"), help="--debian work folder"
    )
    parser.add_argument("--no-update", action="store_true", help="--debian: skip apt-get update")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("fontglot.npz"))
    parser.add_argument("--jobs", type=int, default=max(1, multiprocessing.cpu_count()))
    parser.add_argument("--quiet", action="store_true")
    defaults = BuildParams()
    for field, value in asdict(defaults).items():
        kind = str if field == "assume_licence" else type(value)
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args(argv)
    params = BuildParams(**{f: getattr(args, f) for f in asdict(defaults)})
    fonts = (
        _fetch_debian(args.scratch, DEBIAN_PACKAGES, not args.no_update)
        if args.debian
        else args.fonts
    )
    manifest = build_fontglot(fonts, args.out, params, jobs=args.jobs, quiet=args.quiet)
    counts = manifest["counts"]
    print(
        f"FontGlot: {counts['classes']} classes x {params.samples} = {counts['samples']} samples, "
        f"{counts['scripts']} scripts, {counts['faces']} font faces of {counts['families']} "
        f"families -> {args.out}\n"
        f"per script: {counts['per_script']}\nsplit classes: {counts['per_split_classes']}\n"
        f"sha256: {manifest['checksum']['value']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
