"""Object datasets in their published on-disk layouts: ShapeNet-55, ModelNet40, ScanObjectNN.

Items are ``{"points": (num_points, 3) float32, "label": () int64}`` (ModelNet40 with ``use_normals`` adds
``"normals": (num_points, 3)``), the same as the embedded ``SyntheticObjects``.

Subsampling (``sampling``): "first" keeps the first rows, "random" a random subset (a permutation, as
Point-MAE's ``random_sample``), "fps" farthest point sampling from point 0 (``pcmae.ops``), "upstream" Point-MAE's
fine-tuning input pipeline (``upstream_sample``). Randomness: with ``seed=None`` each access draws from torch's
global RNG (seeded per DataLoader worker from the run seed), so a training item gets a fresh subset every epoch;
an integer ``seed`` fixes the subset of each item.

Point-MAE's pipeline (its ``runner_finetune.py``), done per item here, which is the same since every step acts on
one cloud at a time: the source cloud (ModelNet: 8192 points, farthest-point sampled from the 10000 of the file and
normalised) has its point order shuffled in training; a training batch is then farthest-point sampled to
``point_all`` points (1200 for 1024 input points, 2400 for 2048, 4800 for 4096, 8192 for 8192; at most the cloud's
size) and ``num_points`` of those are chosen at random; a test batch is farthest-point sampled to ``num_points``.
Test items also carry ``"vote_points"`` (point_all, 3): the farthest point sample of ``point_all`` points whose
first ``num_points`` rows are ``"points"``, from which the ``vote`` protocol (pcmae/evaluation/classification.py)
draws its random subsets, as Point-MAE's ``validate_vote``.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.transforms import pc_normalize
from pcmae.io.atomic import atomic_write
from pcmae.io.binary import read_npy
from pcmae.io.errors import PointCloudFormatError
from pcmae.io.loader import check_points
from pcmae.io.numpy_pickle import load_numpy_pickle
from pcmae.io.text import read_text
from pcmae.ops import farthest_point_sample
from pcmae.registry import DATASETS

SAMPLING = ("first", "random", "fps", "upstream")
UPSTREAM_POINT_ALL = {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}  # runner_finetune.py: npoints -> point_all


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
    return points[_fps(points, num_points)]  # exact, from point 0


def _fps(points: np.ndarray, num_points: int) -> np.ndarray:
    """Indices (num_points,) of the farthest point sample of ``points: (P, C)`` started at row 0."""
    xyz = torch.from_numpy(np.ascontiguousarray(points[:, :3], np.float32))[None]
    return farthest_point_sample(xyz, num_points)[0].numpy()


def upstream_sample(points: np.ndarray, num_points: int, train: bool, generator: Optional[torch.Generator],
                    source) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Point-MAE's fine-tuning input of one normalised source cloud ``points: (P, C)`` (module docstring).

    Returns (points (num_points, C), vote_points (point_all, C) or None in training). When point_all is the whole
    cloud the farthest point sample only reorders it, so training takes a random subset of the shuffled cloud
    (the same distribution) and testing keeps the stored order (the model's own sampling starts at row 0 either
    way)."""
    if num_points not in UPSTREAM_POINT_ALL:
        raise ValueError(f"sampling='upstream' defines point_all for num_points {sorted(UPSTREAM_POINT_ALL)}, "
                         f"got {num_points}")
    if num_points > len(points):
        raise PointCloudFormatError(f"{source}: {len(points)} points, fewer than num_points={num_points}")
    point_all = min(UPSTREAM_POINT_ALL[num_points], len(points))
    if train:
        points = points[torch.randperm(len(points), generator=generator).numpy()]  # the dataset's shuffle
        pool = points if point_all == len(points) else points[_fps(points, point_all)]
        return pool[torch.randperm(point_all, generator=generator)[:num_points].numpy()], None
    if point_all == len(points):
        vote = points
        return (points if num_points == len(points) else points[_fps(points, num_points)]), vote
    vote = points[_fps(points, point_all)]
    return vote[:num_points], vote  # a farthest point sample's first k picks are the k-point sample


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


def _item(points: np.ndarray, label: int, normalize: bool, vote_points: Optional[np.ndarray] = None) -> dict:
    xyz = pc_normalize(points[:, :3]) if normalize else points[:, :3]
    item = {"points": torch.from_numpy(np.ascontiguousarray(xyz, np.float32)),
            "label": torch.tensor(label, dtype=torch.long)}
    if points.shape[1] >= 6:
        item["normals"] = torch.from_numpy(np.ascontiguousarray(points[:, 3:6], np.float32))
    if vote_points is not None:
        item["vote_points"] = torch.from_numpy(np.ascontiguousarray(vote_points[:, :3], np.float32))
    return item


