"""Loader for miniImageNet in the Ravi & Larochelle (2017) CSV split layout."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mirroropt.data._dataset import FewShotDataset
from mirroropt.data._images import read_image

__all__ = ["load_miniimagenet"]

_HEADER = ["filename", "label"]


def load_miniimagenet(
    root: str | Path,
    split: Literal["train", "val", "test"],
    *,
    image_size: int = 84,
) -> FewShotDataset:
    """Load one miniImageNet split from ``root/<split>.csv`` and ``root/images/*.jpg``.

    The CSV must have the header ``filename,label``; each row names a file in ``root/images/``
    and its class (a WordNet id such as ``n01532829``). Classes are ordered by first appearance
    in the CSV, samples by CSV row. Images are converted to RGB and resized to
    ``image_size x image_size`` (Lanczos).

    Args:
        root: folder holding ``images/`` and ``train.csv``, ``val.csv``, ``test.csv``.
        split: which CSV to read (64 / 16 / 20 classes in the standard split).
        image_size: side of the returned images (≥ 1; 84 is the usual size).

    Returns:
        A :class:`~mirroropt.data.FewShotDataset` with ``uint8`` images ``[N, 3, S, S]``;
        ``class_names`` are the CSV labels, ``class_groups`` all ``"miniImageNet"``.

    Raises:
        ValueError: if ``split`` or ``image_size`` is invalid, ``images/`` or the CSV is missing,
            the header is not ``filename,label``, a row is malformed, the CSV has no rows, or an
            image is missing or unreadable; the message names the path and what was expected.

    Example:
        >>> ds = load_miniimagenet("~/data/miniImagenet", "test")  # doctest: +SKIP
        >>> ds.num_classes, tuple(ds.images.shape[1:])
        (20, (3, 84, 84))

    References:
        Ravi, Larochelle. Optimization as a Model for Few-Shot Learning. ICLR 2017.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"`split` must be 'train', 'val' or 'test', got {split!r}.")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"`image_size` must be an integer ≥ 1, got {image_size}.")
    root = Path(root).expanduser()
    image_dir = root / "images"
    csv_path = root / f"{split}.csv"
    if not image_dir.is_dir():
        raise ValueError(
            f"miniImageNet folder {str(image_dir)!r} not found: expected 'images/*.jpg' and "
            f"'{split}.csv' under `root` = {str(root)!r}."
        )
    if not csv_path.is_file():
        raise ValueError(
            f"miniImageNet split file {str(csv_path)!r} not found: expected a CSV with header "
            "'filename,label'."
        )
    with csv_path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0]] != _HEADER:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise ValueError(
            f"miniImageNet split file {str(csv_path)!r} must start with the header "
            f"'filename,label', got {got!r}."
        )
    body = [r for r in rows[1:] if r]
    if not body:
        raise ValueError(f"miniImageNet split file {str(csv_path)!r} has no rows after the header.")
    images: list[np.ndarray] = []
    labels: list[int] = []
    classes: dict[str, int] = {}
    for line, row in enumerate(body, start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(
                f"miniImageNet split file {str(csv_path)!r}, row {line}: expected "
                f"'filename,label', got {','.join(row)!r}."
            )
        filename, label = row[0].strip(), row[1].strip()
        path = image_dir / filename
        if not path.is_file():
            raise ValueError(
                f"miniImageNet image {str(path)!r} (listed in {csv_path.name}, row {line}) "
                "not found."
            )
        images.append(read_image(path, size=image_size, mode="RGB"))
        labels.append(classes.setdefault(label, len(classes)))
    return FewShotDataset(
        images=torch.from_numpy(np.stack(images)),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=tuple(classes),
        class_groups=("miniImageNet",) * len(classes),
        name=f"miniimagenet/{split}",
    )
