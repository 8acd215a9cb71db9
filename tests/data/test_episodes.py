import numpy as np
import pytest
import torch

from mirroropt.data import (
    Augmentation,
    EpisodeSampler,
    FewShotDataset,
    augment_images,
    sample_episodes,
)
from tests.data.conftest import make_dataset


def _class_of(x: torch.Tensor) -> torch.Tensor:
    """Recover the data set class encoded in pixel (0, 0) of the toy images."""
    return (x[..., 0, 0, 0] * 255).round().long() - 1


def test_shapes_labels_and_balance(toy: FewShotDataset) -> None:
    b = sample_episodes(
        toy, n_way=5, k_shot=2, q_query=3, batch_size=4, rng=np.random.default_rng(0)
    )
    assert b.x_support.shape == (4, 10, 1, 12, 12) and b.x_query.shape == (4, 15, 1, 12, 12)
    assert b.x_support.dtype == torch.float32
    assert float(b.x_support.min()) >= 0 and float(b.x_support.max()) <= 1
    assert torch.equal(b.y_support[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))
    for y, per in ((b.y_support, 2), (b.y_query, 3)):
        assert y.shape[1] == 5 * per
        assert torch.equal(torch.bincount(y[1], minlength=5), torch.full((5,), per))
    # Episode label j is data set class b.classes[:, j], in support and query alike.
    for x, y in ((b.x_support, b.y_support), (b.x_query, b.y_query)):
        assert torch.equal(_class_of(x), torch.gather(b.classes, 1, y))
    # Classes within a task are distinct; samples within a class are distinct.
    for t in range(4):
        assert len(set(b.classes[t].tolist())) == 5
        idx = (b.x_support[t, :, 0, 1, 0] * 255).round().long()
        idx_q = (b.x_query[t, :, 0, 1, 0] * 255).round().long()
        for j in range(5):
            both = torch.cat([idx[b.y_support[t] == j], idx_q[b.y_query[t] == j]])
            assert len(set(both.tolist())) == 5


def test_never_mixes_splits(toy: FewShotDataset) -> None:
    train = toy.select_classes([c for c in range(12) if toy.class_groups[c] == "A"], name="train")
    test = toy.select_classes([c for c in range(12) if toy.class_groups[c] == "B"], name="test")
    assert set(train.class_names).isdisjoint(test.class_names)
    for split in (train, test):
        seen = set()
        sampler = EpisodeSampler(split, n_way=3, k_shot=1, q_query=2, batch_size=8, seed=1)
        for _ in range(10):
            b = next(sampler)
            original = _class_of(torch.cat([b.x_support, b.x_query], dim=1))
            names = {f"c{int(c)}" for c in original.flatten()}
            assert names <= set(split.class_names)
            seen |= names
        assert seen == set(split.class_names)  # and it does reach every class of the split


def test_deterministic_under_seed(toy: FewShotDataset) -> None:
    aug = Augmentation()
    kw = dict(n_way=4, k_shot=1, q_query=2, batch_size=3, augmentation=aug, class_rotations=True)
    a = EpisodeSampler(toy, seed=5, **kw)
    b = EpisodeSampler(toy, seed=5, **kw)
    c = EpisodeSampler(toy, seed=6, **kw)
    a1, a2, b1, c1 = next(a), next(a), next(b), next(c)
    for field in ("x_support", "y_support", "x_query", "classes", "rotations"):
        assert torch.equal(getattr(a1, field), getattr(b1, field))
    assert not torch.equal(a1.x_support, a2.x_support)
    assert not torch.equal(a1.x_support, c1.x_support)


def test_augmentation_changes_images_keeps_shape_range_and_is_seeded() -> None:
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1.0
    aug = Augmentation(rotation=15, shear=10, scale=(0.8, 1.2), translate=0.1, stroke_p=0.5)
    y1 = augment_images(x, aug, generator=torch.Generator().manual_seed(0))
    y2 = augment_images(x, aug, generator=torch.Generator().manual_seed(0))
    y3 = augment_images(x, aug, generator=torch.Generator().manual_seed(1))
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert float(y1.min()) >= 0 and float(y1.max()) <= 1
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    changed = (y1 - x).abs().flatten(1).sum(1)
    assert bool((changed > 1.0).all())  # every image moved
    # Images are jittered independently, not all by the same transform.
    assert not torch.allclose(y1[0], y1[1])


