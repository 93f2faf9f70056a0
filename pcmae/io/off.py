"""Object File Format ``.off`` meshes (ModelNet's raw format): vertices and fan-triangulated faces.

Accepts the ModelNet quirk where the counts share the first line with the keyword (``OFF1490 1000 0``)
and the ``COFF`` / ``NOFF`` variants (extra per-vertex columns after x y z are ignored).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pcmae.io.errors import PointCloudFormatError
from pcmae.io.mesh import triangulate_polygons


def read_off(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, triangles (T, 3) int64) of an OFF file."""
    path = Path(path)
    return parse_off(path.read_text(errors="replace"), path)


def parse_off(text: str, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``read_off`` on the text of an OFF file (e.g. a member of a zip); ``path`` names it in errors."""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines or not lines[0].upper().lstrip("CN").startswith("OFF"):
        raise PointCloudFormatError(f"{path}: not an OFF file (first line must start with 'OFF')")
    counts_text = lines[0].upper().lstrip("CN")[3:].split()
    body = lines[1:]
    if not counts_text:
        if not body:
            raise PointCloudFormatError(f"{path}: truncated: no vertex/face counts")
        counts_text, body = body[0].split(), body[1:]
    try:
        num_vertices, num_faces = int(counts_text[0]), int(counts_text[1])
    except (IndexError, ValueError):
        raise PointCloudFormatError(f"{path}: bad OFF counts line {' '.join(counts_text)!r}") from None
    if num_vertices < 0 or num_faces < 0:
        raise PointCloudFormatError(f"{path}: bad OFF counts line {' '.join(counts_text)!r} (negative count)")
    if len(body) < num_vertices + num_faces:
        raise PointCloudFormatError(f"{path}: truncated: {num_vertices} vertices + {num_faces} faces declared, "
                                    f"{len(body)} lines present")
    try:
        vertices = np.loadtxt(body[:num_vertices], dtype=np.float64, ndmin=2)[:, :3] if num_vertices \
            else np.zeros((0, 3))
        polygons = []
        for row in body[num_vertices:num_vertices + num_faces]:
            words = row.split()
            size = int(words[0])
            if size < 0 or len(words) < 1 + size:
                raise ValueError(f"face line {row!r} lists fewer than {size} indices")
            polygons.append(np.asarray(words[1:1 + size], dtype=np.int64))
    except (ValueError, IndexError) as err:
        raise PointCloudFormatError(f"{path}: unreadable OFF body ({err})") from None
    if vertices.shape[1] < 3:
        raise PointCloudFormatError(f"{path}: vertex lines have fewer than 3 coordinates")
    return vertices, triangulate_polygons(polygons)
