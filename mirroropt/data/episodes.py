"""Episodic N-way K-shot task sampling, with optional seeded augmentation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mirroropt.data._dataset import FewShotDataset

__all__ = ["Augmentation", "EpisodeBatch", "EpisodeSampler", "augment_images", "sample_episodes"]


@dataclass(frozen=True)
class EpisodeBatch:
    """A batch of ``B`` N-way K-shot episodes with ``Q`` queries per class.

    Attributes:
        x_support: ``float32`` ``[B, N*K, C, H, W]`` in ``[0, 1]``, grouped by class
            (the first ``K`` rows are class 0, the next ``K`` class 1, …).
        y_support: ``int64`` ``[B, N*K]`` episode labels ``0 … N-1``.
        x_query: ``float32`` ``[B, N*Q, C, H, W]`` in ``[0, 1]``, grouped by class.
        y_query: ``int64`` ``[B, N*Q]``.
        classes: ``int64`` ``[B, N]``: the data set class behind episode label ``j`` of task ``b``.
        rotations: ``int64`` ``[B, N]``: multiples of 90° each class was rotated by
            (all zero unless ``class_rotations`` is on).
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    classes: torch.Tensor
    rotations: torch.Tensor


@dataclass(frozen=True)
class Augmentation:
    """Per-image random jitter applied at sampling time (a harder variant of a data set).

    Each image independently gets a random affine map — rotation ``U[-rotation, rotation]``
    degrees, shear ``U[-shear, shear]`` degrees, isotropic scale ``U[scale]``, translation
    ``U[-translate, translate]`` of the image side — applied with ``affine_grid``/``grid_sample``
    (bilinear, zero padding), then with probability ``stroke_p`` a stroke-width change:
    dilation (3x3 max-pool) or erosion (3x3 min-pool), each with probability ``stroke_p / 2``.
    Stroke changes assume bright ink on a dark background, the convention of all character
    loaders here.

    Raises:
        ValueError: for negative magnitudes, an empty or non-positive scale range, or
            ``stroke_p`` outside ``[0, 1]``.

    Example:
        >>> aug = Augmentation(rotation=15.0, stroke_p=0.5)
        >>> aug.shear
        10.0
    """

    rotation: float = 10.0
    shear: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.1
    stroke_p: float = 0.5

    def __post_init__(self) -> None:
        for arg in ("rotation", "shear", "translate"):
            if getattr(self, arg) < 0:
                raise ValueError(f"`{arg}` must be ≥ 0, got {getattr(self, arg)}.")
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"`scale` must be (low, high) with 0 < low ≤ high, got {self.scale}.")
        if not 0.0 <= self.stroke_p <= 1.0:
            raise ValueError(f"`stroke_p` must lie in [0, 1], got {self.stroke_p}.")


