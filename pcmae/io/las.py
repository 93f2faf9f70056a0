"""ASPRS ``.las`` / ``.laz`` through laspy (optional: ``pip install pcmae[formats]``).

The fixed header is parsed and checked here first (version, VLR count, point count against the file size),
so no header number drives an allocation or a loop before it is known to fit the file. Points are then read
in chunks, so even a compressed file that claims more points than it holds costs at most one chunk.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from pcmae.io.errors import PointCloudFormatError

INSTALL_HINT = "pip install pcmae[formats]  (laspy with the lazrs LAZ backend)"
LOSSY_CAST_TOLERANCE = 1e-3  # metres: largest float32 rounding of a coordinate accepted without an origin
CHUNK_BYTES = 4 * 2**20  # point records decoded per step (65536 points of 64 bytes)

Origin = Union[None, str, Sequence[float]]

_VLR_HEADER_BYTES = 54
_MIN_HEADER_BYTES = {0: 227, 1: 227, 2: 227, 3: 235, 4: 375}  # by minor version
_MIN_RECORD_BYTES = (20, 28, 26, 34, 57, 63, 30, 36, 38, 59, 67)  # by point format 0..10


def _laspy():
    try:
        import laspy
    except ImportError:
        raise ImportError(f"reading .las/.laz files needs laspy, which is not installed: {INSTALL_HINT}") from None
    return laspy


@dataclass
class LasHeaderInfo:
    """The fixed-header numbers ``read_las`` checks before handing the file to laspy."""
    version: Tuple[int, int]
    compressed: bool
    point_format: int
    record_length: int
    point_count: int
    data_offset: int  # byte offset of the first point record
    scales: Tuple[float, float, float]
    offsets: Tuple[float, float, float]


def read_las_header(path: str | os.PathLike) -> LasHeaderInfo:
    """Parse and check the fixed LAS header of ``path``; raises PointCloudFormatError naming the file.

    Checks: the LASF magic, version 1.0-1.4, header size, VLR count (each VLR header is 54 bytes and they
    sit between the header and the points), a known point format, and for uncompressed files that the
    declared points fit in the bytes after the point-data offset.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        raw = stream.read(375)
    if len(raw) < 4 or raw[:4] != b"LASF":
        raise PointCloudFormatError(f"{path}: not a LAS file (no 'LASF' signature)")
    if len(raw) < 227:
        raise PointCloudFormatError(f"{path}: truncated: {len(raw)} bytes, a LAS header needs at least 227")
    major, minor = raw[24], raw[25]
    if major != 1 or minor not in _MIN_HEADER_BYTES:
        raise PointCloudFormatError(f"{path}: unsupported LAS version byte(s) {major}.{minor} (LAS 1.0-1.4)")
    header_size, data_offset, num_vlrs, format_id, record_length, legacy_count = \
        struct.unpack_from("<HIIBHI", raw, 94)
    if not _MIN_HEADER_BYTES[minor] <= header_size <= min(size, data_offset):
        raise PointCloudFormatError(
            f"{path}: bad LAS header size {header_size} (LAS 1.{minor} needs {_MIN_HEADER_BYTES[minor]}, "
            f"point data starts at {data_offset}, file has {size} bytes)")
    if data_offset > size:
        raise PointCloudFormatError(f"{path}: truncated: point data offset {data_offset} is past the end "
                                    f"of the file ({size} bytes)")
    if num_vlrs * _VLR_HEADER_BYTES > data_offset - header_size:
        raise PointCloudFormatError(f"{path}: header declares {num_vlrs} VLRs, but only "
                                    f"{data_offset - header_size} bytes lie between header and points")
    compressed, point_format = bool(format_id & 0x80), format_id & 0x3F
    if point_format >= len(_MIN_RECORD_BYTES) or record_length < _MIN_RECORD_BYTES[point_format]:
        raise PointCloudFormatError(f"{path}: bad LAS point format {point_format} / record length {record_length}")
    point_count = legacy_count
    if minor >= 4:
        point_count, = struct.unpack_from("<Q", raw, 247)  # laspy reads this one for 1.4
        if legacy_count not in (0, point_count):
            raise PointCloudFormatError(f"{path}: LAS 1.4 header declares {point_count} points, its legacy "
                                        f"count field {legacy_count} (must be 0 or equal)")
        evlr_start, num_evlrs = struct.unpack_from("<QI", raw, 235)
        _check_evlrs(path, evlr_start, num_evlrs, size)
    data_bytes = size - data_offset
    if not compressed and point_count * record_length > data_bytes:
        raise PointCloudFormatError(
            f"{path}: header declares {point_count} points of {record_length} bytes "
            f"({point_count * record_length} bytes), the file holds {data_bytes} bytes of point data")
    scales, offsets = struct.unpack_from("<3d", raw, 131), struct.unpack_from("<3d", raw, 155)
    return LasHeaderInfo((major, minor), compressed, point_format, record_length, point_count, data_offset,
                         tuple(float(v) for v in scales), tuple(float(v) for v in offsets))


