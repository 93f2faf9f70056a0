"""PCL ``.pcd`` files (v0.5-0.7): DATA ascii, binary and binary_compressed (LZF, field-major).

``read_pcd`` returns the header and a numpy structured array with one named field per PCD field
(a field with COUNT > 1 is a sub-array); ``pcd_columns`` turns requested fields into float columns.
Organised clouds (HEIGHT > 1) keep their NaN slots here; ``load_points`` decides what to do with them.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pcmae.io.errors import PointCloudFormatError
from pcmae.io.lzf import LZF_MAX_RATIO, lzf_decompress

_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8",
          ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}
PACKED_COLOR_FIELDS = ("rgb", "rgba")


@dataclass
class PCDHeader:
    fields: list  # names; padding fields ("_") are renamed _pad0, _pad1, ...
    sizes: list
    types: list
    counts: list
    width: int
    height: int
    points: int
    data: str  # ascii | binary | binary_compressed
    data_offset: int  # byte offset of the first byte after the DATA line

    def dtype(self, path) -> np.dtype:
        parts = []
        for name, size, kind, count in zip(self.fields, self.sizes, self.types, self.counts):
            if (kind, size) not in _TYPES:
                raise PointCloudFormatError(f"{path}: field {name!r} has unsupported TYPE {kind} SIZE {size}")
            parts.append((name, _TYPES[kind, size], (count,)) if count > 1 else (name, _TYPES[kind, size]))
        return np.dtype(parts)


def _parse_header(raw: bytes, path) -> PCDHeader:
    entries, offset = {}, 0
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            raise PointCloudFormatError(f"{path}: PCD header has no DATA line (truncated or not a PCD file)")
        line = raw[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        entries[key.upper()] = values
        if key.upper() == "DATA":
            break
    try:
        fields = entries["FIELDS"]
        sizes = [int(v) for v in entries["SIZE"]]
        types = [t.upper() for t in entries["TYPE"]]
        counts = [int(v) for v in entries.get("COUNT", ["1"] * len(fields))]
        width, height = int(entries["WIDTH"][0]), int(entries.get("HEIGHT", ["1"])[0])
        points = int(entries.get("POINTS", [width * height])[0])
        data = entries["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as err:
        raise PointCloudFormatError(f"{path}: bad PCD header ({type(err).__name__}: {err})") from None
    if not len(fields) == len(sizes) == len(types) == len(counts):
        raise PointCloudFormatError(f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT lengths differ")
    if data not in ("ascii", "binary", "binary_compressed"):
        raise PointCloudFormatError(f"{path}: unknown PCD DATA kind {data!r}")
    if min(counts) < 1 or sum(s * c for s, c in zip(sizes, counts)) > max(len(raw), 1024):
        raise PointCloudFormatError(f"{path}: bad PCD header COUNT {' '.join(map(str, counts))} "
                                    f"(each field needs 1 or more values, a point fewer bytes than the file)")
    if width < 0 or height < 1 or points != width * height:
        raise PointCloudFormatError(f"{path}: bad PCD header: POINTS {points} must equal WIDTH {width} x "
                                    f"HEIGHT {height} (HEIGHT >= 1)")
    pads = iter(range(len(fields)))
    fields = [f"_pad{next(pads)}" if name == "_" else name for name in fields]
    return PCDHeader(fields, sizes, types, counts, width, height, points, data, offset)


def _read_ascii(raw: bytes, header: PCDHeader, dtype: np.dtype, path) -> np.ndarray:
    if header.points == 0:
        return np.zeros(0, dtype)
    lines = [line for line in raw[header.data_offset:].decode("ascii", errors="replace").splitlines()
             if line.strip()]
    if len(lines) < header.points:
        raise PointCloudFormatError(f"{path}: header says {header.points} points, found {len(lines)} lines "
                                    f"(truncated file)")
    columns = sum(header.counts)
    if header.points and len(lines[header.points - 1].split()) < columns:
        raise PointCloudFormatError(f"{path}: truncated: the last point line has fewer than {columns} values")
    try:
        values = np.loadtxt(lines[:header.points], dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise PointCloudFormatError(f"{path}: unreadable ascii PCD data ({err})") from None
    if values.shape[1] != columns:
        raise PointCloudFormatError(f"{path}: {values.shape[1]} values per line, header declares {columns}")
    out = np.zeros(header.points, dtype)
    start = 0
    for name, count, kind in zip(header.fields, header.counts, header.types):
        block = values[:, start:start + count]
        if kind == "F" and name in PACKED_COLOR_FIELDS and np.array_equal(block, np.round(block)):
            # PCL writes a float packed colour as the integer of its bits; a float-style writer gives tiny floats
            block = np.clip(block, 0, 2**32 - 1).astype(np.uint32).view(np.float32)
        out[name] = block.reshape(out[name].shape)
        start += count
    return out


def _read_binary(raw: bytes, header: PCDHeader, dtype: np.dtype, path) -> np.ndarray:
    needed = header.points * dtype.itemsize
    available = len(raw) - header.data_offset
    if available < needed:
        raise PointCloudFormatError(f"{path}: truncated: {header.points} points need {needed} bytes of data, "
                                    f"found {available}")
    return np.frombuffer(raw, dtype, count=header.points, offset=header.data_offset)


def _read_compressed(raw: bytes, header: PCDHeader, dtype: np.dtype, path) -> np.ndarray:
    start = header.data_offset
    if len(raw) < start + 8:
        raise PointCloudFormatError(f"{path}: truncated: binary_compressed data has no size words")
    compressed, uncompressed = struct.unpack_from("<II", raw, start)
    if len(raw) < start + 8 + compressed:
        raise PointCloudFormatError(f"{path}: truncated: {compressed} compressed bytes declared, "
                                    f"{len(raw) - start - 8} present")
    expected = header.points * dtype.itemsize
    if uncompressed != expected:
        raise PointCloudFormatError(f"{path}: binary_compressed expands to {uncompressed} bytes, "
                                    f"{header.points} points of {dtype.itemsize} bytes need {expected}")
    if uncompressed > LZF_MAX_RATIO * compressed:  # checked before the output buffer is allocated
        raise PointCloudFormatError(f"{path}: binary_compressed claims {compressed} LZF bytes expand to "
                                    f"{uncompressed}; LZF expands at most {LZF_MAX_RATIO}x (corrupt header)")
    try:
        buffer = lzf_decompress(raw[start + 8:start + 8 + compressed], uncompressed)
    except ValueError as err:
        raise PointCloudFormatError(f"{path}: corrupt LZF data ({err})") from None
    out = np.empty(header.points, dtype)
    offset = 0
    for name in header.fields:  # field-major: all points' values of one field, then the next field
        field = dtype[name]
        values = np.frombuffer(buffer, field.base, count=header.points * int(np.prod(field.shape)), offset=offset)
        out[name] = values.reshape(out[name].shape)
        offset += header.points * field.itemsize
    return out


def read_pcd(path: str | os.PathLike) -> tuple[PCDHeader, np.ndarray]:
    """Header and (POINTS,) structured array of a PCD file (organised clouds flattened row by row)."""
    path = Path(path)
    raw = path.read_bytes()
    header = _parse_header(raw, path)
    for axis in "xyz":
        if axis not in header.fields:
            raise PointCloudFormatError(f"{path}: PCD has no field {axis!r} (fields: {' '.join(header.fields)})")
    dtype = header.dtype(path)
    reader = {"ascii": _read_ascii, "binary": _read_binary, "binary_compressed": _read_compressed}[header.data]
    return header, reader(raw, header, dtype, path)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """PCL packed colour (float32 or uint32 bits 0x00RRGGBB / 0xAARRGGBB) -> (N, 3) r, g, b in 0-255."""
    bits = np.ascontiguousarray(packed).view(np.uint32) if packed.dtype.itemsize == 4 else packed.astype(np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=-1).astype(np.float32)


def pcd_columns(cloud: np.ndarray, fields: Sequence[str], path) -> np.ndarray:
    """x, y, z then the requested fields as float32 columns; ``rgb`` / ``rgba`` give three columns r, g, b."""
    names = cloud.dtype.names
    columns = [cloud[axis].astype(np.float32).reshape(-1, 1) for axis in "xyz"]
    for name in fields:
        if name in PACKED_COLOR_FIELDS:
            packed = next((f for f in PACKED_COLOR_FIELDS if f in names), None)
            if packed is None:
                raise PointCloudFormatError(f"{path}: no packed colour field (rgb/rgba); fields: {' '.join(names)}")
            columns.append(unpack_rgb(cloud[packed]))
        elif name in names:
            columns.append(cloud[name].astype(np.float32).reshape(len(cloud), -1))
        else:
            raise PointCloudFormatError(f"{path}: no field {name!r}; fields: {' '.join(names)}")
    return np.concatenate(columns, axis=1)
