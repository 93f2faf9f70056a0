"""Point-cloud normalisation and the batched training augmentations of Point-MAE.

The augmentations act on a whole batch ``xyz: (B, N, 3)`` on its own device (Point-MAE applies them to the
GPU batch), one random draw per sample, reproducible through an optional ``torch.Generator``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

from pcmae.augment import scale_and_translate

Array = Union[np.ndarray, torch.Tensor]


def pc_normalize(points: Array) -> Array:
    """Centre on the centroid and divide by the largest point norm (Point-MAE's ``pc_norm``).

    points: (N, 3) numpy or (..., N, 3) torch; the result has the same type, shape and dtype. A cloud whose
    points all coincide comes back centred (all zeros) instead of dividing by zero.
    """
    if isinstance(points, torch.Tensor):
        centred = points - points.mean(dim=-2, keepdim=True)
        radius = centred.norm(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)
        return centred / torch.where(radius > 0, radius, torch.ones_like(radius))
    points = np.asarray(points)
    centred = points - points.mean(axis=0, keepdims=True)
    radius = np.sqrt((centred ** 2).sum(axis=1)).max() if len(points) else 0.0
    return (centred / radius if radius > 0 else centred).astype(points.dtype, copy=False)


def _check_batch(xyz: torch.Tensor, name: str) -> None:
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name}: expected xyz of shape (B, N, 3), got {tuple(xyz.shape)}")


class ScaleAndTranslate:
    """Per-sample anisotropic scale in [scale_low, scale_high] and shift in [-translate, translate] per axis."""

    def __init__(self, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0, translate: float = 0.2):
        if not 0 < scale_low <= scale_high:
            raise ValueError(f"ScaleAndTranslate: need 0 < scale_low <= scale_high, got {scale_low}, {scale_high}")
        self.scale_low, self.scale_high, self.translate = scale_low, scale_high, translate

    def __call__(self, xyz: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """xyz: (B, N, 3) -> (B, N, 3)."""
        _check_batch(xyz, "ScaleAndTranslate")
        return scale_and_translate(xyz, self.scale_low, self.scale_high, self.translate, generator=generator)


def rotation_matrices(angles: torch.Tensor, axis: str) -> torch.Tensor:
    """Right-handed rotations by ``angles: (B,)`` radians about axis 'x', 'y' or 'z' -> (B, 3, 3)."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(angles), torch.ones_like(angles)
    rows = {
        "x": [[one, zero, zero], [zero, cos, -sin], [zero, sin, cos]],
        "y": [[cos, zero, sin], [zero, one, zero], [-sin, zero, cos]],
        "z": [[cos, -sin, zero], [sin, cos, zero], [zero, zero, one]],
    }[axis]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def random_rotations(batch: int, generator: Optional[torch.Generator] = None, device=None,
                     dtype=torch.float32) -> torch.Tensor:
    """Rotations uniform over SO(3) (from normalised gaussian quaternions) -> (B, 3, 3)."""
    q = torch.randn(batch, 4, generator=generator, device=device, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    matrix = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], dim=1)
    return matrix.view(batch, 3, 3).to(dtype)


class RandomRotate:
    """Rotate each sample by a random angle in ``angle_range`` about ``axis`` ('x', 'y' or 'z'; Point-MAE
    rotates about the up axis 'y' of ShapeNet), or uniformly over SO(3) with ``axis=None``."""

    def __init__(self, axis: Optional[str] = "y", angle_range: Tuple[float, float] = (0.0, 2 * math.pi)):
        if axis not in ("x", "y", "z", None):
            raise ValueError(f"RandomRotate: axis must be 'x', 'y', 'z' or None, got {axis!r}")
        self.axis, self.angle_range = axis, angle_range

    def __call__(self, xyz: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """xyz: (B, N, 3) -> (B, N, 3)."""
        _check_batch(xyz, "RandomRotate")
        batch = xyz.shape[0]
        if self.axis is None:
            matrices = random_rotations(batch, generator, xyz.device, xyz.dtype)
        else:
            low, high = self.angle_range
            angles = torch.rand(batch, generator=generator, device=xyz.device, dtype=torch.float64)
            matrices = rotation_matrices(angles * (high - low) + low, self.axis).to(xyz.dtype)
        return xyz @ matrices.transpose(1, 2)
