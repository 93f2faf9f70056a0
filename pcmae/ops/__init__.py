"""Geometry kernels on tensors (CPU and CUDA): FPS, kNN, Chamfer distance, segment reductions, voxelization.

Each fast path has a pure-torch reference (``*_reference``) that the tests compare against.
"""
from __future__ import annotations

from pcmae.ops.chamfer import chamfer_distance, nearest_sq_dist
from pcmae.ops.fps import farthest_point_sample, farthest_point_sample_reference
from pcmae.ops.knn import knn, knn_reference
from pcmae.ops.neighbours import neighbour_mean, value_at
from pcmae.ops.segment import segment_reduce, segment_reduce_reference
from pcmae.ops.voxelize import Voxels, grid_size_of, voxel_centers, voxelize, voxelize_reference

__all__ = [
    "Voxels",
    "chamfer_distance",
    "farthest_point_sample",
    "farthest_point_sample_reference",
    "grid_size_of",
    "knn",
    "knn_reference",
    "neighbour_mean",
    "value_at",
    "nearest_sq_dist",
    "segment_reduce",
    "segment_reduce_reference",
    "voxel_centers",
    "voxelize",
    "voxelize_reference",
]
