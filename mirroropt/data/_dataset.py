"""The in-memory few-shot data set that every loader returns (private module)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["FewShotDataset"]


@dataclass(frozen=True)
class FewShotDataset:
    """A labelled image set for episodic few-shot learning, held in memory.

    Every loader in :mod:`mirroropt.data` (FontGlot, Omniglot, miniImageNet) returns one, and
    :class:`~mirroropt.data.EpisodeSampler` draws N-way K-shot tasks from one.

    Attributes:
        images: ``uint8`` tensor ``[N, C, H, W]`` (``C = 1`` for character sets, where ink is 255
            and background 0; ``C = 3`` RGB for miniImageNet).
        labels: ``int64`` tensor ``[N]`` with class indices in ``0 … num_classes - 1``.
        class_names: one name per class (``len == num_classes``), e.g. ``"U+0531"`` or
            ``"Latin/character01"``.
        class_groups: one group per class (``len == num_classes``): the script for FontGlot, the
            alphabet for Omniglot, ``"miniImageNet"`` for miniImageNet.
        name: a short description, e.g. ``"fontglot/test"``.

    Raises:
        TypeError: if ``images`` is not ``uint8`` or ``labels`` not ``int64``.
        ValueError: if the shapes or the class metadata do not agree.

    Example:
        >>> import torch
        >>> ds = FewShotDataset(
        ...     images=torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
        ...     labels=torch.tensor([0, 0, 1, 1]),
        ...     class_names=("a", "b"), class_groups=("g", "g"), name="toy")
        >>> ds.num_classes, len(ds)
        (2, 4)
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    class_groups: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8:
            raise TypeError(f"`images` must have dtype torch.uint8, got {self.images.dtype}.")
        if self.labels.dtype != torch.int64:
            raise TypeError(f"`labels` must have dtype torch.int64, got {self.labels.dtype}.")
        if self.images.ndim != 4:
            raise ValueError(
                f"`images` must have shape [N, C, H, W], got {tuple(self.images.shape)}."
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"`labels` must have shape [{self.images.shape[0]}] to match `images`, "
                f"got {tuple(self.labels.shape)}."
            )
        if len(self.class_groups) != len(self.class_names):
            raise ValueError(
                f"`class_groups` must have one entry per class ({len(self.class_names)}), "
                f"got {len(self.class_groups)}."
            )
        if self.labels.numel() and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise ValueError(
                f"`labels` must lie in [0, {len(self.class_names) - 1}], got values in "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def groups(self) -> tuple[str, ...]:
        """The distinct class groups (scripts / alphabets), in order of first appearance."""
        return tuple(dict.fromkeys(self.class_groups))

    def float_images(self) -> torch.Tensor:
        """Images as ``float32`` in ``[0, 1]``, shape ``[N, C, H, W]``."""
        return self.images.to(torch.float32) / 255.0

    def select_classes(self, classes: Sequence[int], *, name: str | None = None) -> FewShotDataset:
        """A new data set holding only ``classes``, relabelled ``0 … len(classes) - 1`` in order.

        Args:
            classes: distinct class indices of this data set.
            name: name of the result (default: this data set's name).

        Raises:
            ValueError: if an index is out of range or repeated.
        """
        idx = [int(c) for c in classes]
        if len(set(idx)) != len(idx):
            raise ValueError(f"`classes` must be distinct, got {idx}.")
        bad = [c for c in idx if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(
                f"`classes` must lie in [0, {self.num_classes - 1}], got out-of-range {bad}."
            )
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[torch.tensor(idx, dtype=torch.int64)] = torch.arange(len(idx))
        new_labels = remap[self.labels]
        keep = new_labels >= 0
        return FewShotDataset(
            images=self.images[keep],
            labels=new_labels[keep],
            class_names=tuple(self.class_names[c] for c in idx),
            class_groups=tuple(self.class_groups[c] for c in idx),
            name=self.name if name is None else name,
        )
