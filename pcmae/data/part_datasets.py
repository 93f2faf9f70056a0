"""Part segmentation datasets: ShapeNetPart in its published layout and the embedded procedural ``SyntheticParts``.

Items are ``{"points": (num_points, 3) float32, "label": () int64 category, "seg": (num_points,) int64 part}``.
Part labels are global (category ``c`` owns the contiguous labels ``category_parts[c]``), as in ShapeNetPart's
``*_normal`` files; each dataset has ``categories`` (names, index = label), ``category_parts`` and ``num_parts``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.synthetic_objects import SPLITS, box, cone, cylinder, revolve, torus
from pcmae.data.transforms import pc_normalize
from pcmae.io.errors import PointCloudFormatError
from pcmae.io.loader import check_points
from pcmae.io.mesh import sample_surface, triangle_areas
from pcmae.io.text import read_text
from pcmae.registry import DATASETS

# ShapeNetPart's categories and their global part labels (Point-MAE's segmentation/main.py ``seg_classes``)
SHAPENETPART_PARTS = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29], "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43], "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}
SHAPENETPART_SPLITS = ("train", "val", "test", "trainval")
SHAPENETPART_LAYOUT = ("<root>/synsetoffset2category.txt ('<Category> <synset>' lines), "
                       "<root>/train_test_split/shuffled_{train,val,test}_file_list.json (entries "
                       "'shape_data/<synset>/<id>'), <root>/<synset>/<id>.txt ('x y z nx ny nz part' rows)")


def sample_with_replacement(count: int, num_points: int, seed: Optional[int], index: int) -> np.ndarray:
    """``num_points`` indices drawn from ``range(count)`` with replacement (Point-MAE's ``np.random.choice``):
    from torch's global RNG when ``seed`` is None (a fresh draw per access), else fixed by ``(seed, index)``."""
    generator = None
    if seed is not None:
        state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
    return torch.randint(count, (num_points,), generator=generator).numpy()


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"ShapeNetPart {what} not found: {path} (expected layout: {SHAPENETPART_LAYOUT})")
    return path


def _split_ids(path: Path) -> List[tuple]:
    """(synset, id) pairs of a ``shuffled_*_file_list.json``."""
    try:
        entries = json.loads(_require(path, "split list").read_text())
    except json.JSONDecodeError as err:
        raise PointCloudFormatError(f"{path}: not a JSON list ({err})") from None
    if not isinstance(entries, list):
        raise PointCloudFormatError(f"{path}: expected a JSON list of 'shape_data/<synset>/<id>' entries")
    pairs = []
    for entry in entries:
        parts = entry.split("/") if isinstance(entry, str) else []
        if len(parts) != 3:
            raise PointCloudFormatError(f"{path}: entry {entry!r} is not 'shape_data/<synset>/<id>'")
        pairs.append((parts[1], parts[2]))
    return pairs


