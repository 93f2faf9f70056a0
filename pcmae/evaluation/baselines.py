"""Trivial answers to the occupancy question a LiDAR MAE is asked (is this hidden query voxel occupied?) and to
where its points lie. A model that does not beat the strongest of these has learned nothing about the scene.

Scores (Q,) for the query voxels, higher = more likely occupied:
- constants: every query occupied (score 1) / none (score 0);
- ``RangePrior``: the occupancy rate of query voxels in the query's distance ring, learned on training sweeps;
- ``neighbour_fraction``: the fraction of the 26 neighbours that are visible voxels (occupied when > 0).
Points of the hidden voxels: ``neighbour_copy_points`` puts one point per hidden voxel where its visible
neighbours' points lie inside their own voxels (their mean offset from the voxel center).
"""
from __future__ import annotations

import math

import torch

from pcmae.ops import neighbour_mean, segment_reduce


def ring_distance(centers: torch.Tensor) -> torch.Tensor:
    """(Q, 3) voxel centers in the sensor frame -> (Q,) horizontal distance from the sensor (the frame origin)."""
    return centers[:, :2].norm(dim=1)


class RangePrior:
    """Occupancy rate by distance ring: ``rates[i]`` is the share of occupied queries among training queries at
    horizontal distance [i * ring_m, (i + 1) * ring_m); farther queries use the last ring. A ring without any
    training query gets the overall training rate (the best constant)."""

    def __init__(self, ring_m: float, rates):
        if not ring_m > 0 or not len(rates):
            raise ValueError(f"RangePrior needs ring_m > 0 and at least one ring, got {ring_m} and {len(rates)}")
        self.ring_m = float(ring_m)
        self.rates = torch.as_tensor(rates, dtype=torch.float64)

    @classmethod
    def fit(cls, distances: torch.Tensor, labels: torch.Tensor, ring_m: float, max_distance: float) -> "RangePrior":
        """distances (Q,) metres, labels (Q,) {0, 1} of the training queries; rings up to ``max_distance``."""
        if len(labels) == 0:
            raise ValueError("RangePrior.fit: no training queries")
        num_rings = max(1, math.ceil(max_distance / ring_m))
        ring = cls._ring(distances.cpu().double(), ring_m, num_rings)
        labels = labels.cpu().double()
        total = torch.bincount(ring, minlength=num_rings).double()
        occupied = torch.bincount(ring, weights=labels, minlength=num_rings)
        overall = labels.mean().item()
        rates = torch.where(total > 0, occupied / total.clamp(min=1), torch.full_like(total, overall))
        return cls(ring_m, rates)

    @staticmethod
    def _ring(distances: torch.Tensor, ring_m: float, num_rings: int) -> torch.Tensor:
        return torch.div(distances, ring_m, rounding_mode="floor").long().clamp(0, num_rings - 1)

    def __call__(self, distances: torch.Tensor) -> torch.Tensor:
        """(Q,) metres -> (Q,) float64 occupancy rate of each query's ring (on the distances' device)."""
        ring = self._ring(distances.double(), self.ring_m, len(self.rates))
        return self.rates.to(distances.device)[ring]

    def to_dict(self) -> dict:
        return {"ring_m": self.ring_m, "rates": [round(v, 6) for v in self.rates.tolist()]}


def neighbour_fraction(query: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(Q, 4) query voxels, (V, 4) visible voxels (batch, z, y, x) -> (Q,) share of the 26 neighbours visible."""
    ones = torch.ones(len(visible), 1, device=query.device)
    return neighbour_mean(query, visible, ones)[1].float() / 26.0


def voxel_point_offsets(xyz: torch.Tensor, point_to_voxel: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Mean of each voxel's points minus its center: xyz (N, 3), point_to_voxel (N,) (-1 = outside),
    centers (V, 3) -> (V, 3) metres (0 for a voxel without points)."""
    kept = point_to_voxel >= 0
    means = segment_reduce(xyz[kept], point_to_voxel[kept], len(centers), "mean")
    counts = torch.bincount(point_to_voxel[kept], minlength=len(centers))
    return torch.where(counts.unsqueeze(1) > 0, means - centers, torch.zeros_like(centers))


def neighbour_copy_points(hidden_coords: torch.Tensor, hidden_centers: torch.Tensor, visible_coords: torch.Tensor,
                          visible_offsets: torch.Tensor) -> torch.Tensor:
    """One point per hidden voxel (H, 3): its center plus the mean point offset (V, 3) of its visible
    26-neighbours, i.e. the neighbours' points copied into it; the center itself when no neighbour is visible."""
    offset, _ = neighbour_mean(hidden_coords, visible_coords, visible_offsets)
    return hidden_centers + offset
