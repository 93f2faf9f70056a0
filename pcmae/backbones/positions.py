"""Position embeddings of voxel centers."""
from __future__ import annotations

import math

import torch
from torch import nn


def mlp(dims) -> nn.Sequential:
    """Linear layers of widths ``dims`` with GELU between them (none after the last)."""
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers[:-1])


class FourierPosition(nn.Module):
    """Voxel centers in metres (N, 3) -> (N, dim): sin / cos of each coordinate at ``num_bands`` wavelengths from
    two voxels to twice the range, then an MLP. A 1-voxel offset is then as plain to the network as a 50 m one
    (an MLP of ``xyz / range`` sees neighbouring voxels 0.005 apart and cannot tell them from the same voxel)."""

    def __init__(self, dim: int, min_wavelength: float, max_wavelength: float, num_bands: int = 12):
        super().__init__()
        wavelengths = torch.logspace(math.log10(min_wavelength), math.log10(max_wavelength), num_bands)
        self.register_buffer("frequencies", 2 * math.pi / wavelengths, persistent=False)
        self.mlp = mlp([6 * num_bands, 128, dim])

    @staticmethod
    def grid_wavelengths(voxel_size, point_cloud_range) -> tuple[float, float]:
        """(min, max) wavelength for a voxel grid: two voxels, and twice the largest extent of the range."""
        extent = max(hi - lo for lo, hi in zip(point_cloud_range[:3], point_cloud_range[3:]))
        return 2 * min(voxel_size), 2 * extent

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        angles = (xyz.unsqueeze(-1) * self.frequencies).flatten(1)  # (N, 3 * bands)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))
