"""Private: sanity baselines on episodes (pixel nearest-centroid), re-exported by the package."""

from __future__ import annotations

import math

import numpy as np
import torch

from mirroropt.data._dataset import FewShotDataset
from mirroropt.data.episodes import Augmentation, sample_episodes

__all__ = ["nearest_centroid_accuracy"]


def nearest_centroid_accuracy(
    dataset: FewShotDataset,
    *,
    n_way: int,
    k_shot: int,
    q_query: int,
    episodes: int = 1000,
    seed: int = 0,
    batch_size: int = 100,
    augmentation: Augmentation | None = None,
) -> tuple[float, float]:
    """Accuracy of a nearest-class-mean classifier on raw pixels (Euclidean), over episodes.

    Args:
        dataset: the split to sample episodes from.
        n_way, k_shot, q_query: the episode shape.
        episodes: number of episodes (a multiple of ``batch_size`` is used, rounded up).
        seed: seed of the episode sampler.
        batch_size: episodes drawn at once.
        augmentation: optional per-image jitter (the harder variant).

    Returns:
        ``(mean accuracy, 95% confidence half-width)``, both in ``[0, 1]``.

    Example:
        >>> from mirroropt.data import load_fontglot
        >>> acc, ci = nearest_centroid_accuracy(load_fontglot("test"), n_way=5, k_shot=1,
        ...                                     q_query=5, episodes=20)
        >>> 0.2 < acc <= 1.0
        True
    """
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(math.ceil(episodes / batch_size)):
        b = sample_episodes(
            dataset,
            n_way=n_way,
            k_shot=k_shot,
            q_query=q_query,
            batch_size=batch_size,
            rng=rng,
            augmentation=augmentation,
        )
        xs = b.x_support.flatten(2)  # [B, N*K, D]
        xq = b.x_query.flatten(2)
        centroids = xs.reshape(xs.shape[0], n_way, k_shot, -1).mean(2)  # [B, N, D]
        pred = torch.cdist(xq, centroids).argmin(-1)
        accs.append((pred == b.y_query).float().mean(1))
    acc = torch.cat(accs).double()
    return float(acc.mean()), float(1.96 * acc.std() / math.sqrt(len(acc)))