def test_identity_augmentation_is_identity_and_stroke_ops() -> None:
    x = torch.zeros(4, 1, 10, 10)
    x[:, :, 4:6, 4:6] = 1.0
    ident = Augmentation(rotation=0, shear=0, scale=(1, 1), translate=0, stroke_p=0)
    torch.testing.assert_close(augment_images(x, ident, generator=torch.Generator()), x)
    # stroke_p = 1: each image either dilated (3x3 -> 4x4 block = 16 px) or eroded (2x2 -> 0 px).
    stroke = Augmentation(rotation=0, shear=0, scale=(1, 1), translate=0, stroke_p=1.0)
    y = augment_images(x, stroke, generator=torch.Generator().manual_seed(3))
    mass = [round(m, 3) for m in y.flatten(1).sum(1).tolist()]
    assert set(mass) <= {0.0, 16.0} and len(set(mass)) == 2


def test_class_rotations_rotate_whole_class() -> None:
    ds = make_dataset(num_classes=6, per_class=6, size=12)
    b = sample_episodes(
        ds,
        n_way=6,
        k_shot=2,
        q_query=2,
        batch_size=2,
        rng=np.random.default_rng(2),
        class_rotations=True,
    )
    assert set(b.rotations.flatten().tolist()) > {0}
    base = ds.float_images()[0, 0]
    for t in range(2):
        for j in range(6):
            k = int(b.rotations[t, j])
            img = b.x_support[t, 2 * j, 0]
            # The stroke block [4:8, 3:9] of the toy image must appear rotated by k·90°.
            ref = torch.rot90((base >= 200 / 255).float(), k=k)
            assert torch.equal((img >= 200 / 255).float(), ref)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_way": 1}, r"`n_way` must be an integer ≥ 2, got 1"),
        ({"k_shot": 0}, r"`k_shot` must be an integer ≥ 1, got 0"),
        ({"q_query": 0}, r"`q_query` must be an integer ≥ 1, got 0"),
        ({"batch_size": 0}, r"`batch_size` must be an integer ≥ 1, got 0"),
        ({"n_way": 13}, r"has 12 classes with ≥ k_shot \+ q_query = 2 samples, but `n_way` = 13"),
        ({"k_shot": 5, "q_query": 4}, r"has 0 classes with ≥ k_shot \+ q_query = 9 samples"),
    ],
)
def test_errors(toy: FewShotDataset, kwargs: dict, match: str) -> None:
    args = {"n_way": 2, "k_shot": 1, "q_query": 1, "batch_size": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        sample_episodes(toy, rng=np.random.default_rng(0), **args)
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(toy, seed=0, **args)


def test_type_and_augmentation_errors() -> None:
    with pytest.raises(TypeError, match=r"`dataset` must be a FewShotDataset, got list"):
        EpisodeSampler([], n_way=2, k_shot=1, q_query=1, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`rotation` must be ≥ 0, got -1"):
        Augmentation(rotation=-1)
    with pytest.raises(ValueError, match=r"`scale` must be \(low, high\) with 0 < low ≤ high"):
        Augmentation(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"`stroke_p` must lie in \[0, 1\], got 2"):
        Augmentation(stroke_p=2)
    with pytest.raises(ValueError, match=r"`images` must be a floating tensor"):
        augment_images(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), Augmentation(), generator=torch.Generator()
        )


def test_dataset_validation_and_select() -> None:
    ds = make_dataset(4, 3)
    sub = ds.select_classes([3, 1])
    assert sub.class_names == ("c3", "c1") and len(sub) == 6
    assert torch.equal(sub.labels, torch.tensor([1, 1, 1, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"`classes` must be distinct"):
        ds.select_classes([1, 1])
    with pytest.raises(ValueError, match=r"`classes` must lie in \[0, 3\], got out-of-range \[4\]"):
        ds.select_classes([4])
    with pytest.raises(TypeError, match=r"`images` must have dtype torch.uint8"):
        FewShotDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), ("a",), ("g",))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 0\]"):
        FewShotDataset(
            torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), ("a",), ("g",)
        )
