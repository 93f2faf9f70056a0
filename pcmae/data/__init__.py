"""Datasets (registered in ``pcmae.registry.DATASETS``), transforms and the embedded procedural default.

``build_dataset({"type": "SyntheticObjects", "num_samples": 64})`` builds any registered dataset. Every
object dataset yields ``{"points": (num_points, 3) float32, "label": () int64}``: the default collate
stacks them into ``points: (B, N, 3)`` and ``label: (B,)``.
"""
from __future__ import annotations

from typing import Any, Mapping

from pcmae.data.corrupted_objects import CorruptedObjects
from pcmae.data.corruptions import LIDAR_CORRUPTIONS, OBJECT_CORRUPTIONS, corrupt
from pcmae.data.fewshot import ModelNetFewShot, SyntheticFewShot
from pcmae.data.lidar_datasets import LidarSweeps, SimulatedLidarSweeps, collate_sweeps
from pcmae.data.sequences import LidarSequence, collate_sequences
from pcmae.data.object_datasets import ModelNet40, ScanObjectNN, ShapeNet55
from pcmae.data.part_datasets import ShapeNetPart, SyntheticParts
from pcmae.data.modelnet40_c import ModelNet40C  # noqa: F401  (registers the dataset)
from pcmae.data.modelnet_meshes import ModelNetMeshZip, modelnet_zip_samples  # noqa: F401  (registers the dataset)
from pcmae.data.synthetic_objects import SyntheticObjects
from pcmae.data.transforms import RandomRotate, ScaleAndTranslate, pc_normalize
from pcmae.registry import DATASETS


def build_dataset(cfg: Mapping[str, Any], where: str = "dataset"):
    """The dataset named by ``cfg["type"]``, built with the other keys (checked against its signature)."""
    return DATASETS.build(cfg, where=where)


__all__ = ["CorruptedObjects", "LIDAR_CORRUPTIONS", "OBJECT_CORRUPTIONS", "corrupt", "LidarSequence", "LidarSweeps", "collate_sequences", "ModelNet40", "ModelNetFewShot", "SimulatedLidarSweeps", "collate_sweeps", "RandomRotate", "ScaleAndTranslate", "ScanObjectNN", "ShapeNet55", "ShapeNetPart", "SyntheticParts", "SyntheticFewShot", "SyntheticObjects",
           "build_dataset", "pc_normalize"]