def upstream_item(points: np.ndarray, label: int, num_points: int, train: bool, generator, source,
                  normalize: bool = True) -> dict:
    """The item of Point-MAE's pipeline: x, y, z normalised on the whole source cloud (as its datasets do),
    then ``upstream_sample``; extra columns (normals) travel with their points."""
    if normalize:
        points = np.concatenate([pc_normalize(points[:, :3]), points[:, 3:]], axis=1)
    points, vote = upstream_sample(points, num_points, train, generator, source)
    return _item(points, label, normalize=False, vote_points=vote)


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

    ``sampling="upstream"``: Point-MAE's fine-tuning pipeline (module docstring; training for split "train",
    testing for "test") on its ``source_points``-point clouds: read from Point-MAE's cache
    ``<root>/modelnet{n}_{split}_{source_points}pts_fps.dat`` when present (a pickle of numpy arrays, read with
    ``pcmae.io.numpy_pickle``: nothing in it is run), else farthest-point sampled from each text file on every
    access (from its first point; Point-MAE starts at a random one when it writes the cache; about 0.2 s a cloud,
    so write the cache once with ``write_modelnet_fps_cache``).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", num_points: int = 1024,
                 use_normals: bool = False, sampling: str = "first", seed: Optional[int] = None,
                 num_classes: int = 40, source_points: int = 8192):
        _check_common("ModelNet40", split, ("train", "test"), num_points, sampling)
        if num_classes not in (10, 40):
            raise ValueError(f"ModelNet40: num_classes must be 40 or 10, got {num_classes}")
        if sampling == "upstream" and not num_points <= source_points:
            raise ValueError(f"ModelNet40: num_points={num_points} exceeds source_points={source_points}")
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
        self.split, self.source_points = split, int(source_points)
        self.cache_path = self.root / f"modelnet{num_classes}_{split}_{self.source_points}pts_fps.dat"
        self.cache = None  # list of (source_points, C) arrays, Point-MAE's .dat
        if sampling == "upstream" and self.cache_path.is_file():
            self.cache = read_modelnet_fps_cache(self.cache_path, self.labels, self.source_points)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> np.ndarray:
        path = self.files[index]
        if not path.is_file():
            raise FileNotFoundError(f"ModelNet shape file not found: {path}")
        points = check_points(read_text(path), path)
        if self.use_normals and points.shape[1] < 6:
            raise PointCloudFormatError(f"{path}: use_normals needs 6 columns, the file has {points.shape[1]}")
        return points

    def source_cloud(self, index: int) -> np.ndarray:
        """The ``source_points``-point cloud (source_points, C) of item ``index`` for ``sampling="upstream"``."""
        if self.cache is not None:
            return self.cache[index]
        points = self._read(index)
        return subsample(points, self.source_points, "fps", None, self.files[index])

    def __getitem__(self, index: int) -> dict:
        if self.sampling == "upstream":
            points = self.source_cloud(index)
            if self.use_normals and points.shape[1] < 6:
                raise PointCloudFormatError(f"{self.cache_path}: use_normals needs 6 columns, cloud {index} has "
                                            f"{points.shape[1]}")
            return upstream_item(points[:, :6] if self.use_normals else points[:, :3], self.labels[index],
                                 self.num_points, self.split == "train", _generator(self.seed, index),
                                 self.files[index])
        points = self._read(index)
        points = subsample(points, self.num_points, self.sampling, _generator(self.seed, index), self.files[index])
        return _item(points[:, :6] if self.use_normals else points[:, :3], self.labels[index], normalize=True)


def read_modelnet_fps_cache(path: Path, labels: list[int], source_points: int) -> list[np.ndarray]:
    """Point-MAE's ``modelnet40_{split}_{n}pts_fps.dat``: a pickle of [list of (n, 6) float32 clouds, list of (1,)
    int32 labels] in the order of the split list; checked against that list's ``labels``."""
    data = load_numpy_pickle(path)
    if not (isinstance(data, (list, tuple)) and len(data) == 2 and all(isinstance(x, list) for x in data)):
        raise PointCloudFormatError(f"{path}: expected [list of clouds, list of labels] (Point-MAE's .dat layout)")
    clouds, cached_labels = data
    if len(clouds) != len(labels) or len(cached_labels) != len(labels):
        raise PointCloudFormatError(f"{path}: {len(clouds)} clouds and {len(cached_labels)} labels, the split list "
                                    f"names {len(labels)} shapes")
    for i, (cloud, label) in enumerate(zip(clouds, cached_labels)):
        if not (isinstance(cloud, np.ndarray) and cloud.ndim == 2 and cloud.shape[0] == source_points
                and cloud.shape[1] >= 3 and np.issubdtype(cloud.dtype, np.floating)):
            raise PointCloudFormatError(f"{path}: cloud {i} is {getattr(cloud, 'shape', type(cloud).__name__)}, "
                                        f"expected ({source_points}, 3 or 6) floats")
        if int(np.asarray(label).reshape(-1)[0]) != labels[i]:
            raise PointCloudFormatError(f"{path}: label of cloud {i} is {np.asarray(label).reshape(-1)[0]}, the split "
                                        f"list says {labels[i]}: the cache belongs to another list")
    return [np.asarray(c, np.float32) for c in clouds]


def write_modelnet_fps_cache(dataset: ModelNet40, path: Optional[str | os.PathLike] = None) -> Path:
    """Write Point-MAE's ``.dat`` cache of ``dataset`` (farthest point samples of ``source_points`` from each file,
    from the first point) to ``path`` (default ``dataset.cache_path``), atomically; returns the path."""
    path = Path(path or dataset.cache_path)
    clouds = [subsample(dataset._read(i), dataset.source_points, "fps", None, dataset.files[i]).astype(np.float32)
              for i in range(len(dataset))]
    labels = [np.array([label], np.int32) for label in dataset.labels]
    return atomic_write(path, lambda f: pickle.dump([clouds, labels], f, protocol=4))


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
    scaled) and all 2048 are kept by default. ``sampling="upstream"`` (the configs' choice) is Point-MAE's
    pipeline: with 2048 of 2048 points, a training item is the cloud in a random point order and a test item
    the cloud as stored.
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
        self.variant, self.classes, self.split = variant, list(SCANOBJECTNN_CLASSES), split
        self.num_points, self.sampling, self.seed, self.normalize = int(num_points), sampling, seed, normalize

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        source = f"{self.path}[{index}]"
        if self.sampling == "upstream":
            return upstream_item(self.points[index, :, :3], int(self.labels[index]), self.num_points,
                                 self.split == "train", _generator(self.seed, index), source, self.normalize)
        points = subsample(self.points[index], self.num_points, self.sampling, _generator(self.seed, index), source)
        return _item(points[:, :3], int(self.labels[index]), self.normalize)
