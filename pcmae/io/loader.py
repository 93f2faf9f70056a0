"""``load_points``: one entry point for every supported point-cloud file, with the common checks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pcmae.io.binary import BIN_LAYOUTS, read_bin, read_npy
from pcmae.io.errors import EmptyPointCloudError, NonFinitePointsError, PointCloudFormatError
from pcmae.io.las import Origin, las_to_float32, read_las, resolve_origin
from pcmae.io.mesh import sample_surface
from pcmae.io.off import read_off
from pcmae.io.pcd import pcd_columns, read_pcd
from pcmae.io.ply import read_ply
from pcmae.io.text import read_text

ARRAY_EXTENSIONS = (".bin", ".npy", ".txt", ".xyz", ".pts")  # every column, unnamed unless layout= names them
NAMED_EXTENSIONS = (".pcd", ".ply", ".las", ".laz")  # x, y, z plus the fields asked for by name
MESH_EXTENSIONS = (".off",)
SUPPORTED_EXTENSIONS = ARRAY_EXTENSIONS + NAMED_EXTENSIONS + MESH_EXTENSIONS


def load_points(path: str | os.PathLike, columns: Optional[int] = None, fields: Optional[Sequence[str]] = None,
                *, layout: Optional[str] = None, drop_nonfinite: bool = False,
                sample_surface: Optional[int] = None, seed: int = 0, origin: Origin = None) -> np.ndarray:
    """Read a point cloud as float32 (N, C) with x, y, z in the first three columns.

    Array files (``.bin .npy .txt .xyz .pts``) return all their columns:
      * ``.bin`` is raw little-endian float32 with ``columns`` per point, or ``layout`` ("kitti" 4,
        "nuscenes" 5, "waymo" 6, "xyz" 3); one of them is required (the file cannot say: a nuScenes sweep
        read as 4 columns is garbage). A size that is not a multiple of ``4 * columns`` bytes raises
        PointCloudFormatError.
      * ``.npy`` / text: the file fixes the columns; ``columns`` or ``layout``, when given, are checked.
      * ``fields`` (e.g. ``["intensity"]``) needs ``layout`` and keeps x, y, z plus those named columns.
    Named files (``.pcd .ply .las .laz``) return x, y, z plus ``fields`` in the order asked
    (PCD ``rgb``/``rgba`` give three columns r, g, b in 0-255; LAS coordinates are scaled, see ``read_las``).
    LAS/LAZ ``origin``: None, ``"header"`` (the header offset) or (x, y, z) is subtracted in float64 before
    the float32 cast; a cast that would move a coordinate by more than 1 mm raises PointCloudFormatError
    (survey coordinates need ``origin="header"``).
    Meshes: ``.off`` (and ``.ply`` with faces) return their vertices, or with ``sample_surface=n`` n points
    drawn uniformly over the surface area (``seed`` fixes them).

    Checks: an empty cloud raises EmptyPointCloudError; NaN/inf in x, y, z raise NonFinitePointsError with
    the count, unless ``drop_nonfinite=True`` drops those points (organised PCD clouds such as a 640 x 480
    stereo cloud mark empty pixels with NaN: read them with drop_nonfinite=True). Other columns are not
    checked. Truncated files and unknown extensions raise PointCloudFormatError naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise PointCloudFormatError(f"{path}: unsupported extension {path.suffix!r}; supported: "
                                    f"{' '.join(SUPPORTED_EXTENSIONS)}")
    if suffix not in ARRAY_EXTENSIONS and (columns is not None or layout is not None):
        raise ValueError(f"{path}: columns/layout apply to raw arrays ({' '.join(ARRAY_EXTENSIONS)}); "
                         f"{suffix} files name their fields: use fields=[...]")
    if origin is not None and suffix not in (".las", ".laz"):
        raise ValueError(f"{path}: origin applies to .las/.laz files (float64 coordinates), not {suffix}")
    if sample_surface is not None and suffix not in (".off", ".ply"):
        raise ValueError(f"{path}: sample_surface applies to meshes (.off, .ply with faces), not {suffix}")
    if not path.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    fields = [fields] if isinstance(fields, str) else list(fields or ())
    if suffix in ARRAY_EXTENSIONS:
        points = _load_array(path, suffix, columns, layout, fields)
    else:
        points = _load_named(path, suffix, fields, sample_surface, seed, origin)
    return check_points(points, path, drop_nonfinite)


