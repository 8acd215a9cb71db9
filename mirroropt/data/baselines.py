"""Print pixel nearest-centroid accuracies on FontGlot episodes (the table in docs/data.md).

Usage: ``python -m mirroropt.data.baselines [--split test] [--episodes 2000] [--augment]``.
"""

from __future__ import annotations

import argparse

from mirroropt.data._baselines import nearest_centroid_accuracy
from mirroropt.data.episodes import Augmentation
from mirroropt.data.fontglot import load_fontglot

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Print pixel nearest-centroid accuracies on FontGlot meta-test episodes."""
    parser = argparse.ArgumentParser(prog="python -m mirroropt.data.baselines")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="add the default Augmentation")
    parser.add_argument("--script", default=None, help="only the classes of this script")
    args = parser.parse_args(argv)
    ds = load_fontglot(args.split)
    if args.script is not None:
        keep = [c for c, g in enumerate(ds.class_groups) if g == args.script]
        ds = ds.select_classes(keep, name=f"{ds.name}/{args.script}")
    aug = Augmentation() if args.augment else None
    print(f"{ds.name}: {ds.num_classes} classes, {len(ds)} images, augment={args.augment}")
    for n, k in ((5, 1), (5, 5), (20, 1)):
        acc, ci = nearest_centroid_accuracy(
            ds,
            n_way=n,
            k_shot=k,
            q_query=args.queries,
            episodes=args.episodes,
            seed=args.seed,
            augmentation=aug,
        )
        print(f"{n}-way {k}-shot: {100 * acc:.1f}% ± {100 * ci:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
