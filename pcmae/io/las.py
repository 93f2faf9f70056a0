"""ASPRS ``.las`` / ``.laz`` through laspy (optional: ``pip install pcmae[formats]``).

The header is parsed and checked here first (version, header size, VLRs and EVLRs walked within the file,
point count against the file size; for LAZ the LASzip items against the point format and the chunk table's
offset and count), so no header number drives an allocation or a loop before it is known to fit the file.
Points are then read in chunks of at most 4 MiB of records with lazrs' sequential decoder, so a compressed
file that claims more points than it holds costs at most one chunk.
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

    Checks: the LASF magic, version 1.0-1.4, header size, the VLRs (they sit between the header and the
    points) and LAS 1.4 EVLRs (after the points), a known point format, for uncompressed files that the
    declared points fit in the bytes after the point-data offset, and for LAZ the LASzip items and chunk table.
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
    laszip_items = _walk_vlrs(path, header_size, data_offset, num_vlrs)
    if compressed:
        _check_laszip_items(path, laszip_items, point_format, record_length)
        _check_chunk_table(path, data_offset, point_count, size)
    scales, offsets = struct.unpack_from("<3d", raw, 131), struct.unpack_from("<3d", raw, 155)
    return LasHeaderInfo((major, minor), compressed, point_format, record_length, point_count, data_offset,
                         tuple(float(v) for v in scales), tuple(float(v) for v in offsets))


def _walk_vlrs(path: Path, start: int, end: int, count: int) -> Optional[list]:
    """Check that ``count`` VLRs fit between the header (``start``) and the points (``end``); return the
    (type, size) items of the LASzip VLR if there is one."""
    with open(path, "rb") as stream:
        stream.seek(start)
        block = stream.read(end - start)
    position, items = 0, None
    for index in range(count):
        if position + _VLR_HEADER_BYTES > len(block):
            raise PointCloudFormatError(f"{path}: VLR {index} of {count} starts past the point data offset {end}")
        user_id, record_id, length = struct.unpack_from("<16sHH", block, position + 2)
        data = block[position + _VLR_HEADER_BYTES:position + _VLR_HEADER_BYTES + length]
        if len(data) < length:
            raise PointCloudFormatError(f"{path}: VLR {index} ({length} bytes) runs past the point data offset {end}")
        if user_id.rstrip(b"\0") == b"laszip encoded" and record_id == 22204 and length >= 34:
            num_items, = struct.unpack_from("<H", data, 32)
            if 34 + 6 * num_items > length:
                raise PointCloudFormatError(f"{path}: LASzip VLR lists {num_items} items in {length} bytes")
            items = [struct.unpack_from("<HH", data, 34 + 6 * i) for i in range(num_items)]
        position += _VLR_HEADER_BYTES + length
    return items


_LASZIP_POINT_ITEMS = {6: range(0, 6), 10: range(6, 11)}  # POINT10 / POINT14 item type -> point formats


def _check_laszip_items(path: Path, items: Optional[list], point_format: int, record_length: int) -> None:
    """The LASzip items must start with the point item of the point format and add up to the record length
    (lazrs sizes its buffers from them: a wrong item allocated 64 KB per point, or gigabytes per chunk)."""
    if items is None:
        raise PointCloudFormatError(f"{path}: compressed LAS (LAZ) without a LASzip VLR")
    first = items[0][0] if items else None
    layered = point_format >= 6
    if (first not in _LASZIP_POINT_ITEMS or point_format not in _LASZIP_POINT_ITEMS[first]
            or any((kind >= 10) != layered or kind > 14 for kind, _ in items)
            or sum(size for _, size in items) != record_length):
        raise PointCloudFormatError(f"{path}: LASzip VLR items (type, size) {items} do not describe point format "
                                    f"{point_format} records of {record_length} bytes")


def _check_chunk_table(path: Path, data_offset: int, point_count: int, size: int) -> None:
    """The LAZ chunk table (its offset is the first 8 bytes of the point data) must lie in the file and list
    at most one chunk per point: lazrs allocates 16 bytes per listed chunk before reading them."""
    with open(path, "rb") as stream:
        stream.seek(data_offset)
        head = stream.read(8)
        if len(head) < 8:
            raise PointCloudFormatError(f"{path}: truncated: no LAZ chunk table offset at byte {data_offset}")
        table, = struct.unpack("<q", head)
        if table == -1:  # written by a streaming writer: no table
            return
        if not data_offset + 8 <= table <= size - 8:
            raise PointCloudFormatError(f"{path}: LAZ chunk table offset {table} lies outside the point data "
                                        f"(bytes {data_offset + 8} to {size - 8})")
        stream.seek(table)
        version, chunks = struct.unpack("<II", stream.read(8))
    if version != 0 or chunks > max(point_count, 1):
        raise PointCloudFormatError(f"{path}: bad LAZ chunk table (version {version}, {chunks} chunks for "
                                    f"{point_count} points)")


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
        # the sequential LAZ decoder: lazrs' parallel one allocates a whole chunk from the LASzip VLR's chunk size
        # before decoding (one flipped byte: a 124 GB allocation and an abort that no except clause catches)
        sequential = laspy.LazBackend.Lazrs
        backend = sequential if header.compressed and sequential.is_available() else None
        with laspy.open(path, read_evlrs=False, laz_backend=backend) as reader:
            available = list(reader.header.point_format.dimension_names)
            unknown = [name for name in fields if name not in available]
            if unknown:
                raise PointCloudFormatError(f"{path}: no LAS dimension {unknown[0]!r}; available: "
                                            f"{', '.join(available)}")
            for chunk in reader.chunk_iterator(max(1, CHUNK_BYTES // header.record_length)):
                with np.errstate(over="ignore", invalid="ignore"):  # a huge/NaN scale: check_points reports it
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
    except BaseException as err:  # a Rust panic inside lazrs reaches Python as pyo3's PanicException
        if type(err).__name__ != "PanicException":
            raise
        raise PointCloudFormatError(f"{path}: corrupt LAZ data (the lazrs decoder panicked: {err})") from None
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
