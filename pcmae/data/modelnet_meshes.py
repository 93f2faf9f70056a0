"""ModelNet's raw meshes (``ModelNet40.zip`` / ``ModelNet10.zip``: ``ModelNet40/<class>/<split>/<id>.off``),
read from the zip in place (nothing is extracted) and turned into ModelNet40-style clouds: ``num_points`` points
uniform over the mesh surface (triangle by area, uniform barycentrics), normalised to the unit sphere like
``modelnet40_normal_resampled`` (centroid, largest norm). Labels index ``MODELNET40_CLASSES`` (ModelNet40's
``modelnet40_shape_names.txt`` order, also for ModelNet10 meshes), so a ModelNet40 classifier can score them.

``modelnet_zip_samples(path)`` -> [(points (N, 3) float32, class name)]; ``ModelNetMeshZip`` is the registered
dataset (items {"points", "label"}) for a small real test stream.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.transforms import pc_normalize
from pcmae.io.errors import PointCloudFormatError
from pcmae.io.mesh import sample_surface
from pcmae.io.off import parse_off
from pcmae.registry import DATASETS

MODELNET40_CLASSES = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel",
    "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool",
    "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox")
SPLITS = ("train", "test")


def list_meshes(path: str | os.PathLike, split: Optional[str] = None) -> list[tuple[str, str, str]]:
    """(member name, class name, split) of every ``.off`` in the zip, sorted; ``split`` keeps one split only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ModelNet zip not found: {path}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"ModelNetMeshZip: unknown split {split!r}; choose from {', '.join(SPLITS)} or null")
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(".off"))
    except zipfile.BadZipFile as err:
        raise PointCloudFormatError(f"{path}: not a readable zip ({err})") from None
    meshes = []
    for name in names:
        parts = PurePosixPath(name).parts  # ModelNet40/<class>/<split>/<id>.off
        if len(parts) < 3 or parts[-2] not in SPLITS:
            raise PointCloudFormatError(f"{path}: member {name!r} is not <class>/<train|test>/<id>.off")
        if split is None or parts[-2] == split:
            meshes.append((name, parts[-3], parts[-2]))
    return meshes


def read_mesh(path: str | os.PathLike, member: str) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, triangles (T, 3) int64) of one ``.off`` member of the zip."""
    with zipfile.ZipFile(path) as archive:
        text = archive.read(member).decode("ascii", errors="replace")
    return parse_off(text, f"{path}:{member}")


def mesh_cloud(vertices: np.ndarray, triangles: np.ndarray, num_points: int, rng: np.random.Generator,
               source: str) -> np.ndarray:
    """``num_points`` surface samples, normalised into the unit sphere -> (num_points, 3) float32."""
    try:
        points = sample_surface(vertices, triangles, num_points, rng)
    except ValueError as err:  # out-of-range face index, zero area
        raise PointCloudFormatError(f"{source}: {err}") from None
    return pc_normalize(points).astype(np.float32)


def modelnet_zip_samples(path: str | os.PathLike, num_points: int = 1024, seed: int = 0,
                         split: Optional[str] = None) -> list[tuple[np.ndarray, str]]:
    """[(points (num_points, 3) float32, class name)] for every mesh of the zip (see ``ModelNetMeshZip``)."""
    dataset = ModelNetMeshZip(path, split=split, num_points=num_points, seed=seed)
    return [(dataset[i]["points"].numpy(), dataset.class_names[i]) for i in range(len(dataset))]


@DATASETS.register
class ModelNetMeshZip(Dataset):
    """The ``.off`` meshes of one or more ModelNet zips as clouds: item i = {"points": (num_points, 3) float32,
    "label": () int64 index into ``MODELNET40_CLASSES``}. Sampling is seeded by (seed, i): the same cloud in every
    epoch and worker. ``split``: "train", "test" or None (both)."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], split: Optional[str] = None,
                 num_points: int = 1024, seed: int = 0):
        if num_points < 1:
            raise ValueError(f"ModelNetMeshZip: num_points must be >= 1, got {num_points}")
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.items = [(Path(p), *mesh) for p in paths for mesh in list_meshes(p, split)]  # (zip, member, class, split)
        unknown = sorted({f"{zip_path}:{member}" for zip_path, member, name, _ in self.items
                          if name not in MODELNET40_CLASSES})
        if unknown:
            raise ValueError(f"ModelNetMeshZip: meshes of no ModelNet40 class: {unknown[:3]}")
        if not self.items:
            raise ValueError(f"ModelNetMeshZip: no .off meshes{f' of split {split!r}' if split else ''} in {paths}")
        self.num_points, self.seed = int(num_points), int(seed)

    @property
    def class_names(self) -> list[str]:
        return [name for _, _, name, _ in self.items]

    @property
    def members(self) -> list[str]:
        return [f"{zip_path.name}:{member}" for zip_path, member, _, _ in self.items]

    @property
    def num_classes(self) -> int:
        return len(MODELNET40_CLASSES)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        zip_path, member, name, _ = self.items[index]
        vertices, triangles = read_mesh(zip_path, member)
        rng = np.random.default_rng([self.seed, index])
        points = mesh_cloud(vertices, triangles, self.num_points, rng, f"{zip_path}:{member}")
        return {"points": torch.from_numpy(points), "label": torch.tensor(MODELNET40_CLASSES.index(name))}
