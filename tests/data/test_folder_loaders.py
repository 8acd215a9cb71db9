from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirroropt.data import EpisodeSampler, load_miniimagenet, load_omniglot


def _glyph(k: int, size: int = 40) -> Image.Image:
    """Black stroke on white (Omniglot's convention); position depends on k."""
    a = np.full((size, size), 255, dtype=np.uint8)
    a[5 + k : 15 + k, 10:14] = 0
    return Image.fromarray(a, mode="L")


def _omniglot(root: Path, split: str = "images_background") -> Path:
    for alphabet, chars in (("Alpha", 2), ("Beta", 3)):
        for c in range(chars):
            d = root / split / alphabet / f"character{c + 1:02d}"
            d.mkdir(parents=True)
            for s in range(4):
                _glyph(c).save(d / f"{c:04d}_{s:02d}.png")
    return root


def test_omniglot_loads_layout(tmp_path: Path) -> None:
    ds = load_omniglot(_omniglot(tmp_path), "background", image_size=20)
    assert ds.images.shape == (20, 1, 20, 20) and ds.images.dtype == torch.uint8
    assert ds.class_names == (
        "Alpha/character01",
        "Alpha/character02",
        "Beta/character01",
        "Beta/character02",
        "Beta/character03",
    )
    assert ds.groups == ("Alpha", "Beta") and ds.class_groups[2] == "Beta"
    assert torch.equal(ds.labels, torch.arange(5).repeat_interleave(4))
    # Inverted: background 0, ink 255 (the stroke sits at rows 5..15 of 40 -> 2..7 of 20).
    assert int(ds.images[0, 0, 0, 0]) == 0 and int(ds.images[0, 0, 4, 5]) > 200
    raw = load_omniglot(tmp_path, "background", image_size=20, invert=False)
    assert torch.equal(raw.images, 255 - ds.images)
    batch = next(EpisodeSampler(ds, n_way=3, k_shot=1, q_query=2, seed=0))
    assert batch.x_support.shape == (1, 3, 1, 20, 20)


def test_omniglot_malformed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"images_evaluation.*not found: expected"):
        load_omniglot(_omniglot(tmp_path / "a"), "evaluation")
    (tmp_path / "b" / "images_background").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"has no alphabet folders"):
        load_omniglot(tmp_path / "b")
    (tmp_path / "c" / "images_background" / "Gamma").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"Gamma' has no character folders"):
        load_omniglot(tmp_path / "c")
    empty = tmp_path / "d" / "images_background" / "Gamma" / "character01"
    empty.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"character01' is empty: expected at least one"):
        load_omniglot(tmp_path / "d")
    (empty / "0001_01.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"Could not read image .*0001_01\.png"):
        load_omniglot(tmp_path / "d")
    with pytest.raises(ValueError, match=r"`split` must be 'background' or 'evaluation'"):
        load_omniglot(tmp_path / "a", "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`image_size` must be an integer ≥ 1, got 0"):
        load_omniglot(tmp_path / "a", image_size=0)


def _mini(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = ["filename,label"]
    for c, wnid in enumerate(("n01532829", "n01558993", "n01704323")):
        for s in range(3):
            name = f"{wnid}{s:08d}.jpg"
            Image.new("RGB", (50, 40), (40 * c, 100, 200)).save(root / "images" / name)
            rows.append(f"{name},{wnid}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def test_miniimagenet_loads_csv_layout(tmp_path: Path) -> None:
    ds = load_miniimagenet(_mini(tmp_path), "train", image_size=16)
    assert ds.images.shape == (9, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.class_names == ("n01532829", "n01558993", "n01704323")
    assert torch.equal(ds.labels, torch.arange(3).repeat_interleave(3))
    # RGB channels kept in order: class 2's red is 80, green 100, blue 200 (JPEG: ±3).
    assert abs(int(ds.images[6, 0, 8, 8]) - 80) <= 3 and abs(int(ds.images[6, 2, 8, 8]) - 200) <= 3


def test_miniimagenet_malformed(tmp_path: Path) -> None:
    root = _mini(tmp_path / "m")
    with pytest.raises(ValueError, match=r"val\.csv' not found: expected a CSV with header"):
        load_miniimagenet(root, "val")
    (root / "val.csv").write_text("file,class\nx.jpg,n0\n")
    with pytest.raises(
        ValueError, match=r"must start with the header 'filename,label', got 'file,"
    ):
        load_miniimagenet(root, "val")
    (root / "val.csv").write_text("filename,label\n")
    with pytest.raises(ValueError, match=r"has no rows after the header"):
        load_miniimagenet(root, "val")
    (root / "val.csv").write_text("filename,label\nmissing.jpg,n0\n")
    with pytest.raises(ValueError, match=r"missing\.jpg' \(listed in val\.csv, row 2\) not found"):
        load_miniimagenet(root, "val")
    (root / "val.csv").write_text("filename,label\nonlyone\n")
    with pytest.raises(ValueError, match=r"row 2: expected 'filename,label', got 'onlyone'"):
        load_miniimagenet(root, "val")
    (root / "images" / "bad.jpg").write_bytes(b"\x00garbage")
    (root / "val.csv").write_text("filename,label\nbad.jpg,n0\n")
    with pytest.raises(ValueError, match=r"Could not read image .*bad\.jpg"):
        load_miniimagenet(root, "val")
    (tmp_path / "noimg").mkdir()
    with pytest.raises(ValueError, match=r"images' not found: expected 'images/\*\.jpg'"):
        load_miniimagenet(tmp_path / "noimg", "train")
    with pytest.raises(ValueError, match=r"`split` must be 'train', 'val' or 'test'"):
        load_miniimagenet(root, "background")  # type: ignore[arg-type]
