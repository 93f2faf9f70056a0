"""The few types every layer speaks."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PointGroups:
    """Point-MAE tokens before embedding: local patches around sampled centers.

    centers:       (B, G, 3) patch centers (FPS samples of the cloud).
    neighborhoods: (B, G, K, 3) the K nearest points of each center, relative to it.
    """

    centers: torch.Tensor
    neighborhoods: torch.Tensor

    @property
    def num_groups(self) -> int:
        return self.centers.shape[1]

    @property
    def group_size(self) -> int:
        return self.neighborhoods.shape[2]


@dataclass
class PointBatch:
    """Many LiDAR sweeps packed into one tensor, no padding.

    points:    (N, C) float32, columns x, y, z first (metres, sensor/ego frame), then features.
    batch_idx: (N,) int64, the sample each point belongs to, sorted ascending (0 .. B-1).
    batch_size: B (a sample may have no points after cropping).
    """

    points: torch.Tensor
    batch_idx: torch.Tensor
    batch_size: int

    @property
    def xyz(self) -> torch.Tensor:
        return self.points[:, :3]

    def counts(self) -> torch.Tensor:
        """(B,) points per sample."""
        return torch.bincount(self.batch_idx, minlength=self.batch_size)

    def to(self, device) -> "PointBatch":
        return PointBatch(self.points.to(device), self.batch_idx.to(device), self.batch_size)

    @staticmethod
    def from_list(clouds: list[torch.Tensor]) -> "PointBatch":
        """Pack a list of (N_i, C) clouds."""
        batch_idx = torch.cat([torch.full((len(c),), i, dtype=torch.long) for i, c in enumerate(clouds)])
        return PointBatch(torch.cat(clouds), batch_idx, len(clouds))
