import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mirroropt.data import (
    EpisodeSampler,
    FontGlotChecksumError,
    default_fontglot_path,
    load_fontglot,
    nearest_centroid_accuracy,
)
from mirroropt.data.fontglot_build import checksum

MANIFEST = json.loads(
    default_fontglot_path().with_name("fontglot_manifest.json").read_text(encoding="utf-8")
)


def test_full_set_matches_manifest() -> None:
    ds = load_fontglot()
    counts = MANIFEST["counts"]
    assert ds.images.shape == (counts["samples"], 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.num_classes == counts["classes"] == len(MANIFEST["classes"])
    assert len(ds.groups) == counts["scripts"]
    per_script = {s: ds.class_groups.count(s) for s in ds.groups}
    assert per_script == counts["per_script"]
    assert torch.equal(torch.bincount(ds.labels), torch.full((ds.num_classes,), 15))
    assert ds.class_names[0].startswith(MANIFEST["classes"][0]["codepoint"])
    assert len(MANIFEST["sample_fonts"]) == len(ds)
    # Every font behind a sample has a recorded, allowed licence.
    from mirroropt.data._licences import is_allowed

    assert all(is_allowed(f["licence"]) for f in MANIFEST["fonts"])


def test_splits_are_script_disjoint_and_cover_everything() -> None:
    splits = {s: load_fontglot(s) for s in ("train", "val", "test")}
    groups = {s: set(d.groups) for s, d in splits.items()}
    for s, d in splits.items():
        assert groups[s] == set(MANIFEST["split"][s])
        assert d.num_classes == MANIFEST["counts"]["per_split_classes"][s]
    assert groups["train"].isdisjoint(groups["test"]) and groups["val"].isdisjoint(groups["test"])
    assert groups["train"].isdisjoint(groups["val"])
    names = [set(d.class_names) for d in splits.values()]
    assert sum(map(len, names)) == MANIFEST["counts"]["classes"]
    assert "Latin" in groups["train"] and groups["test"] <= {
        "Armenian",
        "Bengali",
        "Ethiopic",
        "Georgian",
        "Khmer",
        "Thai",
    }
    # The sampler on the test split only ever sees test scripts.
    test = splits["test"]
    batch = next(EpisodeSampler(test, n_way=20, k_shot=1, q_query=2, batch_size=8, seed=0))
    assert {test.class_groups[c] for c in batch.classes.flatten().tolist()} <= groups["test"]


def test_checksum_verified_and_corruption_detected(tmp_path: Path) -> None:
    src = default_fontglot_path()
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    assert checksum(arrays["images"], arrays["labels"]) == MANIFEST["checksum"]["value"]
    bad = tmp_path / "fontglot.npz"
    arrays["images"] = arrays["images"].copy()
    arrays["images"][0, 14, 14] ^= 1  # one pixel, one bit
    np.savez_compressed(bad, **arrays)
    shutil.copy(src.with_name("fontglot_manifest.json"), tmp_path / "fontglot_manifest.json")
    with pytest.raises(FontGlotChecksumError, match=r"checksum mismatch for .*fontglot\.npz"):
        load_fontglot(path=bad)
    np.savez_compressed(bad, images=arrays["images"])
    with pytest.raises(ValueError, match=r"lacks arrays \['labels', 'class_codepoints'"):
        load_fontglot(path=bad)
    bad.write_bytes(src.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=r"cannot be read as an \.npz"):
        load_fontglot(path=bad)
    (tmp_path / "fontglot_manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest .*fontglot_manifest\.json' not found"):
        load_fontglot(path=bad)
    with pytest.raises(FileNotFoundError, match=r"FontGlot file .*nothere\.npz' not found"):
        load_fontglot(path=tmp_path / "nothere.npz")
    with pytest.raises(ValueError, match=r"`split` must be 'train', 'val', 'test' or None"):
        load_fontglot("meta-test")  # type: ignore[arg-type]


def test_nearest_centroid_is_far_above_chance() -> None:
    test = load_fontglot("test")
    acc, ci = nearest_centroid_accuracy(test, n_way=5, k_shot=1, q_query=5, episodes=200)
    assert 0.5 < acc < 1.0 and 0 < ci < 0.05
    acc5, _ = nearest_centroid_accuracy(test, n_way=5, k_shot=5, q_query=5, episodes=200)
    assert acc5 > acc  # more shots help
