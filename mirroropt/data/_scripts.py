"""Private: the writing systems of FontGlot, their code-point ranges, and the split."""

from __future__ import annotations

import unicodedata

__all__ = ["META_TEST_SCRIPTS", "META_VAL_SCRIPTS", "SCRIPTS", "script_letters"]

# (script, inclusive code-point ranges). Latin, Greek and Cyrillic are restricted to their basic
# alphabets; accented and historic letters would add near-copies of the base letters.
SCRIPTS: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("Latin", ((0x0041, 0x005A), (0x0061, 0x007A))),
    ("Greek", ((0x0391, 0x03A9), (0x03B1, 0x03C9))),
    ("Cyrillic", ((0x0401, 0x0401), (0x0410, 0x044F), (0x0451, 0x0451))),
    ("Armenian", ((0x0531, 0x0587),)),
    ("Hebrew", ((0x05D0, 0x05EA),)),
    ("Arabic", ((0x0620, 0x06FF),)),
    ("Devanagari", ((0x0900, 0x097F),)),
    ("Bengali", ((0x0980, 0x09FF),)),
    ("Gujarati", ((0x0A80, 0x0AFF),)),
    ("Telugu", ((0x0C00, 0x0C7F),)),
    ("Malayalam", ((0x0D00, 0x0D7F),)),
    ("Thai", ((0x0E00, 0x0E7F),)),
    ("Myanmar", ((0x1000, 0x109F),)),
    ("Georgian", ((0x10A0, 0x10FF),)),
    ("Ethiopic", ((0x1200, 0x137F),)),
    ("Cherokee", ((0x13A0, 0x13FF),)),
    ("Khmer", ((0x1780, 0x17FF),)),
    ("Hiragana", ((0x3041, 0x309F),)),
    ("Katakana", ((0x30A1, 0x30FF),)),
    ("Hangul Jamo", ((0x1100, 0x11FF),)),
)

META_TEST_SCRIPTS: tuple[str, ...] = (
    "Armenian",
    "Bengali",
    "Ethiopic",
    "Georgian",
    "Khmer",
    "Thai",
)
# One abjad, one Indic abugida, one South-East Asian abugida; none shares a block with a
# meta-test script, and together they hold roughly 10% of the classes.
META_VAL_SCRIPTS: tuple[str, ...] = ("Gujarati", "Hebrew", "Myanmar")

_LETTER = {"Lu", "Ll", "Lt", "Lo"}


def script_letters() -> dict[int, str]:
    """Code point → script, for every letter (categories Lu, Ll, Lt, Lo) of ``SCRIPTS``."""
    out: dict[int, str] = {}
    for script, ranges in SCRIPTS:
        for lo, hi in ranges:
            for cp in range(lo, hi + 1):
                if unicodedata.category(chr(cp)) in _LETTER:
                    out[cp] = script
    return out
