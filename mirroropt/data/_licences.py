"""Private: decide, per font file, whether its licence allows shipping images rendered from it.

Rule (documented in docs/data.md):

* A licence name is **allowed** when it lets us redistribute images rendered from the font:
  SIL OFL (any version, with or without RFN), Apache, MIT/Expat, ISC, BSD, IPA, Bitstream Vera,
  DejaVu, GUST, ParaType Free Font, Baekmuk, UmeFont, M+, Sazanami, CC0, CC-BY (not -SA),
  LPPL, public domain, and any GPL/AGPL/LGPL *with the font exception*.
* Plain GPL/LGPL/AGPL (no font exception), CC-BY-SA, and anything unknown or empty are **not**.
* ``A or B`` is allowed if either alternative is; ``A and B`` only if both are.
* The licence of a font file is read from its package's Debian copyright file
  (``usr/share/doc/<pkg>/copyright``, machine-readable DEP-5 format): the **last** ``Files:``
  stanza whose pattern matches the file wins, as DEP-5 specifies. ``debian/*`` stanzas (the
  packaging) never match. Patterns are matched on the file name, and on the stem, because a
  stanza often names the source (``Loma*.sfd``) of the installed font (``Loma-Bold.ttf``);
  case-insensitively. Placeholder names (``other``) are resolved by hand in ``RESOLVED``.
* Packages whose copyright file is not machine-readable use the licence in ``REVIEWED`` below,
  read by hand from that file; a package in neither is excluded.

Package-level lists (``shared/data/fontglot/licences.tsv``) are too coarse for this: e.g.
``fonts-bpg-georgian`` lists "Bitstream-Vera-Fonts;GPL-2" but only one of its fonts is under
Bitstream Vera, and the tlwg packages list a plain "GPL-2+" for ``Files: *`` while every font has
the font exception.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["RESOLVED", "REVIEWED", "Dep5", "is_allowed", "parse_dep5"]

# Packages of the FontGlot list whose copyright file is not DEP-5, or whose DEP-5 stanzas carry
# no usable licence name; each entry read by hand from /usr/share/doc/<pkg>/copyright (bookworm).
REVIEWED: dict[str, str] = {
    **{
        f"fonts-gfs-{name}": "OFL-1.1"
        for name in (
            "artemisia baskerville bodoni-classic complutum didot didot-classic gazis "
            "neohellenic olga porson solomos theokritos"
        ).split()
    },
    "fonts-oldstandard": "OFL-1.0",
    "fonts-sil-galatia": "OFL-1.1",
    "fonts-sil-ezra": "MIT",
    "fonts-lg-aboriginal": "GPL-3 with font exception",
    "fonts-mph-2b-damase": "Public Domain",
    "fonts-farsiweb": "GPL-2",
    "fonts-lao": "LGPL-2.1+",
    "fonts-nafees": "GPL-2",
    "fonts-paktype": "GPL-2",
    # DEP-5, but its stanzas name source folders ("1Part/DanielByLDCO/*") that the installed
    # files do not keep; every stanza other than debian/* is OFL-1.1.
    "fonts-ldco": "OFL-1.1",
}

# DEP-5 stanzas whose licence name is a placeholder, resolved by reading the licence text.
RESOLVED: dict[tuple[str, str], str] = {
    # "License: other" for tlwg/Waree*.sfd is the Bitstream Vera licence text, verbatim.
    ("fonts-tlwg-waree-ttf", "other"): "Bitstream-Vera-Fonts",
}

_ALLOWED = re.compile(
    r"ofl|open font licen[cs]e|^sil-1\.1$|apache|^mit$|expat|^isc$|bsd|^ipa|bitstream|dejavu|"
    r"gust|paratype|baekmuk|umefont|m\+font|sazanami|^cc0|^cc-by-\d|lppl|public domain",
    re.IGNORECASE,
)
_FONT_EXCEPTION = re.compile(r"fonts?[- ]exception", re.IGNORECASE)
_COPYLEFT = re.compile(r"gpl|cc-by-sa", re.IGNORECASE)


def is_allowed(licence: str) -> bool:
    """Whether a licence expression (``A or B``, ``A and B``) allows shipping rendered images."""
    licence = licence.strip()
    if not licence:
        return False
    if " or " in licence:
        return any(is_allowed(part) for part in licence.split(" or "))
    if " and " in licence:
        return all(is_allowed(part) for part in licence.split(" and "))
    if _FONT_EXCEPTION.search(licence):
        return True
    if _COPYLEFT.search(licence):
        return False
    return bool(_ALLOWED.search(licence))


@dataclass(frozen=True)
class Dep5:
    """The ``Files:`` stanzas of a DEP-5 copyright file: (patterns, licence name) in order."""

    stanzas: tuple[tuple[tuple[str, ...], str], ...]

    def licence_of(self, path: str) -> str | None:
        """Licence of an installed file (last matching stanza), or None if none matches."""
        found = None
        for patterns, licence in self.stanzas:
            if any(_matches(p, path) for p in patterns):
                found = licence
        return found


_FONT_SUFFIXES = {".ttf", ".otf", ".ttc", ".sfd", ".ufo", ".woff", ".woff2", ".pfb", ".t1"}


def _stem(name: str) -> str:
    p = PurePosixPath(name)
    return p.stem if p.suffix.lower() in _FONT_SUFFIXES else name


def _matches(pattern: str, path: str) -> bool:
    if pattern.startswith("debian/"):
        return False
    parts = pattern.rsplit("/", 1)
    base = parts[-1]
    name = PurePosixPath(path).name
    if len(parts) == 2 and base == "*":
        # "tools/*", "appstream/*": only files under a folder of that name.
        folder = parts[0].rsplit("/", 1)[-1]
        return folder not in ("", "*") and folder in PurePosixPath(path).parts[:-1]
    name, base = name.lower(), base.lower()  # "muktibold.sfd" builds "Muktibold.ttf"
    if fnmatch.fnmatchcase(name, base):
        return True
    return PurePosixPath(base).suffix in _FONT_SUFFIXES and fnmatch.fnmatchcase(
        _stem(name), _stem(base)
    )


def parse_dep5(text: str) -> Dep5 | None:
    """Parse a DEP-5 copyright file; None if it has no ``Files:`` stanza with a licence."""
    stanzas: list[tuple[tuple[str, ...], str]] = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                if key is not None:
                    fields[key] += "\n" + line.strip()
                continue
            if ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            patterns = tuple(fields["files"].split())
            licence = fields["license"].split("\n", 1)[0].strip()
            if patterns and licence:
                stanzas.append((patterns, licence))
    return Dep5(tuple(stanzas)) if stanzas else None
