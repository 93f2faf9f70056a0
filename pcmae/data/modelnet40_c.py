"""ModelNet40-C (Sun et al., "Benchmarking Robustness of 3D Point Cloud Recognition Against Common Corruptions",
2022) as released: ``<root>/data_<corruption>_<severity>.npy`` (num_clouds, 1024, 3) float32, one file per
corruption and severity 1-5 (``data_original.npy`` is the clean test set), and ``<root>/label.npy``
(num_clouds, 1) ModelNet40 labels. Corruption names are the keys of ``pcmae.data.corruptions.OBJECT_CORRUPTIONS``.

tools/tta.py streams it in place of ``CorruptedObjects`` when a config's ``data.val`` is this dataset: the
corruption and severity of each table row are set on it (``sets_corruption``), nothing is corrupted on the fly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.corruptions import OBJECT_CORRUPTIONS, SEVERITIES
from pcmae.io.binary import read_numeric_npy
from pcmae.io.errors import PointCloudFormatError
from pcmae.registry import DATASETS, closest


@DATASETS.register
class ModelNet40C(Dataset):
    """Items ``{"points": (num_points, 3) float32, "label": () int64}`` of one corruption file (None: the clean
    ``data_original.npy``); ``num_points`` < the file's points keeps the first ones (the files are FPS-ordered
    1024-point clouds of ModelNet40's test set)."""

    sets_corruption = True  # tools/tta.py: pass corruption / severity here instead of wrapping in CorruptedObjects

    def __init__(self, root: str, corruption: Optional[str] = None, severity: int = 5, num_points: int = 1024):
        if corruption is not None and corruption not in OBJECT_CORRUPTIONS:
            raise ValueError(f"ModelNet40C: unknown corruption {corruption!r}"
                             f"{closest(str(corruption), OBJECT_CORRUPTIONS)}; known: {', '.join(OBJECT_CORRUPTIONS)}")
        if severity not in SEVERITIES:
            raise ValueError(f"ModelNet40C: severity must be 1..5, got {severity!r}")
        root = Path(root)
        name = "data_original.npy" if corruption is None else f"data_{corruption}_{int(severity)}.npy"
        for path in (root / name, root / "label.npy"):
            if not path.is_file():
                raise FileNotFoundError(f"ModelNet40C: {path} not found (expected ModelNet40-C's released layout: "
                                        f"data_<corruption>_<severity>.npy and label.npy in {root})")
        self.points = read_numeric_npy(root / name, mmap=True)
        labels = read_numeric_npy(root / "label.npy").reshape(-1)
        if self.points.ndim != 3 or self.points.shape[2] < 3:
            raise PointCloudFormatError(f"{root / name}: expected (num_clouds, num_points, 3), got "
                                        f"{self.points.shape}")
        if len(labels) != len(self.points):
            raise PointCloudFormatError(f"{root / 'label.npy'}: {len(labels)} labels for {len(self.points)} clouds "
                                        f"in {name}")
        if not np.all((labels >= 0) & (labels < 40) & (labels == np.round(labels))):
            raise PointCloudFormatError(f"{root / 'label.npy'}: labels must be integers 0..39")
        if not 1 <= num_points <= self.points.shape[1]:
            raise ValueError(f"ModelNet40C: num_points must be 1..{self.points.shape[1]}, got {num_points}")
        self.labels, self.num_points, self.path = labels.astype(np.int64), int(num_points), root / name

    @property
    def num_classes(self) -> int:
        return 40

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        points = np.asarray(self.points[index, :self.num_points, :3], dtype=np.float32)  # a NaN cloud: tta skips it
        return {"points": torch.from_numpy(points.copy()), "label": torch.tensor(self.labels[index])}