def _check_evlrs(path: Path, start: int, count: int, size: int) -> None:
    """The extended VLRs (LAS 1.4, after the points) must fit the file: 60-byte headers plus their data."""
    if count == 0:
        return
    if start + count * 60 > size:
        raise PointCloudFormatError(f"{path}: header declares {count} extended VLRs from byte {start}, "
                                    f"the file has {size} bytes")
    with open(path, "rb") as stream:
        for _ in range(count):
            stream.seek(start)
            head = stream.read(60)
            if len(head) < 60:
                raise PointCloudFormatError(f"{path}: truncated: extended VLR header at byte {start}")
            start += 60 + struct.unpack_from("<Q", head, 20)[0]
            if start > size:
                raise PointCloudFormatError(f"{path}: truncated: an extended VLR ends at byte {start}, "
                                            f"the file has {size} bytes")


def las_header_offset(path: str | os.PathLike) -> Tuple[float, float, float]:
    """The header's (x, y, z) offset of a LAS/LAZ file: a local origin near the data (``origin="header"``)."""
    return read_las_header(path).offsets


def resolve_origin(origin: Origin, path: str | os.PathLike) -> Optional[np.ndarray]:
    """None, or the (3,) float64 origin that ``origin`` (None | "header" | (x, y, z)) means for ``path``."""
    if origin is None:
        return None
    if isinstance(origin, str):
        if origin != "header":
            raise ValueError(f"{path}: origin must be None, 'header' or (x, y, z), got {origin!r}")
        return np.asarray(las_header_offset(path), np.float64)
    values = np.asarray(origin, np.float64)
    if values.shape != (3,) or not np.isfinite(values).all():
        raise ValueError(f"{path}: origin must be three finite numbers (x, y, z), got {origin!r}")
    return values