def augment_images(
    images: torch.Tensor, augmentation: Augmentation, *, generator: torch.Generator
) -> torch.Tensor:
    """Apply :class:`Augmentation` to a batch of float images (pure function, seeded).

    Args:
        images: ``float`` ``[M, C, H, W]`` in ``[0, 1]``.
        augmentation: the jitter magnitudes.
        generator: supplies all randomness.

    Returns:
        ``[M, C, H, W]``, same dtype, values in ``[0, 1]``.

    Raises:
        ValueError: if ``images`` is not a 4-d floating tensor.

    Example:
        >>> x = torch.zeros(2, 1, 28, 28); x[:, :, 10:18, 12:16] = 1.0
        >>> y = augment_images(x, Augmentation(), generator=torch.Generator().manual_seed(0))
        >>> y.shape == x.shape and bool(((y >= 0) & (y <= 1)).all())
        True
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"`images` must be a floating tensor [M, C, H, W], got dtype {images.dtype} "
            f"and shape {tuple(images.shape)}."
        )
    m = images.shape[0]
    dtype = images.dtype

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(m, generator=generator, dtype=dtype)

    a = augmentation
    theta = uniform(-a.rotation, a.rotation) * (math.pi / 180.0)
    shear = uniform(-a.shear, a.shear) * (math.pi / 180.0)
    scale = uniform(*a.scale)
    tx = uniform(-a.translate, a.translate) * 2.0  # affine_grid coordinates span [-1, 1]
    ty = uniform(-a.translate, a.translate) * 2.0
    cos, sin, tan = torch.cos(theta), torch.sin(theta), torch.tan(shear)
    # Output pixel p samples the input at A p + t, with A = R(θ) · Shear_x · (1 / scale).
    inv_s = 1.0 / scale
    a00 = (cos) * inv_s
    a01 = (cos * tan - sin) * inv_s
    a10 = (sin) * inv_s
    a11 = (sin * tan + cos) * inv_s
    mat = torch.stack(
        [torch.stack([a00, a01, tx], dim=-1), torch.stack([a10, a11, ty], dim=-1)], dim=-2
    )
    grid = F.affine_grid(mat, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    u = torch.rand(m, generator=generator, dtype=dtype)[:, None, None, None]
    dilated = F.max_pool2d(out, kernel_size=3, stride=1, padding=1)
    eroded = -F.max_pool2d(-out, kernel_size=3, stride=1, padding=1)
    half = a.stroke_p / 2.0
    out = torch.where(u < half, dilated, torch.where(u < a.stroke_p, eroded, out))
    return out.clamp(0.0, 1.0)


def _class_index(dataset: FewShotDataset, min_count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    labels = dataset.labels.numpy()
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=dataset.num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_class = [order[s : s + c] for s, c in zip(starts, counts, strict=True)]
    eligible = np.flatnonzero(counts >= min_count)
    return eligible, per_class


def _validate(
    dataset: FewShotDataset, n_way: int, k_shot: int, q_query: int, batch_size: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    if not isinstance(dataset, FewShotDataset):
        raise TypeError(f"`dataset` must be a FewShotDataset, got {type(dataset).__name__}.")
    if int(n_way) != n_way or n_way < 2:
        raise ValueError(f"`n_way` must be an integer ≥ 2, got {n_way}.")
    if int(k_shot) != k_shot or k_shot < 1:
        raise ValueError(f"`k_shot` must be an integer ≥ 1, got {k_shot}.")
    if int(q_query) != q_query or q_query < 1:
        raise ValueError(f"`q_query` must be an integer ≥ 1, got {q_query}.")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer ≥ 1, got {batch_size}.")
    eligible, per_class = _class_index(dataset, k_shot + q_query)
    if len(eligible) < n_way:
        raise ValueError(
            f"`dataset` {dataset.name!r} has {len(eligible)} classes with ≥ k_shot + q_query = "
            f"{k_shot + q_query} samples, but `n_way` = {n_way} needs at least {n_way}."
        )
    return eligible, per_class


def sample_episodes(
    dataset: FewShotDataset,
    *,
    n_way: int,
    k_shot: int,
    q_query: int,
    batch_size: int,
    rng: np.random.Generator,
    augmentation: Augmentation | None = None,
    class_rotations: bool = False,
) -> EpisodeBatch:
    """Draw ``batch_size`` N-way K-shot episodes from ``dataset`` (functional core).

    Per task: ``n_way`` distinct classes are drawn uniformly among the classes with at least
    ``k_shot + q_query`` samples, and ``k_shot + q_query`` distinct samples of each, without
    replacement; episode labels are ``0 … n_way - 1`` in the order the classes were drawn.
    Only classes of ``dataset`` are used, so passing a meta-train split can never yield a
    meta-test class. With ``class_rotations``, each drawn class is rotated by a random multiple
    of 90° (support and query alike), as in common Omniglot practice. With ``augmentation``,
    every image is jittered independently (see :class:`Augmentation`).

    Args:
        dataset: the split to sample from.
        n_way: classes per episode ``N`` (≥ 2).
        k_shot: support samples per class ``K`` (≥ 1).
        q_query: query samples per class ``Q`` (≥ 1).
        batch_size: tasks per batch ``B`` (≥ 1).
        rng: ``numpy.random.Generator`` supplying all randomness (augmentation included).
        augmentation: optional per-image jitter.
        class_rotations: rotate each class by ``k · 90°``, ``k ~ U{0, 1, 2, 3}``.

    Returns:
        An :class:`EpisodeBatch`; images ``float32`` in ``[0, 1]``.

    Raises:
        TypeError: if ``dataset`` is not a :class:`~mirroropt.data.FewShotDataset`.
        ValueError: if a count is out of range or fewer than ``n_way`` classes have
            ``k_shot + q_query`` samples.

    Example:
        >>> import torch
        >>> ds = FewShotDataset(torch.zeros(60, 1, 8, 8, dtype=torch.uint8),
        ...     torch.arange(6).repeat_interleave(10), tuple("abcdef"), ("g",) * 6)
        >>> b = sample_episodes(ds, n_way=5, k_shot=1, q_query=3, batch_size=2,
        ...                     rng=np.random.default_rng(0))
        >>> tuple(b.x_support.shape), tuple(b.y_query.shape)
        ((2, 5, 1, 8, 8), (2, 15))
    """
    eligible, per_class = _validate(dataset, n_way, k_shot, q_query, batch_size)
    per_task = k_shot + q_query
    classes = np.stack([rng.choice(eligible, size=n_way, replace=False) for _ in range(batch_size)])
    idx = np.empty((batch_size, n_way, per_task), dtype=np.int64)
    for b in range(batch_size):
        for j in range(n_way):
            members = per_class[classes[b, j]]
            idx[b, j] = members[rng.choice(len(members), size=per_task, replace=False)]
    rotations = (
        rng.integers(0, 4, size=(batch_size, n_way))
        if class_rotations
        else np.zeros((batch_size, n_way), dtype=np.int64)
    )
    torch_seed = int(rng.integers(0, 2**63 - 1))  # drawn unconditionally: stream is stable

    x = dataset.images[torch.from_numpy(idx.reshape(-1))].to(torch.float32) / 255.0
    c, h, w = x.shape[1:]
    x = x.reshape(batch_size, n_way, per_task, c, h, w)
    if class_rotations:
        if h != w:
            raise ValueError(
                f"`class_rotations` needs square images, got {h}x{w} in {dataset.name!r}."
            )
        rot = torch.from_numpy(rotations)
        for k in (1, 2, 3):
            mask = rot == k
            if bool(mask.any()):
                x[mask] = torch.rot90(x[mask], k=k, dims=(-2, -1))
    if augmentation is not None:
        gen = torch.Generator().manual_seed(torch_seed)
        x = augment_images(x.reshape(-1, c, h, w), augmentation, generator=gen).reshape(x.shape)

    y = torch.arange(n_way)[None, :, None]
    x_support = x[:, :, :k_shot].reshape(batch_size, n_way * k_shot, c, h, w)
    x_query = x[:, :, k_shot:].reshape(batch_size, n_way * q_query, c, h, w)
    y_support = y.expand(batch_size, n_way, k_shot).reshape(batch_size, n_way * k_shot)
    y_query = y.expand(batch_size, n_way, q_query).reshape(batch_size, n_way * q_query)
    return EpisodeBatch(
        x_support=x_support.contiguous(),
        y_support=y_support.contiguous(),
        x_query=x_query.contiguous(),
        y_query=y_query.contiguous(),
        classes=torch.from_numpy(classes.astype(np.int64)),
        rotations=torch.from_numpy(rotations.astype(np.int64)),
    )


class EpisodeSampler:
    """Seeded, iterable source of :class:`EpisodeBatch` (a thin shell on
    :func:`sample_episodes`).

    The sampler owns one ``numpy.random.Generator`` seeded with ``seed`` (its only state); two
    samplers built with the same arguments yield identical batches.

    Args:
        dataset: the split to sample from (e.g. ``load_fontglot("train")``).
        n_way, k_shot, q_query, batch_size, augmentation, class_rotations: as in
            :func:`sample_episodes`.
        seed: seed of the sampler's generator.

    Raises:
        TypeError, ValueError: as :func:`sample_episodes`, at construction.

    Example:
        >>> import torch
        >>> ds = FewShotDataset(torch.zeros(60, 1, 8, 8, dtype=torch.uint8),
        ...     torch.arange(6).repeat_interleave(10), tuple("abcdef"), ("g",) * 6)
        >>> sampler = EpisodeSampler(ds, n_way=5, k_shot=1, q_query=5, batch_size=4, seed=0)
        >>> tuple(next(iter(sampler)).x_query.shape)
        (4, 25, 1, 8, 8)
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        *,
        n_way: int,
        k_shot: int,
        q_query: int,
        batch_size: int = 1,
        seed: int,
        augmentation: Augmentation | None = None,
        class_rotations: bool = False,
    ) -> None:
        _validate(dataset, n_way, k_shot, q_query, batch_size)
        self.dataset = dataset
        self.n_way, self.k_shot, self.q_query, self.batch_size = n_way, k_shot, q_query, batch_size
        self.augmentation = augmentation
        self.class_rotations = class_rotations
        self.rng = np.random.default_rng(seed)

    def sample(self) -> EpisodeBatch:
        """Draw the next batch of episodes."""
        return sample_episodes(
            self.dataset,
            n_way=self.n_way,
            k_shot=self.k_shot,
            q_query=self.q_query,
            batch_size=self.batch_size,
            rng=self.rng,
            augmentation=self.augmentation,
            class_rotations=self.class_rotations,
        )

    def __iter__(self) -> EpisodeSampler:
        return self

    def __next__(self) -> EpisodeBatch:
        return self.sample()
