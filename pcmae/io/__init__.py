"""Point-cloud file readers. ``load_points(path, ...)`` reads any supported format as float32 (N, C).

Formats: raw float32 ``.bin`` (KITTI / nuScenes / Waymo layouts), ``.npy``, text ``.txt .xyz .pts``, PCL
``.pcd`` (ascii / binary / binary_compressed), ``.ply`` (ascii / binary), ``.las .laz`` (laspy, optional
extra ``formats``) and ``.off`` meshes (vertices or area-weighted surface samples).
"""
from __future__ import annotations

from pcmae.io.binary import BIN_LAYOUTS, read_bin, read_npy
from pcmae.io.errors import EmptyPointCloudError, NonFinitePointsError, PointCloudFormatError
from pcmae.io.las import las_header_offset, read_las, read_las_header
from pcmae.io.loader import SUPPORTED_EXTENSIONS, check_points, load_points
from pcmae.io.lzf import lzf_decompress
from pcmae.io.mesh import sample_surface, triangle_areas, triangulate_polygons
from pcmae.io.off import read_off
from pcmae.io.pcd import read_pcd
from pcmae.io.ply import read_ply
from pcmae.io.text import read_text

__all__ = [
    "BIN_LAYOUTS", "EmptyPointCloudError", "NonFinitePointsError", "PointCloudFormatError", "SUPPORTED_EXTENSIONS",
    "check_points", "las_header_offset", "load_points", "lzf_decompress", "read_bin", "read_las", "read_las_header",
    "read_npy", "read_off", "read_pcd", "read_ply", "read_text", "sample_surface", "triangle_areas",
    "triangulate_polygons",
]
