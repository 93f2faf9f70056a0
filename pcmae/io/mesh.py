"""Triangle meshes -> points: fan triangulation and area-weighted surface sampling."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np


def triangulate_polygons(polygons: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
    """Fan-triangulate polygons given as an (F, k) index array or a list of index arrays -> (T, 3) int64."""
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        k = polygons.shape[1]
        if k < 3:
            return np.zeros((0, 3), np.int64)
        fans = [polygons[:, [0, i, i + 1]] for i in range(1, k - 1)]
        return np.concatenate(fans).astype(np.int64)
    triangles = [np.stack([np.full(len(p) - 2, p[0]), p[1:-1], p[2:]], axis=1) for p in polygons if len(p) >= 3]
    return np.concatenate(triangles).astype(np.int64) if triangles else np.zeros((0, 3), np.int64)


def triangle_areas(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Areas (T,) of triangles (T, 3) over vertices (V, 3)."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, num_samples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``num_samples`` points uniform over the mesh surface (triangle chosen by area, uniform barycentrics).

    vertices: (V, 3); triangles: (T, 3) indices into vertices; returns (num_samples, 3) float64.
    Raises ValueError when an index is out of range or the surface has zero area.
    """
    vertices = np.asarray(vertices, np.float64)
    triangles = np.asarray(triangles, np.int64)
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ValueError(f"face indices span [{triangles.min()}, {triangles.max()}] but there are "
                         f"{len(vertices)} vertices")
    areas = triangle_areas(vertices, triangles) if len(triangles) else np.zeros(0)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"cannot sample a surface of area {total} ({len(triangles)} triangles)")
    cumulative = np.cumsum(areas)
    chosen = np.searchsorted(cumulative, rng.random(num_samples) * cumulative[-1], side="right")
    chosen = np.minimum(chosen, len(triangles) - 1)
    u, v = rng.random(num_samples), rng.random(num_samples)
    flip = u + v > 1.0  # reflect into the triangle
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    a, b, c = (vertices[triangles[chosen, i]] for i in range(3))
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)
