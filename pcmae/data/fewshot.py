"""Few-shot classification episodes: N-way K-shot folds (Point-BERT / Point-MAE's ModelNet40 protocol).

A fold picks ``way`` classes, ``shot`` training clouds of each and 20 test clouds of each; labels are 0..way-1 in
the fold's class order. ``ModelNetFewShot`` reads Point-MAE's released folds, ``SyntheticFewShot`` draws folds from
the embedded ``SyntheticObjects`` (the default, no download). Items are ``{"points": (num_points, 3) float32,
"label": () int64}`` (+ ``"vote_points"`` for test items of ``sampling="upstream"``, see object_datasets).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.object_datasets import _generator, _item, subsample, upstream_item
from pcmae.data.synthetic_objects import SHAPES, SyntheticObjects
from pcmae.io.errors import PointCloudFormatError
from pcmae.io.numpy_pickle import load_numpy_pickle
from pcmae.registry import DATASETS

FEWSHOT_LAYOUT = ("<root>/{way}way_{shot}shot/{fold}.pkl (Point-MAE's ModelNetFewshot): a pickle of "
                  "{'train': [(points (8192, 6), label, class id), ...], 'test': [...]}")
FEWSHOT_SAMPLING = ("upstream", "first", "random", "fps")


def _check_episode(name: str, way: int, shot: int, fold: int, split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"{name}: unknown split {split!r}; choose from train, test")
    if way < 1 or shot < 1 or fold < 0:
        raise ValueError(f"{name}: need way >= 1, shot >= 1 and fold >= 0, got way={way}, shot={shot}, fold={fold}")


@DATASETS.register
class ModelNetFewShot(Dataset):
    """One split of one fold of Point-MAE's ModelNet40 few-shot folds (``FEWSHOT_LAYOUT``).

    The pickle is read with ``pcmae.io.numpy_pickle`` (only numpy arrays are rebuilt, nothing in it is run).
    Like Point-MAE, x, y, z are normalised into the unit sphere and ``sampling="upstream"`` runs its fine-tuning
    pipeline (training order shuffled, FPS to point_all then a random ``num_points``; FPS to ``num_points`` at test).
    """

    def __init__(self, root: str | os.PathLike, way: int = 5, shot: int = 10, fold: int = 0, split: str = "train",
                 num_points: int = 1024, sampling: str = "upstream", seed: Optional[int] = None,
                 use_normals: bool = False):
        _check_episode("ModelNetFewShot", way, shot, fold, split)
        if sampling not in FEWSHOT_SAMPLING:
            raise ValueError(f"ModelNetFewShot: unknown sampling {sampling!r}; choose from {', '.join(FEWSHOT_SAMPLING)}")
        self.path = Path(root) / f"{way}way_{shot}shot" / f"{fold}.pkl"
        if not self.path.is_file():
            raise FileNotFoundError(f"few-shot fold not found: {self.path} (expected layout: {FEWSHOT_LAYOUT})")
        data = load_numpy_pickle(self.path)
        if not isinstance(data, dict) or not isinstance(data.get(split), list):
            raise PointCloudFormatError(f"{self.path}: expected a dict with 'train' and 'test' lists ({FEWSHOT_LAYOUT})")
        self.clouds, self.labels = [], []
        for i, entry in enumerate(data[split]):
            if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], np.ndarray)
                    and entry[0].ndim == 2 and entry[0].shape[1] >= (6 if use_normals else 3)
                    and np.issubdtype(entry[0].dtype, np.floating)):
                raise PointCloudFormatError(f"{self.path}: {split}[{i}] is not (points (P, 3 or 6) floats, label, "
                                            "class id)")
            label = int(np.asarray(entry[1]).reshape(-1)[0])
            if not 0 <= label < way:
                raise PointCloudFormatError(f"{self.path}: {split}[{i}] has label {label}, outside 0..{way - 1}")
            self.clouds.append(entry[0])
            self.labels.append(label)
        self.way, self.shot, self.fold, self.split = way, shot, fold, split
        self.num_points, self.sampling, self.seed, self.use_normals = int(num_points), sampling, seed, use_normals

    @property
    def num_classes(self) -> int:
        return self.way

    def __len__(self) -> int:
        return len(self.clouds)

    def __getitem__(self, index: int) -> dict:
        points = self.clouds[index][:, :6] if self.use_normals else self.clouds[index][:, :3]
        source = f"{self.path}[{self.split}][{index}]"
        if self.sampling == "upstream":
            return upstream_item(points, self.labels[index], self.num_points, self.split == "train",
                                 _generator(self.seed, index), source)
        points = subsample(points, self.num_points, self.sampling, _generator(self.seed, index), source)
        return _item(points, self.labels[index], normalize=True)


@DATASETS.register
class SyntheticFewShot(Dataset):
    """One split of one N-way K-shot fold drawn from ``SyntheticObjects`` (the embedded default).

    Fold ``fold`` of (seed, way, shot) picks ``way`` of ``classes`` at random, then ``shot`` distinct training
    clouds per class from SyntheticObjects' train split and ``test_per_class`` test clouds per class from its
    test split (Point-MAE's folds hold 20); labels are 0..way-1 in the picked order. Folds are a pure function
    of their arguments, so train and test of a fold agree on the classes.
    """

    POOL = 1000  # clouds per class to draw from

    def __init__(self, way: int = 5, shot: int = 10, fold: int = 0, split: str = "train", num_points: int = 1024,
                 seed: int = 0, test_per_class: int = 20, noise: float = 0.01, classes: Sequence[str] = tuple(SHAPES)):
        _check_episode("SyntheticFewShot", way, shot, fold, split)
        if way > len(classes):
            raise ValueError(f"SyntheticFewShot: way={way} needs {way} classes, there are {len(classes)} "
                             f"({', '.join(classes)})")
        per_class = shot if split == "train" else test_per_class
        if not 1 <= per_class <= self.POOL:
            raise ValueError(f"SyntheticFewShot: need 1 <= shot, test_per_class <= {self.POOL}, got {per_class}")
        rng = np.random.default_rng([seed, way, shot, fold])
        picked = rng.permutation(len(classes))[:way]
        draws = {s: rng.permutation(self.POOL)[:shot if s == "train" else test_per_class] for s in ("train", "test")}
        self.source = SyntheticObjects(num_samples=len(classes) * self.POOL, num_points=num_points,
                                       split=split, seed=seed, noise=noise, classes=classes)
        # SyntheticObjects' item i has class i % len(classes)
        self.items = [(int(c) + len(classes) * int(k), label) for label, c in enumerate(picked) for k in draws[split]]
        order = rng.permutation(len(self.items)) if split == "train" else np.arange(len(self.items))
        self.items = [self.items[i] for i in order]
        self.classes = [classes[int(c)] for c in picked]
        self.way, self.shot, self.fold, self.split = way, shot, fold, split

    @property
    def num_classes(self) -> int:
        return self.way

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        source_index, label = self.items[index]
        item = self.source[source_index]
        return {"points": item["points"], "label": torch.tensor(label, dtype=torch.long)}
