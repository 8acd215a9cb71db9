"""Private helpers shared by the folder loaders: reading and resizing images with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_image"]


def read_image(path: Path, *, size: int, mode: str) -> np.ndarray:
    """Read ``path`` as ``mode`` (``"L"`` or ``"RGB"``), resize to ``size x size`` (Lanczos).

    Returns:
        ``uint8`` ``[C, size, size]``.

    Raises:
        ValueError: if the file cannot be read as an image.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise ImportError(
            "Reading Omniglot/miniImageNet image folders needs Pillow: "
            "pip install 'mirroropt[images]'."
        ) from error
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"Could not read image {str(path)!r}: {err}") from err
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))
