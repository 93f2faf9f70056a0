"""Object datasets in their published on-disk layouts: ShapeNet-55, ModelNet40, ScanObjectNN.

Items are ``{"points": (num_points, 3) float32, "label": () int64}`` (ModelNet40 with ``use_normals`` adds
``"normals": (num_points, 3)``), the same as the embedded ``SyntheticObjects``.

Subsampling (``sampling``): "first" keeps the first rows, "random" a random subset (a permutation, as
Point-MAE's ``random_sample``), "fps" farthest point sampling from point 0 (``pcmae.ops``). Randomness: with
``seed=None`` each access draws from torch's global RNG (seeded per DataLoader worker from the run seed),
so a training item gets a fresh subset every epoch; an integer ``seed`` fixes the subset of each item.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.transforms import pc_normalize
from pcmae.io.binary import read_npy
from pcmae.io.errors import PointCloudFormatError
from pcmae.io.loader import check_points
from pcmae.io.text import read_text
from pcmae.ops import farthest_point_sample
from pcmae.registry import DATASETS

SAMPLING = ("first", "random", "fps")


def _generator(seed: Optional[int], index: int) -> Optional[torch.Generator]:
    if seed is None:
        return None
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def subsample(points: np.ndarray, num_points: int, method: str, generator: Optional[torch.Generator],
              source) -> np.ndarray:
    """``num_points`` rows of ``points: (P, C)`` chosen by ``method`` (see module docstring)."""
    if num_points > len(points):
        raise PointCloudFormatError(f"{source}: {len(points)} points, fewer than num_points={num_points}")
    if method == "first":
        return points[:num_points]
    if method == "random":
        return points[torch.randperm(len(points), generator=generator)[:num_points].numpy()]
    xyz = torch.from_numpy(np.ascontiguousarray(points[:, :3]))[None]
    return points[farthest_point_sample(xyz, num_points)[0].numpy()]  # exact, from point 0


def _check_common(name: str, split: str, splits, num_points: int, sampling: str) -> None:
    if split not in splits:
        raise ValueError(f"{name}: unknown split {split!r}; choose from {', '.join(splits)}")
    if num_points < 1:
        raise ValueError(f"{name}: num_points must be >= 1, got {num_points}")
    if sampling not in SAMPLING:
        raise ValueError(f"{name}: unknown sampling {sampling!r}; choose from {', '.join(SAMPLING)}")


def _require(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (expected layout: {layout})")
    return path


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _item(points: np.ndarray, label: int, normalize: bool) -> dict:
    xyz = pc_normalize(points[:, :3]) if normalize else points[:, :3]
    item = {"points": torch.from_numpy(np.ascontiguousarray(xyz, np.float32)),
            "label": torch.tensor(label, dtype=torch.long)}
    if points.shape[1] >= 6:
        item["normals"] = torch.from_numpy(np.ascontiguousarray(points[:, 3:6], np.float32))
    return item


SHAPENET_LAYOUT = ("<root>/ShapeNet-55/{train,test}.txt listing <synset>-<model>.npy names, "
                   "<root>/shapenet_pc/<synset>-<model>.npy with 8192 x 3 points each")


@DATASETS.register
class ShapeNet55(Dataset):
    """ShapeNet-55 in the Point-BERT / Point-MAE layout; label = index of the synset (the taxonomy id before
    '-') among the sorted synsets of train.txt and test.txt together, so both splits share the labels.
    ``whole=True`` uses train and test lists together (Point-MAE's ``whole`` option)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", num_points: int = 1024,
                 sampling: str = "random", seed: Optional[int] = None, whole: bool = False):
        _check_common("ShapeNet55", split, ("train", "test"), num_points, sampling)
        self.root = Path(root)
        lists = _require(self.root / "ShapeNet-55", "ShapeNet-55 split folder", SHAPENET_LAYOUT)
        self.pc_dir = _require(self.root / "shapenet_pc", "ShapeNet-55 point folder", SHAPENET_LAYOUT)
        names = _read_lines(_require(lists / f"{split}.txt", f"ShapeNet-55 {split} list", SHAPENET_LAYOUT))
        if whole:
            names += _read_lines(_require(lists / ("test.txt" if split == "train" else "train.txt"),
                                          "ShapeNet-55 split list", SHAPENET_LAYOUT))
        every = set(names)
        for other in ("train.txt", "test.txt"):
            if (lists / other).exists():
                every.update(_read_lines(lists / other))
        self.files = names
        self.classes = sorted({name.split("-", 1)[0] for name in every})
        index = {synset: i for i, synset in enumerate(self.classes)}
        self.labels = [index[name.split("-", 1)[0]] for name in names]
        self.num_points, self.sampling, self.seed = int(num_points), sampling, seed

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.pc_dir / self.files[index]
        if not path.is_file():
            raise FileNotFoundError(f"ShapeNet-55 point file listed in {self.files[index]!r} not found: {path}")
        points = check_points(read_npy(path), path)  # non-empty, finite x, y, z
        points = subsample(points, self.num_points, self.sampling, _generator(self.seed, index), path)
        return _item(points[:, :3], self.labels[index], normalize=True)


MODELNET_LAYOUT = ("<root>/modelnet{n}_shape_names.txt (one class per line), <root>/modelnet{n}_{{train,test}}.txt "
                   "(ids like airplane_0001), <root>/<class>/<id>.txt (comma-separated x,y,z,nx,ny,nz rows)")


