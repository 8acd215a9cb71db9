"""Loader for Omniglot in its usual on-disk layout (Lake et al., 2015)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mirroropt.data._dataset import FewShotDataset
from mirroropt.data._images import read_image

__all__ = ["load_omniglot"]

_SPLIT_DIRS = {"background": "images_background", "evaluation": "images_evaluation"}
_EXTENSIONS = (".png",)


def load_omniglot(
    root: str | Path,
    split: Literal["background", "evaluation"] = "background",
    *,
    image_size: int = 28,
    invert: bool = True,
) -> FewShotDataset:
    """Load one Omniglot split from ``root/images_<split>/<Alphabet>/<character>/*.png``.

    Classes are characters, ordered by (alphabet, character) name; samples by file name. Each
    image is read as greyscale and resized to ``image_size x image_size`` (Lanczos).

    Args:
        root: folder holding ``images_background/`` and/or ``images_evaluation/`` (as unzipped
            from the official ``images_background.zip`` / ``images_evaluation.zip``).
        split: ``"background"`` (30 alphabets, the usual meta-train set) or ``"evaluation"``
            (20 alphabets).
        image_size: side of the returned images (≥ 1).
        invert: if true (default), ink becomes 255 on a 0 background, the convention of FontGlot
            and of :class:`~mirroropt.data.Augmentation`'s stroke changes; Omniglot's files have
            black ink on white.

    Returns:
        A :class:`~mirroropt.data.FewShotDataset` with ``uint8`` images ``[N, 1, S, S]``;
        ``class_names`` are ``"<Alphabet>/<character>"``, ``class_groups`` the alphabets.

    Raises:
        ValueError: if ``split`` or ``image_size`` is invalid, a folder is missing or empty, or an
            image cannot be read; the message names the path and what was expected.

    Example:
        >>> ds = load_omniglot("~/data/omniglot", "background")  # doctest: +SKIP
        >>> ds.num_classes, tuple(ds.images.shape[1:])
        (964, (1, 28, 28))
    """
    if split not in _SPLIT_DIRS:
        raise ValueError(f"`split` must be 'background' or 'evaluation', got {split!r}.")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"`image_size` must be an integer ≥ 1, got {image_size}.")
    root = Path(root).expanduser()
    split_dir = root / _SPLIT_DIRS[split]
    if not split_dir.is_dir():
        raise ValueError(
            f"Omniglot folder {str(split_dir)!r} not found: expected "
            f"'{_SPLIT_DIRS[split]}/<Alphabet>/<character>/*.png' under `root` = {str(root)!r}."
        )
    alphabets = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not alphabets:
        raise ValueError(
            f"Omniglot folder {str(split_dir)!r} has no alphabet folders: expected "
            "'<Alphabet>/<character>/*.png'."
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    groups: list[str] = []
    for alphabet in alphabets:
        characters = sorted(p for p in alphabet.iterdir() if p.is_dir())
        if not characters:
            raise ValueError(
                f"Omniglot alphabet folder {str(alphabet)!r} has no character folders: "
                "expected '<character>/*.png'."
            )
        for character in characters:
            files = sorted(
                p for p in character.iterdir() if p.is_file() and p.suffix.lower() in _EXTENSIONS
            )
            if not files:
                raise ValueError(
                    f"Omniglot character folder {str(character)!r} is empty: expected at least "
                    "one '*.png' image."
                )
            label = len(names)
            names.append(f"{alphabet.name}/{character.name}")
            groups.append(alphabet.name)
            for f in files:
                images.append(read_image(f, size=image_size, mode="L"))
                labels.append(label)
    arr = np.stack(images)
    if invert:
        arr = 255 - arr
    return FewShotDataset(
        images=torch.from_numpy(arr),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=tuple(names),
        class_groups=tuple(groups),
        name=f"omniglot/{split}",
    )