def read_las(path: str | os.PathLike, fields: Sequence[str] = (), origin: Origin = None) -> np.ndarray:
    """Scaled x, y, z (offset and scale applied) minus ``origin``, then the requested dimensions: float64 (N, 3 + k).

    float64 keeps survey coordinates exact (x ~ 6e5 m has 6 cm steps in float32); ``load_points`` casts.
    ``origin``: None (absolute coordinates), ``"header"`` (the header offset, see ``las_header_offset``) or
    (x, y, z); it is subtracted in float64. Field names are laspy dimension names: intensity,
    classification, return_number, gps_time, red, ...
    """
    laspy = _laspy()
    path = Path(path)
    header = read_las_header(path)
    shift = resolve_origin(origin, path)
    parts = []
    try:
        with laspy.open(path, read_evlrs=False) as reader:
            available = list(reader.header.point_format.dimension_names)
            unknown = [name for name in fields if name not in available]
            if unknown:
                raise PointCloudFormatError(f"{path}: no LAS dimension {unknown[0]!r}; available: "
                                            f"{', '.join(available)}")
            laz = getattr(reader.point_source, "vlr", None)  # lazrs' view of the LASzip VLR (laspy internals)
            if laz is not None and laz.item_size() != header.record_length:
                raise PointCloudFormatError(f"{path}: LASzip VLR items take {laz.item_size()} bytes per point, "
                                            f"the header's record length is {header.record_length}")
            for chunk in reader.chunk_iterator(max(1, CHUNK_BYTES // header.record_length)):
                xyz = np.stack([np.asarray(chunk.x, np.float64), np.asarray(chunk.y, np.float64),
                                np.asarray(chunk.z, np.float64)], axis=1)
                if shift is not None:
                    xyz -= shift
                parts.append(np.column_stack([xyz] + [np.asarray(chunk[name], np.float64) for name in fields]))
    except laspy.errors.LaspyException as err:
        message = str(err)
        if "LazBackend" in message or "backend" in message.lower():
            raise ImportError(f"{path}: no LAZ decompression backend for laspy ({message}): {INSTALL_HINT}") \
                from None
        raise PointCloudFormatError(f"{path}: unreadable LAS/LAZ file ({message})") from None
    except PointCloudFormatError:
        raise
    except (ValueError, OSError, EOFError, struct.error) as err:  # truncated VLRs, bad record sizes
        raise PointCloudFormatError(f"{path}: unreadable LAS/LAZ file ({type(err).__name__}: {err})") from None
    except RuntimeError as err:  # lazrs.LazrsError: corrupt or truncated compressed points
        if type(err).__name__ != "LazrsError":
            raise
        done = sum(len(part) for part in parts)
        raise PointCloudFormatError(f"{path}: corrupt or truncated LAZ point data: the header declares "
                                    f"{header.point_count} points, decoding failed after {done} ({err})") from None
    points = np.concatenate(parts) if parts else np.zeros((0, 3 + len(fields)))
    if len(points) != header.point_count:
        raise PointCloudFormatError(f"{path}: header declares {header.point_count} points, "
                                    f"{len(points)} were read (truncated file)")
    return points


def las_to_float32(points: np.ndarray, path, origin: Optional[np.ndarray] = None) -> np.ndarray:
    """Cast float64 LAS points (N, C) to float32, refusing a coordinate rounding above 1 mm.

    ``origin``: the (3,) float64 origin already subtracted from x, y, z (None: absolute coordinates).
    Survey coordinates (x ~ 2.4e6 m) land on a 0.25 m float32 grid; the one-line message names the
    origin to pass (``origin="header"`` when the header offset is near the data, else a corner of the data).
    """
    with np.errstate(over="ignore"):  # beyond float32: inf, reported by check_points
        cast = points.astype(np.float32)
    finite = np.isfinite(cast[:, :3]).all(axis=1)
    xyz = points[finite, :3]
    if not len(xyz):
        return cast
    worst = float(np.abs(cast[finite, :3].astype(np.float64) - xyz).max())
    if worst <= LOSSY_CAST_TOLERANCE:
        return cast
    shift = np.zeros(3) if origin is None else np.asarray(origin, np.float64)
    corner = np.floor(xyz.min(axis=0) + shift)
    header = np.asarray(las_header_offset(path))
    if np.abs(xyz + shift - header).max() < 4096:  # float32 steps there are <= 0.5 mm
        hint = "origin='header'"
    else:
        hint = (f"origin=({corner[0]:.1f}, {corner[1]:.1f}, {corner[2]:.1f}) (origin='header' would subtract the "
                f"header offset {tuple(float(v) + 0.0 for v in header)}, too far from the data)")
    where = "coordinates" if origin is None else f"coordinates relative to origin {tuple((shift + 0.0).tolist())}"
    raise PointCloudFormatError(f"{path}: {where} up to {float(np.abs(xyz).max()):.6g} m lose {worst:.3g} m "
                                f"in float32 (more than 1 mm); pass {hint} to read them around a local origin")
