"""The embedded default: procedurally generated object clouds, no download.

Each item is one random shape of a class (random proportions, anisotropic scale and rotation), sampled
uniformly over its surface area, with gaussian noise, then normalised to the unit sphere as Point-MAE's
``pc_norm``. Items are a pure function of ``(seed, split, index)``: splits are independent draws and
item ``i`` is the same in every process, epoch and DataLoader worker. Labels cycle through the classes
(``index % num_classes``), so any window of ``num_classes`` items is balanced.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.transforms import pc_normalize
from pcmae.io.mesh import sample_surface
from pcmae.registry import DATASETS

SPLITS = {"train": 0, "val": 1, "test": 2}
SEGMENTS = 32  # around the axis of the surfaces of revolution


def revolve(profile: np.ndarray, closed: bool = False, segments: int = SEGMENTS):
    """Surface of revolution about z of a (K, 2) profile of (radius, height) -> (vertices, triangles)."""
    angles = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    radius, height = profile[:, :1], profile[:, 1:]
    vertices = np.stack([radius * np.cos(angles), radius * np.sin(angles),
                         np.broadcast_to(height, (len(profile), segments))], axis=-1).reshape(-1, 3)
    rows = len(profile) if closed else len(profile) - 1
    k, s = np.meshgrid(np.arange(rows), np.arange(segments), indexing="ij")
    a = k * segments + s
    b = k * segments + (s + 1) % segments
    c = ((k + 1) % len(profile)) * segments + s
    d = ((k + 1) % len(profile)) * segments + (s + 1) % segments
    triangles = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return vertices, triangles


def _arc(start: float, stop: float, steps: int, radius: float = 1.0, centre=(0.0, 0.0)) -> np.ndarray:
    t = np.linspace(start, stop, steps)
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def sphere(rng):
    return revolve(_arc(-np.pi / 2, np.pi / 2, 17))


def box(rng):
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return corners, np.array([t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))])


def cylinder(rng):
    return revolve(np.array([[0, -1], [1, -1], [1, 1], [0, 1]], np.float64))


def cone(rng):
    return revolve(np.array([[0, -1], [1, -1], [0, 1]], np.float64))


def torus(rng):
    tube = rng.uniform(0.2, 0.45)
    return revolve(_arc(0, 2 * np.pi, 16, tube, (1.0, 0.0))[:-1], closed=True)


def pyramid(rng):
    vertices = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [0, 0, 1]], np.float64)
    return vertices, np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])


def capsule(rng):
    half = rng.uniform(0.5, 1.5)  # half-length of the straight part, radius 1
    bottom = _arc(-np.pi / 2, 0, 9, centre=(0.0, -half))
    top = _arc(0, np.pi / 2, 9, centre=(0.0, half))
    return revolve(np.concatenate([bottom, top]))  # the straight band joins the two hemispheres


def plane_with_hole(rng):
    hole = rng.uniform(0.25, 0.6)  # flat ring: a disc of radius 1 with a round hole
    return revolve(np.array([[hole, 0.0], [1.0, 0.0]]))


SHAPES: Dict[str, Callable] = {"sphere": sphere, "box": box, "cylinder": cylinder, "cone": cone, "torus": torus,
                               "pyramid": pyramid, "capsule": capsule, "plane_with_hole": plane_with_hole}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform over SO(3), from a normalised gaussian quaternion."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def make_object(shape: str, num_points: int, rng: np.random.Generator, noise: float = 0.01,
                scale_range=(0.6, 1.4)) -> np.ndarray:
    """One cloud (num_points, 3) float32 of ``shape``: random shape parameters, anisotropic scale per axis in
    ``scale_range``, random rotation, uniform surface samples, gaussian noise of std ``noise`` (in units of
    the normalised cloud), then centred and scaled into the unit sphere."""
    vertices, triangles = SHAPES[shape](rng)
    vertices = (vertices * rng.uniform(*scale_range, size=3)) @ random_rotation(rng).T
    points = pc_normalize(sample_surface(vertices, triangles, num_points, rng))
    if noise:
        points = pc_normalize(points + rng.normal(scale=noise, size=points.shape))
    return points.astype(np.float32)


@DATASETS.register
class SyntheticObjects(Dataset):
    """Procedural object clouds: ``{"points": (num_points, 3) float32, "label": () int64}``.

    classes: names from SHAPES (default all 8: sphere, box, cylinder, cone, torus, pyramid, capsule,
    plane_with_hole); label = position in ``classes``. split: train | val | test (independent draws).
    """

    def __init__(self, num_samples: int = 1024, num_points: int = 1024, split: str = "train", seed: int = 0,
                 noise: float = 0.01, classes: Sequence[str] = tuple(SHAPES)):
        if split not in SPLITS:
            raise ValueError(f"SyntheticObjects: unknown split {split!r}; choose from {', '.join(SPLITS)}")
        unknown = [name for name in classes if name not in SHAPES]
        if unknown or not classes:
            raise ValueError(f"SyntheticObjects: unknown or no classes {unknown}; choose from {', '.join(SHAPES)}")
        if num_samples < 1 or num_points < 1 or noise < 0:
            raise ValueError(f"SyntheticObjects: need num_samples >= 1, num_points >= 1 and noise >= 0, got "
                             f"{num_samples}, {num_points}, {noise}")
        self.num_samples, self.num_points, self.split = int(num_samples), int(num_points), split
        self.seed, self.noise, self.classes = int(seed), float(noise), list(classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"SyntheticObjects: index {index} out of range [0, {self.num_samples})")
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        points = make_object(self.classes[label], self.num_points, rng, self.noise)
        return {"points": torch.from_numpy(points), "label": torch.tensor(label, dtype=torch.long)}
