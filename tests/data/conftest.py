"""Fixtures shared by the data tests: a small synthetic FewShotDataset."""

import pytest
import torch

from mirroropt.data import FewShotDataset


def make_dataset(num_classes: int = 12, per_class: int = 8, size: int = 12) -> FewShotDataset:
    """Each sample's pixels encode its class (row 0) and its index within the class (row 1)."""
    n = num_classes * per_class
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images[:, 0, 0, 0] = labels.to(torch.uint8) + 1
    images[:, 0, 1, 0] = torch.arange(n).remainder(per_class).to(torch.uint8)
    images[:, 0, 4:8, 3:9] = 200
    groups = tuple("A" if c < num_classes // 2 else "B" for c in range(num_classes))
    return FewShotDataset(
        images=images,
        labels=labels,
        class_names=tuple(f"c{c}" for c in range(num_classes)),
        class_groups=groups,
        name="toy",
    )


@pytest.fixture
def toy() -> FewShotDataset:
    return make_dataset()
