"""What the LiDAR objectives reconstruct: query voxels (hidden occupied + sampled empty) and their targets."""
from __future__ import annotations

import torch

from pcmae.ops.neighbours import neighbour_mean  # noqa: F401  (moved to pcmae.ops; old import path kept)


def voxel_keys(coords: torch.Tensor, grid_size) -> torch.Tensor:
    """(V, 4) int (batch, z, y, x) -> (V,) int64 unique key; grid_size = (X, Y, Z)."""
    gx, gy, gz = (int(v) for v in grid_size)
    c = coords.long()
    return ((c[:, 0] * gz + c[:, 1]) * gy + c[:, 2]) * gx + c[:, 3]


def is_occupied(query: torch.Tensor, occupied: torch.Tensor, grid_size) -> torch.Tensor:
    """(Q, 4) coords -> (Q,) bool, True where the voxel is among ``occupied`` (V, 4)."""
    return torch.isin(voxel_keys(query, grid_size), voxel_keys(occupied, grid_size))


def inside_grid(coords: torch.Tensor, grid_size) -> torch.Tensor:
    gx, gy, gz = (int(v) for v in grid_size)
    z, y, x = coords[:, 1], coords[:, 2], coords[:, 3]
    return (x >= 0) & (x < gx) & (y >= 0) & (y < gy) & (z >= 0) & (z < gz)


def sample_empty_voxels(masked_coords: torch.Tensor, masked_centers: torch.Tensor, occupied: torch.Tensor,
                        origins: torch.Tensor, voxel_size: torch.Tensor, pc_range: torch.Tensor, grid_size,
                        num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Up to ``num`` distinct empty voxels (Q, 4) where the hidden geometry is: half free space on the rays
    from each sample's sensor to hidden voxels (the LiDAR saw through it), half next to hidden voxels.

    Occupied voxels (visible or hidden) and voxels outside the grid are dropped, so Q <= num.
    """
    if num <= 0 or masked_coords.shape[0] == 0:
        return masked_coords.new_zeros((0, 4))
    dev = masked_coords.device
    pick = torch.randint(0, masked_coords.shape[0], (num,), generator=generator, device=dev)
    batch = masked_coords[pick, 0].long()
    # free space: a point part-way along the ray sensor -> hidden voxel center
    t = torch.rand(num // 2, 1, generator=generator, device=dev) * 0.75 + 0.2
    origin = origins[batch[: num // 2]]
    ray_points = origin + t * (masked_centers[pick[: num // 2]] - origin)
    ray_xyz = torch.floor((ray_points - pc_range[:3]) / voxel_size).long()
    ray = torch.cat([batch[: num // 2, None], ray_xyz.flip(-1)], dim=1)  # (b, z, y, x)
    # near surface: a random neighbour of a hidden voxel
    offsets = torch.randint(-1, 2, (num - num // 2, 3), generator=generator, device=dev)
    near = masked_coords[pick[num // 2:]].long().clone()
    near[:, 1:] += offsets
    query = torch.cat([ray, near])
    query = query[inside_grid(query, grid_size)]
    query = query[~is_occupied(query, occupied, grid_size)]
    keys, first = unique_first(voxel_keys(query, grid_size))
    return query[first].int()


def unique_first(keys: torch.Tensor):
    """Sorted unique keys and, for each, the index of one occurrence."""
    uniq, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((len(uniq),), len(keys), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(keys), device=keys.device), reduce="amin")
    return uniq, first


def padded_voxel_points(xyz: torch.Tensor, point_to_voxel: torch.Tensor, voxel_ids: torch.Tensor,
                        num_voxels: int, cap: int):
    """Points of the voxels ``voxel_ids`` (M,), padded: (M, cap, 3) and a (M, cap) bool validity mask.

    xyz: (N, 3) per point; point_to_voxel: (N,) voxel index or -1. Points beyond ``cap`` are dropped.
    """
    row_of_voxel = torch.full((num_voxels + 1,), -1, dtype=torch.long, device=xyz.device)
    row_of_voxel[voxel_ids] = torch.arange(len(voxel_ids), device=xyz.device)
    row = row_of_voxel[point_to_voxel.clamp(min=-1)]  # -1 voxel -> last slot (-1)
    keep = (point_to_voxel >= 0) & (row >= 0)
    row, pts = row[keep], xyz[keep]
    order = torch.argsort(row, stable=True)
    row, pts = row[order], pts[order]
    counts = torch.bincount(row, minlength=len(voxel_ids))
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(row), device=xyz.device) - start[row]
    ok = slot < cap
    out = xyz.new_zeros(len(voxel_ids), cap, 3)
    valid = torch.zeros(len(voxel_ids), cap, dtype=torch.bool, device=xyz.device)
    out[row[ok], slot[ok]] = pts[ok]
    valid[row[ok], slot[ok]] = True
    return out, valid