def _load_array(path: Path, suffix: str, columns, layout, fields) -> np.ndarray:
    names = None
    if layout is not None:
        if layout not in BIN_LAYOUTS:
            raise ValueError(f"{path}: unknown layout {layout!r}; known: {', '.join(BIN_LAYOUTS)}")
        names = BIN_LAYOUTS[layout]
        if columns is not None and columns != len(names):
            raise ValueError(f"{path}: layout {layout!r} has {len(names)} columns, columns={columns} given")
        columns = len(names)
    if suffix == ".bin":
        if columns is None:
            raise PointCloudFormatError(
                f"{path}: a raw .bin sweep does not say how many float32 columns it has; pass layout= "
                f"(one of {', '.join(BIN_LAYOUTS)}) or columns=")
        points = read_bin(path, columns)
    else:
        points = read_npy(path) if suffix == ".npy" else read_text(path)
        if columns is not None and len(points) and points.shape[1] != columns:
            raise PointCloudFormatError(f"{path}: {points.shape[1]} columns in the file, {columns} expected"
                                        + (f" (layout {layout!r})" if layout else ""))
    if fields:
        if names is None:
            raise ValueError(f"{path}: fields={fields} need named columns: pass layout= "
                             f"(one of {', '.join(BIN_LAYOUTS)})")
        unknown = [f for f in fields if f not in names]
        if unknown:
            raise ValueError(f"{path}: layout {layout!r} has no column(s) {unknown}; columns: {', '.join(names)}")
        points = points[:, [0, 1, 2] + [names.index(f) for f in fields]]
    return points


def _load_named(path: Path, suffix: str, fields, num_samples, seed, origin) -> np.ndarray:
    if suffix == ".pcd":
        _, cloud = read_pcd(path)
        return pcd_columns(cloud, fields, path)
    if suffix in (".las", ".laz"):
        shift = resolve_origin(origin, path)
        return las_to_float32(read_las(path, fields, shift), path, shift)
    if suffix == ".off":
        if fields:
            raise ValueError(f"{path}: .off meshes have no fields besides x, y, z")
        vertices, triangles = read_off(path)
        return _maybe_sample(path, vertices, triangles, num_samples, seed)
    ply = read_ply(path, faces=num_samples is not None)
    if num_samples is not None:
        if fields:
            raise ValueError(f"{path}: fields cannot be combined with sample_surface")
        if ply.faces is None:
            raise PointCloudFormatError(f"{path}: sample_surface needs faces, the PLY file has none")
    vertex_names = ply.vertices.dtype.names
    for name in fields:
        if name not in vertex_names:
            raise PointCloudFormatError(f"{path}: no vertex property {name!r}; properties: {' '.join(vertex_names)}")
    xyz = np.stack([ply.vertices[axis].astype(np.float64) for axis in "xyz"] +
                   [ply.vertices[name].astype(np.float64) for name in fields], axis=1)
    return _maybe_sample(path, xyz, ply.faces, num_samples, seed)


def _maybe_sample(path, vertices, triangles, num_samples, seed) -> np.ndarray:
    if num_samples is None:
        return vertices.astype(np.float32)
    if num_samples < 1:
        raise ValueError(f"{path}: sample_surface must be >= 1, got {num_samples}")
    if not np.isfinite(vertices).all():
        raise NonFinitePointsError(f"{path}: {int((~np.isfinite(vertices).all(1)).sum())} mesh vertices are "
                                   f"NaN/inf; cannot sample the surface")
    try:
        points = sample_surface(vertices, triangles, num_samples, np.random.default_rng(seed))
    except ValueError as err:
        raise PointCloudFormatError(f"{path}: {err}") from None
    return points.astype(np.float32)


def check_points(points: np.ndarray, path, drop_nonfinite: bool = False) -> np.ndarray:
    """Enforce the loader contract on (N, C) points read from ``path``: non-empty, finite x, y, z, float32."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] < 3:
        raise PointCloudFormatError(f"{path}: expected (N, C >= 3) points, got shape {points.shape}")
    if len(points) == 0:
        raise EmptyPointCloudError(f"{path}: the file holds no points")
    finite = np.isfinite(points[:, :3]).all(axis=1)
    bad = int(len(points) - finite.sum())
    if bad:
        if not drop_nonfinite:
            raise NonFinitePointsError(
                f"{path}: {bad} of {len(points)} points have NaN/inf coordinates "
                f"(pass drop_nonfinite=True to drop them, e.g. for organised PCD clouds)")
        points = points[finite]
        if len(points) == 0:
            raise EmptyPointCloudError(f"{path}: all {bad} points have NaN/inf coordinates")
    return points
