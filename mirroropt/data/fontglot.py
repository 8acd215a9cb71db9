"""Loader for FontGlot, the few-shot character set rendered from redistributable fonts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mirroropt.data._dataset import FewShotDataset

__all__ = ["FontGlotChecksumError", "default_fontglot_path", "load_fontglot"]

_KEYS = ("images", "labels", "class_codepoints", "class_scripts", "script_names")


class FontGlotChecksumError(ValueError):
    """The arrays in a FontGlot ``.npz`` do not hash to the checksum in its manifest."""


def default_fontglot_path() -> Path:
    """Path of the FontGlot ``.npz`` shipped inside the package."""
    return Path(__file__).with_name("fontglot.npz")


def _manifest_path(path: Path) -> Path:
    return path.with_name(path.stem + "_manifest.json")


def load_fontglot(
    split: Literal["train", "val", "test"] | None = None,
    *,
    path: str | Path | None = None,
) -> FewShotDataset:
    """Load FontGlot (or one script-disjoint split of it), verifying its checksum.

    FontGlot has one class per letter of a writing system and 15 samples per class, each the
    letter rendered by a different font face (28x28, ink 255 on 0). The split is by script and
    is read from the manifest: meta-test Armenian, Bengali, Ethiopic, Georgian, Khmer, Thai;
    meta-val Gujarati, Hebrew, Myanmar; meta-train the rest (scripts the licence filter left
    empty are simply absent; see docs/data.md).

    Args:
        split: ``"train"``, ``"val"``, ``"test"``, or ``None`` for all classes.
        path: a FontGlot ``.npz``; its manifest ``<stem>_manifest.json`` must sit beside it.
            Default: the file shipped in the package.

    Returns:
        A :class:`~mirroropt.data.FewShotDataset` with ``uint8`` images ``[N, 1, 28, 28]``,
        labels ``0 … C-1`` (relabelled within the split, in manifest order), ``class_names``
        ``"U+0531 Ա"``-style and ``class_groups`` the script of each class.

    Raises:
        ValueError: if ``split`` is not one of the above.
        FileNotFoundError: if the ``.npz`` or its manifest is missing.
        ValueError: if the ``.npz`` cannot be read or lacks an array.
        FontGlotChecksumError: if the arrays do not match the manifest's SHA-256.

    Example:
        >>> test = load_fontglot("test")
        >>> tuple(test.images.shape[1:]), "Thai" in test.groups, "Latin" in test.groups
        ((1, 28, 28), True, False)
    """
    if split not in (None, "train", "val", "test"):
        raise ValueError(f"`split` must be 'train', 'val', 'test' or None, got {split!r}.")
    path = default_fontglot_path() if path is None else Path(path)
    manifest_path = _manifest_path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FontGlot file {str(path)!r} not found; build it with "
            "`python -m mirroropt.data.fontglot_build --debian --out <path>`."
        )
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"FontGlot manifest {str(manifest_path)!r} not found beside {str(path)!r}."
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    try:
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as data:
            missing = [k for k in _KEYS if k not in data.files]
            arrays = {k: data[k] for k in _KEYS if k in data.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(f"FontGlot file {str(path)!r} cannot be read as an .npz: {err}") from err
    if missing:
        raise ValueError(
            f"FontGlot file {str(path)!r} lacks arrays {missing}; expected {list(_KEYS)}."
        )
    from mirroropt.data.fontglot_build import checksum

    expected = manifest["checksum"]["value"]
    got = checksum(arrays["images"], arrays["labels"])
    if got != expected:
        raise FontGlotChecksumError(
            f"FontGlot checksum mismatch for {str(path)!r}: the manifest says sha256 {expected}, "
            f"the arrays hash to {got}. The file is corrupt or does not belong to "
            f"{manifest_path.name}; rebuild it (see docs/data.md)."
        )
    script_names = [str(s) for s in arrays["script_names"]]
    class_scripts = [script_names[int(k)] for k in arrays["class_scripts"]]
    codepoints = [int(c) for c in arrays["class_codepoints"]]
    if split is None:
        classes = list(range(len(codepoints)))
    else:
        wanted = set(manifest["split"][split])
        classes = [c for c, s in enumerate(class_scripts) if s in wanted]
    full = FewShotDataset(
        images=torch.from_numpy(arrays["images"]).unsqueeze(1),
        labels=torch.from_numpy(arrays["labels"].astype(np.int64)),
        class_names=tuple(f"U+{cp:04X} {chr(cp)}" for cp in codepoints),
        class_groups=tuple(class_scripts),
        name="fontglot",
    )
    if split is None:
        return full
    return full.select_classes(classes, name=f"fontglot/{split}")