@DATASETS.register
class ShapeNetPart(Dataset):
    """ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``), as Point-MAE's PartNormalDataset.

    label = the category's line in synsetoffset2category.txt; ``seg`` = the file's global part labels. Each access
    normalises the whole shape into the unit sphere, then draws ``num_points`` rows with replacement (seed: see
    ``sample_with_replacement``). ``categories``: keep only these (labels stay those of the full list).
    """

    def __init__(self, root: str | os.PathLike, split: str = "trainval", num_points: int = 2048,
                 seed: Optional[int] = None, categories: Optional[Sequence[str]] = None):
        if split not in SHAPENETPART_SPLITS:
            raise ValueError(f"ShapeNetPart: unknown split {split!r}; choose from {', '.join(SHAPENETPART_SPLITS)}")
        if num_points < 1:
            raise ValueError(f"ShapeNetPart: num_points must be >= 1, got {num_points}")
        self.root = Path(root)
        catfile = _require(self.root / "synsetoffset2category.txt", "category list")
        synsets = {}
        for number, line in enumerate(catfile.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[0] not in SHAPENETPART_PARTS:
                raise PointCloudFormatError(f"{catfile}:{number}: {line.strip()!r} is not '<Category> <synset>' "
                                            f"with a category of {', '.join(SHAPENETPART_PARTS)}")
            synsets[fields[1]] = fields[0]
        self.categories = list(synsets.values())
        self.category_parts = [SHAPENETPART_PARTS[name] for name in self.categories]
        unknown = sorted(set(categories or ()) - set(self.categories))
        if unknown:
            raise ValueError(f"ShapeNetPart: unknown categories {unknown}; {catfile} lists {self.categories}")
        keep = set(categories or self.categories)
        lists = self.root / "train_test_split"
        names = ("train", "val") if split == "trainval" else (split,)
        ids = {pair for name in names for pair in _split_ids(lists / f"shuffled_{name}_file_list.json")}
        self.files, self.labels = [], []
        for label, (synset, category) in enumerate(synsets.items()):  # categories in file order, ids sorted
            if category in keep:
                for shape_id in sorted(i for s, i in ids if s == synset):
                    self.files.append(self.root / synset / f"{shape_id}.txt")
                    self.labels.append(label)
        self.num_points, self.seed = int(num_points), seed

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    @property
    def num_parts(self) -> int:
        return 1 + max(max(parts) for parts in self.category_parts)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> tuple:
        """All rows of shape ``index``: xyz (P, 3) float32 as stored, part labels (P,) int64, checked."""
        path, label = self.files[index], self.labels[index]
        if not path.is_file():
            raise FileNotFoundError(f"ShapeNetPart shape file listed in the split not found: {path}")
        rows = check_points(read_text(path), path)
        if rows.shape[1] != 7:
            raise PointCloudFormatError(f"{path}: {rows.shape[1]} columns per row, expected 7 (x y z nx ny nz part)")
        seg = rows[:, 6].astype(np.int64)
        if not np.array_equal(seg, rows[:, 6]):
            raise PointCloudFormatError(f"{path}: the part labels (7th column) are not all integers")
        parts = self.category_parts[label]
        bad = sorted(set(np.unique(seg).tolist()) - set(parts))
        if bad:
            raise PointCloudFormatError(f"{path}: part labels {bad} are not parts of {self.categories[label]} "
                                        f"({parts})")
        return rows[:, :3], seg

    def __getitem__(self, index: int) -> dict:
        xyz, seg = self.read(index)
        choice = sample_with_replacement(len(xyz), self.num_points, self.seed, index)
        return {"points": torch.from_numpy(np.ascontiguousarray(pc_normalize(xyz)[choice], np.float32)),
                "label": torch.tensor(self.labels[index], dtype=torch.long),
                "seg": torch.from_numpy(seg[choice])}


# --- the embedded default: procedural objects made of labelled primitive parts ----------------------------------

def place(mesh, half_extent, center, keep: Optional[Callable] = None):
    """Scale a unit primitive (vertices in [-1, 1]) by ``half_extent`` (3,) and move it to ``center`` (3,);
    ``keep(centroids) -> bool mask`` drops triangles."""
    vertices, triangles = mesh
    vertices = vertices * np.asarray(half_extent, np.float64) + np.asarray(center, np.float64)
    if keep is not None:
        triangles = triangles[keep(vertices[triangles].mean(axis=1))]
    return vertices, triangles


def merge(*meshes):
    """One mesh of several (their triangles re-indexed)."""
    vertices, triangles, offset = [], [], 0
    for v, t in meshes:
        vertices.append(v)
        triangles.append(t + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(triangles)


def four_legs(rng, half_x, half_y, height, thickness):
    """Four upright boxes under the corners of a (2 half_x, 2 half_y) top, from z = 0 to ``height``."""
    inset = thickness * rng.uniform(1.0, 2.0)
    return merge(*(place(box(rng), (thickness, thickness, height / 2), (sx * (half_x - inset), sy * (half_y - inset),
                                                                         height / 2))
                   for sx in (-1, 1) for sy in (-1, 1)))


def lamp(rng):
    """base, pole, shade."""
    base_r, pole_r, pole_h = rng.uniform(0.35, 0.6), rng.uniform(0.03, 0.07), rng.uniform(0.8, 1.5)
    bottom_r, top_r, shade_h = rng.uniform(0.3, 0.6), rng.uniform(0.08, 0.25), rng.uniform(0.3, 0.6)
    shade = revolve(np.array([[bottom_r, 0.0], [top_r, shade_h]]))
    return [place(cylinder(rng), (base_r, base_r, 0.05), (0, 0, 0.05)),
            place(cylinder(rng), (pole_r, pole_r, pole_h / 2), (0, 0, 0.1 + pole_h / 2)),
            place(shade, (1, 1, 1), (0, 0, 0.1 + pole_h - 0.3 * shade_h))]


def table(rng):
    """top, legs."""
    half_x, half_y, height = rng.uniform(0.6, 1.0), rng.uniform(0.35, 0.8), rng.uniform(0.5, 0.9)
    return [place(box(rng), (half_x, half_y, 0.04), (0, 0, height + 0.04)),
            four_legs(rng, half_x, half_y, height, rng.uniform(0.03, 0.07))]


def mug(rng):
    """body (open cup), handle (the outer half of a torus in the x-z plane)."""
    radius, height = rng.uniform(0.3, 0.5), rng.uniform(0.6, 1.1)
    body = revolve(np.array([[0.0, 0.0], [radius, 0.0], [radius, height]]))
    ring_v, ring_t = torus(rng)  # about z, major radius 1
    ring = (ring_v[:, [0, 2, 1]], ring_t)  # into the x-z plane
    size = height * rng.uniform(0.25, 0.35)
    handle = place(ring, (size, size * 0.4, size), (radius, 0, height / 2), keep=lambda c: c[:, 0] > radius)
    return [body, handle]


def chair(rng):
    """seat, back, legs."""
    half, height, back_h = rng.uniform(0.35, 0.5), rng.uniform(0.4, 0.6), rng.uniform(0.5, 0.9)
    return [place(box(rng), (half, half, 0.04), (0, 0, height + 0.04)),
            place(box(rng), (half, 0.04, back_h / 2), (0, -half + 0.04, height + 0.08 + back_h / 2)),
            four_legs(rng, half, half, height, rng.uniform(0.03, 0.06))]


def rocket(rng):
    """body, nose, fins."""
    radius, length, nose_h = rng.uniform(0.15, 0.3), rng.uniform(1.2, 2.0), rng.uniform(0.3, 0.6)
    fin_w, fin_h = rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.6)
    count = int(rng.integers(3, 5))
    fins = []
    for k in range(count):
        angle = 2 * np.pi * k / count
        v, t = place(box(rng), (fin_w / 2, 0.02, fin_h / 2), (radius + fin_w / 2, 0, fin_h / 2))
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        fins.append((v @ rotation.T, t))
    return [place(cylinder(rng), (radius, radius, length / 2), (0, 0, length / 2)),
            place(cone(rng), (radius, radius, nose_h / 2), (0, 0, length + nose_h / 2)),
            merge(*fins)]


# category -> (its part names, the builder returning one mesh per part in that order)
PART_OBJECTS: Dict[str, tuple] = {
    "lamp": (("base", "pole", "shade"), lamp),
    "table": (("top", "legs"), table),
    "mug": (("body", "handle"), mug),
    "chair": (("seat", "back", "legs"), chair),
    "rocket": (("body", "nose", "fins"), rocket),
}


def make_part_object(category: str, num_points: int, rng: np.random.Generator, noise: float = 0.01,
                     scale_range=(0.8, 1.25)) -> tuple:
    """One upright object: points (num_points, 3) float32 in the unit sphere, local part index (num_points,)
    int64. Points fall on the parts in proportion to their areas; random anisotropic scale, rotation about the
    up axis (z), gaussian noise of std ``noise``; the order of the points is shuffled."""
    meshes = PART_OBJECTS[category][1](rng)
    areas = np.array([triangle_areas(*mesh).sum() for mesh in meshes])
    counts = rng.multinomial(num_points, areas / areas.sum())
    points = np.concatenate([sample_surface(*mesh, n, rng) for mesh, n in zip(meshes, counts)])
    parts = np.repeat(np.arange(len(meshes)), counts)
    angle = rng.uniform(0, 2 * np.pi)
    yaw = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    points = pc_normalize((points * rng.uniform(*scale_range, size=3)) @ yaw.T)
    if noise:
        points = pc_normalize(points + rng.normal(scale=noise, size=points.shape))
    order = rng.permutation(num_points)
    return points[order].astype(np.float32), parts[order].astype(np.int64)


@DATASETS.register
class SyntheticParts(Dataset):
    """Procedural objects with part labels, no download: items as ShapeNetPart's.

    categories: names from PART_OBJECTS (default all 5: lamp = base, pole, shade; table = top, legs; mug = body,
    handle; chair = seat, back, legs; rocket = body, nose, fins), label = position in ``categories``; part labels
    are global and contiguous per category (lamp 0-2, table 3-4, ...). Items are a pure function of
    ``(seed, split, index)``; labels cycle through the categories.
    """

    def __init__(self, num_samples: int = 512, num_points: int = 1024, split: str = "train", seed: int = 0,
                 noise: float = 0.01, categories: Sequence[str] = tuple(PART_OBJECTS)):
        if split not in SPLITS:
            raise ValueError(f"SyntheticParts: unknown split {split!r}; choose from {', '.join(SPLITS)}")
        unknown = [name for name in categories if name not in PART_OBJECTS]
        if unknown or not categories:
            raise ValueError(f"SyntheticParts: unknown or no categories {unknown}; choose from "
                             f"{', '.join(PART_OBJECTS)}")
        if num_samples < 1 or num_points < 1 or noise < 0:
            raise ValueError(f"SyntheticParts: need num_samples >= 1, num_points >= 1 and noise >= 0, got "
                             f"{num_samples}, {num_points}, {noise}")
        self.num_samples, self.num_points, self.split = int(num_samples), int(num_points), split
        self.seed, self.noise, self.categories = int(seed), float(noise), list(categories)
        self.part_names, self.category_parts = [], []
        for name in self.categories:
            names = PART_OBJECTS[name][0]
            self.category_parts.append(list(range(len(self.part_names), len(self.part_names) + len(names))))
            self.part_names += [f"{name}/{part}" for part in names]

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    @property
    def num_parts(self) -> int:
        return len(self.part_names)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"SyntheticParts: index {index} out of range [0, {self.num_samples})")
        label = index % self.num_categories
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        points, parts = make_part_object(self.categories[label], self.num_points, rng, self.noise)
        return {"points": torch.from_numpy(points), "label": torch.tensor(label, dtype=torch.long),
                "seg": torch.from_numpy(parts + self.category_parts[label][0])}
