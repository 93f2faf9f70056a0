"""Errors raised by the point-cloud readers; each message names the file and the problem."""
from __future__ import annotations


class PointCloudFormatError(ValueError):
    """A file is not a valid point cloud of its format (wrong size, truncated, bad header, unknown field...)."""


class EmptyPointCloudError(PointCloudFormatError):
    """A file holds no points (or none left after dropping non-finite ones)."""


class NonFinitePointsError(PointCloudFormatError):
    """Some x, y, z coordinates are NaN or infinite."""
