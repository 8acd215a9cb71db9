"""Data layer: FontGlot, Omniglot/miniImageNet loaders, sinusoid tasks, episodic sampling."""

from mirroropt.data._dataset import FewShotDataset
from mirroropt.data.episodes import (
    Augmentation,
    EpisodeBatch,
    EpisodeSampler,
    augment_images,
    sample_episodes,
)
from mirroropt.data.miniimagenet import load_miniimagenet
from mirroropt.data.omniglot import load_omniglot
from mirroropt.data.sinusoid import (
    SinusoidBatch,
    SinusoidTaskSampler,
    sample_sinusoid_tasks,
    sinusoid_targets,
)

__all__ = [
    "Augmentation",
    "EpisodeBatch",
    "EpisodeSampler",
    "FewShotDataset",
    "SinusoidBatch",
    "SinusoidTaskSampler",
    "augment_images",
    "load_miniimagenet",
    "load_omniglot",
    "sample_episodes",
    "sample_sinusoid_tasks",
    "sinusoid_targets",
]