@DATASETS.register
class ModelNet40(Dataset):
    """ModelNet40 (or ModelNet10 with ``num_classes=10``) in the ``modelnet40_normal_resampled`` layout.

    Keeps ``num_points`` of the 10000 points by ``sampling`` (default "first", as Point-MAE without its
    FPS cache), then normalises x, y, z into the unit sphere; ``use_normals`` adds ``"normals"``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", num_points: int = 1024,
                 use_normals: bool = False, sampling: str = "first", seed: Optional[int] = None,
                 num_classes: int = 40):
        _check_common("ModelNet40", split, ("train", "test"), num_points, sampling)
        if num_classes not in (10, 40):
            raise ValueError(f"ModelNet40: num_classes must be 40 or 10, got {num_classes}")
        layout = MODELNET_LAYOUT.format(n=num_classes)
        self.root = Path(root)
        _require(self.root, "ModelNet root folder", layout)
        self.classes = _read_lines(_require(self.root / f"modelnet{num_classes}_shape_names.txt",
                                            "ModelNet class list", layout))
        shape_ids = _read_lines(_require(self.root / f"modelnet{num_classes}_{split}.txt",
                                         f"ModelNet {split} list", layout))
        index = {name: i for i, name in enumerate(self.classes)}
        self.files, self.labels = [], []
        for shape_id in shape_ids:
            class_name = shape_id.rsplit("_", 1)[0]  # night_stand_0001 -> night_stand
            if class_name not in index:
                raise ValueError(f"{self.root / f'modelnet{num_classes}_{split}.txt'}: {shape_id!r} belongs to no "
                                 f"class of modelnet{num_classes}_shape_names.txt")
            self.files.append(self.root / class_name / f"{shape_id}.txt")
            self.labels.append(index[class_name])
        self.num_points, self.use_normals, self.sampling, self.seed = int(num_points), use_normals, sampling, seed

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        if not path.is_file():
            raise FileNotFoundError(f"ModelNet shape file not found: {path}")
        points = check_points(read_text(path), path)
        if self.use_normals and points.shape[1] < 6:
            raise PointCloudFormatError(f"{path}: use_normals needs 6 columns, the file has {points.shape[1]}")
        points = subsample(points, self.num_points, self.sampling, _generator(self.seed, index), path)
        return _item(points[:, :6] if self.use_normals else points[:, :3], self.labels[index], normalize=True)


SCANOBJECTNN_VARIANTS = {  # variant -> (folder under h5_files, train file, test file)
    "OBJ_BG": ("main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
    "OBJ_ONLY": ("main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
    "PB_T50_RS": ("main_split", "training_objectdataset_augmentedrot_scale75.h5",
                  "test_objectdataset_augmentedrot_scale75.h5"),
}
SCANOBJECTNN_CLASSES = ("bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
                        "bed", "pillow", "sink", "sofa", "toilet")
SCANOBJECTNN_LAYOUT = ("root = h5_files folder (or the variant folder itself) holding "
                       "main_split/{training,test}_objectdataset.h5 (OBJ_BG), "
                       "main_split/{training,test}_objectdataset_augmentedrot_scale75.h5 (PB_T50_RS), "
                       "main_split_nobg/{training,test}_objectdataset.h5 (OBJ_ONLY); "
                       "h5 datasets 'data' (N, 2048, 3) and 'label' (N,)")


@DATASETS.register
class ScanObjectNN(Dataset):
    """ScanObjectNN h5 files (variants OBJ_BG, OBJ_ONLY, PB_T50_RS); the whole split is read into memory.

    Like Point-MAE, points are used as stored (``normalize=False``; the files are already centred and
    scaled) and all 2048 are kept by default.
    """

    def __init__(self, root: str | os.PathLike, variant: str = "PB_T50_RS", split: str = "train",
                 num_points: int = 2048, sampling: str = "first", seed: Optional[int] = None,
                 normalize: bool = False):
        _check_common("ScanObjectNN", split, ("train", "test"), num_points, sampling)
        if variant not in SCANOBJECTNN_VARIANTS:
            raise ValueError(f"ScanObjectNN: unknown variant {variant!r}; choose from "
                             f"{', '.join(SCANOBJECTNN_VARIANTS)}")
        folder, train_file, test_file = SCANOBJECTNN_VARIANTS[variant]
        root = Path(root)
        base = root if root.name == folder else root / folder
        self.path = _require(base / (train_file if split == "train" else test_file),
                             f"ScanObjectNN {variant} {split} file", SCANOBJECTNN_LAYOUT)
        try:
            import h5py
        except ImportError:
            raise ImportError("ScanObjectNN needs h5py: pip install pcmae[formats]") from None
        try:
            with h5py.File(self.path, "r") as h5:
                self.points = np.asarray(h5["data"], dtype=np.float32)
                self.labels = np.asarray(h5["label"]).reshape(-1).astype(np.int64)
        except (OSError, KeyError) as err:
            raise PointCloudFormatError(f"{self.path}: not a ScanObjectNN h5 file with 'data' and 'label' "
                                        f"({err})") from None
        if self.points.ndim != 3 or self.points.shape[2] < 3 or len(self.points) != len(self.labels):
            raise PointCloudFormatError(f"{self.path}: 'data' {self.points.shape} and 'label' {self.labels.shape} "
                                        f"are not (N, P, 3) and (N,)")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(SCANOBJECTNN_CLASSES)):
            raise PointCloudFormatError(f"{self.path}: labels span [{self.labels.min()}, {self.labels.max()}], "
                                        f"expected 0..{len(SCANOBJECTNN_CLASSES) - 1}")
        self.variant, self.classes = variant, list(SCANOBJECTNN_CLASSES)
        self.num_points, self.sampling, self.seed, self.normalize = int(num_points), sampling, seed, normalize

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        points = subsample(self.points[index], self.num_points, self.sampling, _generator(self.seed, index),
                           f"{self.path}[{index}]")
        return _item(points[:, :3], int(self.labels[index]), self.normalize)
