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
