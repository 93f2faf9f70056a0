"""Text clouds: ``.txt`` / ``.xyz`` / ``.pts``, one point per line, whitespace- or comma-separated.

ModelNet40 ``*.txt`` are comma-separated (x, y, z, nx, ny, nz); open3d ``.pts`` start with a line holding
only the point count, which is checked against the rows that follow. Lines starting with ``#`` are comments.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pcmae.io.errors import PointCloudFormatError


def _data_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_text(path: str | os.PathLike) -> np.ndarray:
    """All columns of a text cloud as float32 (N, C)."""
    path = Path(path)
    lines = _data_lines(path.read_text(errors="replace"))
    declared = None
    first = lines[0].replace(",", " ").split() if lines else []
    if len(first) == 1 and first[0].isascii() and first[0].isdigit():  # .pts point-count line
        declared = int(first[0])
        lines = lines[1:]
    if not lines:
        return np.zeros((0, 3), np.float32)
    delimiter = "," if "," in lines[0] else None
    try:
        array = np.loadtxt(lines, delimiter=delimiter, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise PointCloudFormatError(f"{path}: unreadable text cloud ({err})") from None
    if array.shape[1] < 3:
        raise PointCloudFormatError(f"{path}: {array.shape[1]} column(s) per line, need at least x y z")
    if declared is not None and declared != len(array):
        raise PointCloudFormatError(
            f"{path}: first line declares {declared} points but {len(array)} follow (truncated file?)")
    with np.errstate(over="ignore"):  # beyond float32: inf, reported by check_points
        return array.astype(np.float32)
