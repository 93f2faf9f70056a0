"""Stanford ``.ply``: ascii, binary_little_endian and binary_big_endian; vertices and (optional) faces.

Vertices come back as a numpy structured array with one field per vertex property; faces (when the
file has a ``face`` element with a ``vertex_indices`` / ``vertex_index`` list) as a list of index arrays
already fan-triangulated to (F, 3). Elements other than vertex and face are skipped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pcmae.io.errors import PointCloudFormatError
from pcmae.io.mesh import triangulate_polygons

_SCALARS = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
            "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
            "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_FACE_LISTS = ("vertex_indices", "vertex_index")


@dataclass
class _Element:
    name: str
    count: int
    properties: list = field(default_factory=list)  # (name, dtype str) or (name, (count dtype, item dtype))

    @property
    def has_lists(self) -> bool:
        return any(isinstance(kind, tuple) for _, kind in self.properties)


@dataclass
class PlyData:
    vertices: np.ndarray  # (V,) structured, one field per vertex property
    faces: Optional[np.ndarray]  # (F, 3) int64 triangles, None when the file has no faces


def _scalar(kind: str, path) -> str:
    if kind not in _SCALARS:
        raise PointCloudFormatError(f"{path}: unknown PLY property type {kind!r}")
    return _SCALARS[kind]


def _parse_header(raw: bytes, path) -> tuple[str, list, int]:
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise PointCloudFormatError(f"{path}: not a PLY file (no 'ply' magic or no 'end_header')")
    body_start = raw.find(b"\n", end) + 1
    if body_start == 0:
        raise PointCloudFormatError(f"{path}: truncated: no line break after 'end_header'")
    fmt, elements = None, []
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append(_Element(words[1], int(words[2])))
                if elements[-1].count < 0:
                    raise ValueError("negative count")
            elif words[0] == "property" and words[1] == "list":
                count_kind = _scalar(words[2], path)
                if count_kind[0] not in "iu":
                    raise ValueError("list count type must be an integer")
                elements[-1].properties.append((words[4], (count_kind, _scalar(words[3], path))))
            elif words[0] == "property":
                elements[-1].properties.append((words[2], _scalar(words[1], path)))
        except PointCloudFormatError:
            raise
        except (IndexError, ValueError) as err:
            raise PointCloudFormatError(f"{path}: bad PLY header line {line!r} ({err})") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PointCloudFormatError(f"{path}: unknown PLY format {fmt!r}")
    return fmt, elements, body_start


def _fixed_dtype(element: _Element, order: str) -> np.dtype:
    return np.dtype([(name, order + kind) for name, kind in element.properties])


def _read_list_element_binary(raw: bytes, offset: int, element: _Element, order: str, path):
    """(face index lists, offset after the element) for a binary element holding list properties.

    The lists come as an (F, k) array when every face has k corners, else as a list of arrays.
    """
    lists, view = [], memoryview(raw)
    # fast path: every row has the same list length as the first (triangle meshes); verified below
    if len(element.properties) == 1 and element.properties[0][0] in _FACE_LISTS and element.count:
        count_kind, item_kind = element.properties[0][1]
        first = int(np.frombuffer(raw, order + count_kind, count=1, offset=offset)[0])
        fits = 3 <= first <= (len(raw) - offset) // np.dtype(item_kind).itemsize
        row = np.dtype([("n", order + count_kind), ("idx", order + item_kind, (first if fits else 1,))])
        if fits and offset + element.count * row.itemsize <= len(raw):
            rows = np.frombuffer(raw, row, count=element.count, offset=offset)
            if np.all(rows["n"] == first):
                return rows["idx"].astype(np.int64), offset + element.count * row.itemsize
    for _ in range(element.count):
        for name, kind in element.properties:
            if isinstance(kind, tuple):
                count_dtype, item_dtype = np.dtype(order + kind[0]), np.dtype(order + kind[1])
                n = int(np.frombuffer(view, count_dtype, count=1, offset=offset)[0])
                offset += count_dtype.itemsize
                if n < 0:
                    raise ValueError(f"negative list length {n}")
                values = np.frombuffer(view, item_dtype, count=n, offset=offset)
                offset += n * item_dtype.itemsize
                if name in _FACE_LISTS:
                    lists.append(values.astype(np.int64))
            else:
                offset += np.dtype(kind).itemsize
    return lists, offset


def _read_binary(raw, fmt, elements, offset, path, want_faces):
    order = "<" if fmt == "binary_little_endian" else ">"
    vertices = faces = None
    try:
        for element in elements:
            if element.name == "vertex" and element.has_lists:
                raise PointCloudFormatError(f"{path}: list properties on the vertex element are not supported")
            if not element.has_lists:
                dtype = _fixed_dtype(element, order)
                if offset + element.count * dtype.itemsize > len(raw):
                    raise PointCloudFormatError(
                        f"{path}: truncated: element {element.name!r} needs {element.count * dtype.itemsize} "
                        f"bytes, {len(raw) - offset} left")
                if element.name == "vertex":
                    vertices = np.frombuffer(raw, dtype, count=element.count, offset=offset)
                offset += element.count * dtype.itemsize
            elif element.name == "face" and want_faces:
                faces, offset = _read_list_element_binary(raw, offset, element, order, path)
            else:  # walked even when not needed: a truncated file is an error, not a silent half read
                _, offset = _read_list_element_binary(raw, offset, element, order, path)
    except (ValueError, IndexError) as err:
        if isinstance(err, PointCloudFormatError):
            raise
        raise PointCloudFormatError(f"{path}: truncated or corrupt binary PLY body ({err})") from None
    return vertices, faces


def _read_ascii(raw, elements, offset, path, want_faces):
    lines = [line for line in raw[offset:].decode("ascii", errors="replace").splitlines() if line.strip()]
    vertices = faces = None
    start = 0
    for element in elements:
        rows = lines[start:start + element.count]
        if len(rows) < element.count:
            raise PointCloudFormatError(f"{path}: truncated: element {element.name!r} declares {element.count} "
                                        f"lines, {len(rows)} present")
        start += element.count
        if element.name == "vertex":
            dtype = _fixed_dtype(element, "=")
            try:
                values = np.loadtxt(rows, dtype=np.float64, ndmin=2) if rows else np.zeros((0, len(dtype)))
            except ValueError as err:
                raise PointCloudFormatError(f"{path}: unreadable ascii vertex data ({err})") from None
            if values.shape[1] != len(dtype.names):
                raise PointCloudFormatError(f"{path}: {values.shape[1]} values per vertex line, header declares "
                                            f"{len(dtype.names)}")
            vertices = np.zeros(element.count, dtype)
            for i, name in enumerate(dtype.names):
                vertices[name] = values[:, i]
        elif element.name == "face" and want_faces:
            names = [name for name, _ in element.properties]
            position = next((i for i, name in enumerate(names) if name in _FACE_LISTS), None)
            if position != 0:
                raise PointCloudFormatError(f"{path}: ascii faces must start with a vertex_indices list")
            try:
                faces = [np.array(row.split()[1:1 + int(row.split()[0])], dtype=np.int64) for row in rows]
            except ValueError as err:
                raise PointCloudFormatError(f"{path}: unreadable ascii face line ({err})") from None
    return vertices, faces


def read_ply(path: str | os.PathLike, faces: bool = False) -> PlyData:
    """Vertices (and, with ``faces=True``, triangles) of a PLY file."""
    path = Path(path)
    raw = path.read_bytes()
    fmt, elements, offset = _parse_header(raw, path)
    vertex = next((element for element in elements if element.name == "vertex"), None)
    if vertex is None:
        raise PointCloudFormatError(f"{path}: PLY file has no 'vertex' element")
    if vertex.has_lists:
        raise PointCloudFormatError(f"{path}: list properties on the vertex element are not supported")
    if fmt == "ascii":
        vertices, face_lists = _read_ascii(raw, elements, offset, path, faces)
    else:
        vertices, face_lists = _read_binary(raw, fmt, elements, offset, path, faces)
    for axis in "xyz":
        if axis not in vertices.dtype.names:
            raise PointCloudFormatError(f"{path}: PLY vertices have no property {axis!r} "
                                        f"(properties: {' '.join(vertices.dtype.names)})")
    triangles = triangulate_polygons(face_lists) if faces and face_lists is not None else None
    return PlyData(vertices, triangles)
