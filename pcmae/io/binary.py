"""Raw float32 sweeps (``.bin``: KITTI, nuScenes, Waymo-in-KITTI-format) and numpy ``.npy`` arrays."""
from __future__ import annotations

import os
import struct
import tokenize
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


def _npy_header(path: Path) -> tuple:
    """(shape, dtype, data offset) of a .npy file, checked against its size before any array is allocated."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        version = np.lib.format.read_magic(stream)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        length_format = "<H" if version == (1, 0) else "<I"
        length_bytes = stream.read(struct.calcsize(length_format))
        if len(length_bytes) < struct.calcsize(length_format):
            raise ValueError("truncated header")
        header_end = stream.tell() + struct.unpack(length_format, length_bytes)[0]
        if header_end > size:
            raise ValueError(f"header length runs to byte {header_end}, past the end of the file ({size} bytes)")
        stream.seek(stream.tell() - len(length_bytes))
        try:
            shape, fortran, dtype = readers[version](stream)
        except tokenize.TokenError as err:  # numpy tokenizes the header dict
            raise ValueError(f"unparsable header ({err})") from None
        offset = stream.tell()
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects (pickles are not read)")
    if any(n < 0 for n in shape):
        raise ValueError(f"negative shape {shape}")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed != size - offset:
        raise ValueError(f"header shape {shape} of {dtype} needs {needed} bytes of data, the file has "
                         f"{size - offset}")
    return shape, dtype, fortran


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """np.load of a ``.npy`` whose header was checked against the file size first; one error line otherwise."""
    try:
        _npy_header(path)
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError, SyntaxError) as err:  # truncated data, pickles, bad magic or header
        raise PointCloudFormatError(f"{path}: not a readable .npy array ({err})") from None


def read_numeric_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """A numeric ``.npy`` array of any shape, its header checked against the file size first (as ``read_npy``);
    ``mmap``: memory-mapped, read-only (large stacks of clouds)."""
    path = Path(path)
    array = _load_npy(path, mmap)
    if not np.issubdtype(array.dtype, np.number):
        raise PointCloudFormatError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    return array


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """A 2-D numeric ``.npy`` array (N, C) with C >= 3, as float32.

    The header's shape is checked against the file size first, so a corrupt shape cannot drive the allocation.
    """
    path = Path(path)
    array = _load_npy(path)
    if array.ndim != 2 or array.shape[1] < 3 or not np.issubdtype(array.dtype, np.number):
        raise PointCloudFormatError(
            f"{path}: expected a 2-D numeric array (N, C >= 3), got dtype {array.dtype} shape {array.shape}")
    return array.astype(np.float32, copy=False)
