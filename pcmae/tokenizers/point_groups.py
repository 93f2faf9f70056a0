"""Point-MAE tokenizer: FPS centers + kNN patches, embedded by a mini-PointNet."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcmae.ops import farthest_point_sample, knn
from pcmae.structures import PointGroups


class TooFewPointsError(ValueError):
    """The cloud has fewer points than the tokenizer needs."""


class PointGrouper(nn.Module):
    """Split each cloud into ``num_groups`` patches of ``group_size`` points (no parameters).

    Centers come from farthest point sampling started at index 0; each patch holds the
    ``group_size`` nearest points of its center, made relative to that center (Point-MAE).
    """

    def __init__(self, num_groups: int = 64, group_size: int = 32):
        super().__init__()
        self.num_groups = num_groups
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor) -> PointGroups:
        """xyz: (B, N, 3) -> PointGroups with centers (B, G, 3), neighborhoods (B, G, K, 3)."""
        if xyz.dim() != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"expected points of shape (B, N, 3), got {tuple(xyz.shape)}")
        n = xyz.shape[1]
        if n < max(self.num_groups, self.group_size):
            raise TooFewPointsError(
                f"a cloud of {n} points is too small for {self.num_groups} groups of "
                f"{self.group_size} points; give at least {max(self.num_groups, self.group_size)} points"
            )
        xyz = xyz.contiguous()
        center_idx = farthest_point_sample(xyz, self.num_groups)  # (B, G)
        centers = torch.gather(xyz, 1, center_idx.unsqueeze(-1).expand(-1, -1, 3))
        _, neighbor_idx = knn(centers, xyz, self.group_size)  # (B, G, K)
        batch = torch.arange(xyz.shape[0], device=xyz.device).view(-1, 1, 1)
        neighborhoods = xyz[batch, neighbor_idx] - centers.unsqueeze(2)
        return PointGroups(centers=centers, neighborhoods=neighborhoods)


class MiniPointNet(nn.Module):
    """Embed each patch into one token: shared MLP, max-pool, concat global to each point, MLP, max-pool.

    neighborhoods (B, G, K, 3) -> tokens (B, G, embed_dim). Layer layout equals Point-MAE's ``Encoder``.
    """

    def __init__(self, embed_dim: int = 384):
        super().__init__()
        self.embed_dim = embed_dim
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, embed_dim, 1)
        )

    def forward(self, neighborhoods: torch.Tensor) -> torch.Tensor:
        b, g, k, _ = neighborhoods.shape
        x = pointwise(self.first_conv, neighborhoods.reshape(b * g * k, 3)).view(b * g, k, 256)
        pooled = x.max(dim=1, keepdim=True).values  # (BG, 1, 256)
        x = torch.cat([pooled.expand(-1, k, -1), x], dim=2).view(b * g * k, 512)
        x = pointwise(self.second_conv, x).view(b * g, k, self.embed_dim).max(dim=1).values  # (BG, C)
        return x.reshape(b, g, self.embed_dim)


def pointwise(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run 1x1 Conv1d / BatchNorm1d / ReLU layers on channels-last points x: (M, C_in) -> (M, C_out).

    A 1x1 Conv1d is a matmul; on CPU the matmul is ~1.4x faster than mkldnn's conv (forward + backward),
    and BatchNorm1d's statistics over (M, C) equal those over (M / K, C, K). The Conv1d modules stay for
    Point-MAE's state-dict layout.
    """
    for layer in layers:
        x = F.linear(x, layer.weight.squeeze(-1), layer.bias) if isinstance(layer, nn.Conv1d) else layer(x)
    return x
