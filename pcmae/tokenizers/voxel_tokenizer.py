"""Linear-time voxel tokenizer (P3P-style): one token per non-empty voxel, no padding, no FPS.

Points -> voxel index (one sort) -> per-point features (offset to the voxel center, offset to the
voxel's point mean, raw channels) -> shared MLP -> max over each voxel's points by a segment reduction.
Each sample yields as many tokens as it has occupied voxels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pcmae.ops import segment_reduce, voxel_centers, voxelize
from pcmae.registry import TOKENIZERS
from pcmae.structures import PointBatch


@dataclass
class VoxelTokens:
    """features: (V, C); coords: (V, 4) int32 (batch, z, y, x); centers: (V, 3) metres;
    counts: (V,) points per voxel; point_to_voxel: (N,) voxel of each input point (-1 = cropped)."""

    features: torch.Tensor
    coords: torch.Tensor
    centers: torch.Tensor
    counts: torch.Tensor
    point_to_voxel: torch.Tensor
    batch_size: int

    @property
    def batch_idx(self) -> torch.Tensor:
        return self.coords[:, 0].long()


class VoxelTokenizer(nn.Module):
    """PointBatch -> VoxelTokens.

    mode="pointnet": learned per-voxel PointNet (embed_dim channels);
    mode="mean": the mean of each voxel's raw point channels (mmdet3d's HardSimpleVFE), no parameters,
    so a sparse-conv encoder trained on it loads into SECOND / CenterPoint unchanged.
    """

    def __init__(self, point_channels: int = 4, embed_dim: int = 128, voxel_size=(0.2, 0.2, 0.2),
                 point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), max_points_per_voxel: int | None = 32,
                 mode: str = "pointnet", hidden_dim: int = 64):
        super().__init__()
        if mode not in ("pointnet", "mean"):
            raise ValueError(f"unknown tokenizer mode {mode!r}; use 'pointnet' or 'mean'")
        self.mode = mode
        self.point_channels = point_channels
        self.register_buffer("voxel_size", torch.tensor(voxel_size, dtype=torch.float32), persistent=False)
        self.register_buffer("pc_range", torch.tensor(point_cloud_range, dtype=torch.float32), persistent=False)
        self.max_points_per_voxel = max_points_per_voxel
        self.embed_dim = embed_dim if mode == "pointnet" else point_channels
        if mode == "pointnet":
            self.point_mlp = nn.Sequential(nn.Linear(point_channels + 6, hidden_dim), nn.LayerNorm(hidden_dim),
                                           nn.GELU(), nn.Linear(hidden_dim, embed_dim))
            self.norm = nn.LayerNorm(embed_dim)

    def voxelize(self, batch: PointBatch):
        return voxelize(batch.points, batch.batch_idx, self.voxel_size.tolist(), self.pc_range.tolist(),
                        max_points_per_voxel=self.max_points_per_voxel, batch_size=batch.batch_size)

    def forward(self, batch: PointBatch) -> VoxelTokens:
        if batch.points.shape[-1] != self.point_channels:
            raise ValueError(f"tokenizer expects {self.point_channels} point channels, got {batch.points.shape[-1]}")
        vox = self.voxelize(batch)
        centers = voxel_centers(vox, self.voxel_size.tolist(), self.pc_range.tolist())
        kept = vox.point_to_voxel >= 0
        features = self.embed(batch.points[kept], vox.point_to_voxel[kept], centers, vox.coords.shape[0])
        return VoxelTokens(features, vox.coords, centers, vox.counts, vox.point_to_voxel, batch.batch_size)

    def embed(self, points: torch.Tensor, voxel_of_point: torch.Tensor, centers: torch.Tensor,
              num_voxels: int) -> torch.Tensor:
        """Per-voxel features (V, embed_dim) from the kept points (N, point_channels), each point's voxel (N,) and
        the voxel centers (V, 3). Shared with mmdet3d's hard-voxel encoder (``PcmaeVoxelEncoder``)."""
        if self.mode == "mean":
            return segment_reduce(points, voxel_of_point, num_voxels, "mean")
        xyz = points[:, :3]
        mean_xyz = segment_reduce(xyz, voxel_of_point, num_voxels, "mean")
        per_point = torch.cat([(xyz - centers[voxel_of_point]) / self.voxel_size,
                               (xyz - mean_xyz[voxel_of_point]) / self.voxel_size,
                               self.normalize_raw(points)], dim=-1)
        return self.norm(segment_reduce(self.point_mlp(per_point), voxel_of_point, num_voxels, "max"))

    def normalize_raw(self, points: torch.Tensor) -> torch.Tensor:
        """Raw channels with xyz mapped to [0, 1] over the range (metres would dwarf the offsets)."""
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        return torch.cat([(points[:, :3] - lo) / (hi - lo), points[:, 3:]], dim=-1)


# --- registry entries: ``model.tokenizer: {type: pointnet | mean, ...}`` (the model passes the grid) -----------

@TOKENIZERS.register(name="pointnet")
class PointNetVoxelTokenizer(VoxelTokenizer):
    """A learned PointNet per voxel -> (V, embed_dim); ``hidden_dim`` is the width of its point MLP."""

    def __init__(self, point_channels: int, voxel_size, point_cloud_range, max_points_per_voxel: int | None,
                 embed_dim: int = 128, hidden_dim: int = 64):
        super().__init__(point_channels, embed_dim, voxel_size, point_cloud_range, max_points_per_voxel,
                         mode="pointnet", hidden_dim=hidden_dim)


@TOKENIZERS.register(name="mean")
class MeanVoxelTokenizer(VoxelTokenizer):
    """The mean of each voxel's raw point channels (mmdet3d's HardSimpleVFE) -> (V, point_channels); no
    parameters, so a sparse-conv encoder trained on it loads into SECOND / CenterPoint unchanged."""

    def __init__(self, point_channels: int, voxel_size, point_cloud_range, max_points_per_voxel: int | None):
        super().__init__(point_channels, point_channels, voxel_size, point_cloud_range, max_points_per_voxel,
                         mode="mean")
