"""ASPRS ``.las`` / ``.laz`` through laspy (optional: ``pip install pcmae[formats]``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pcmae.io.errors import PointCloudFormatError

INSTALL_HINT = "pip install pcmae[formats]  (laspy with the lazrs LAZ backend)"


def _laspy():
    try:
        import laspy
    except ImportError:
        raise ImportError(f"reading .las/.laz files needs laspy, which is not installed: {INSTALL_HINT}") from None
    return laspy


def read_las(path: str | os.PathLike, fields: Sequence[str] = ()) -> np.ndarray:
    """Scaled x, y, z (offset and scale applied) then the requested dimensions, as float64 (N, 3 + k).

    float64 keeps survey coordinates exact (x ~ 6e5 m has 6 cm steps in float32); ``load_points`` casts.
    Field names are laspy dimension names: intensity, classification, return_number, gps_time, red, ...
    """
    laspy = _laspy()
    path = Path(path)
    try:
        las = laspy.read(path)
    except laspy.errors.LaspyException as err:
        message = str(err)
        if "LazBackend" in message or "backend" in message.lower():
            raise ImportError(f"{path}: no LAZ decompression backend for laspy ({message}): {INSTALL_HINT}") \
                from None
        raise PointCloudFormatError(f"{path}: unreadable LAS/LAZ file ({message})") from None
    except (ValueError, OSError, EOFError) as err:
        raise PointCloudFormatError(f"{path}: unreadable LAS/LAZ file ({err})") from None
    available = list(las.point_format.dimension_names)
    columns = [np.asarray(las.x, np.float64), np.asarray(las.y, np.float64), np.asarray(las.z, np.float64)]
    for name in fields:
        if name not in available:
            raise PointCloudFormatError(f"{path}: no LAS dimension {name!r}; available: {', '.join(available)}")
        columns.append(np.asarray(las[name], np.float64))
    return np.stack(columns, axis=1)
