"""Raw float32 sweeps (``.bin``: KITTI, nuScenes, Waymo-in-KITTI-format) and numpy ``.npy`` arrays."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pcmae.io.errors import PointCloudFormatError

# Column names of the common raw layouts; ``load_points(..., layout=name)`` uses them.
BIN_LAYOUTS = {
    "xyz": ("x", "y", "z"),
    "kitti": ("x", "y", "z", "intensity"),  # KITTI / SemanticKITTI velodyne, reflectance 0-1
    "nuscenes": ("x", "y", "z", "intensity", "ring"),  # nuScenes / Lyft *.pcd.bin
    "waymo": ("x", "y", "z", "intensity", "elongation", "timestamp"),  # mmdet3d Waymo kitti_format
}


def read_bin(path: str | os.PathLike, columns: int) -> np.ndarray:
    """Raw little-endian float32 file as (N, columns); its size must be a multiple of 4 * columns bytes."""
    path = Path(path)
    if not isinstance(columns, (int, np.integer)) or columns < 3:
        raise ValueError(f"{path}: columns must be an integer >= 3 (x, y, z first), got {columns!r}")
    size = path.stat().st_size
    row_bytes = 4 * int(columns)
    if size % row_bytes:
        raise PointCloudFormatError(
            f"{path}: {size} bytes is not a multiple of {row_bytes} (= {columns} float32 columns); "
            f"wrong column count or a truncated file")
    return np.fromfile(path, dtype="<f4").reshape(-1, int(columns))


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """A 2-D numeric ``.npy`` array (N, C) with C >= 3, as float32."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # truncated data, pickled objects, bad magic
        raise PointCloudFormatError(f"{path}: not a readable .npy array ({err})") from None
    if array.ndim != 2 or array.shape[1] < 3 or not np.issubdtype(array.dtype, np.number):
        raise PointCloudFormatError(
            f"{path}: expected a 2-D numeric array (N, C >= 3), got dtype {array.dtype} shape {array.shape}")
    return array.astype(np.float32, copy=False)
