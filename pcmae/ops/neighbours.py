"""Voxel neighbourhoods on sparse grids: the value at each query voxel, and the mean of values over its 26
occupied neighbours."""
from __future__ import annotations

import torch

# the 26 (dz, dy, dx) offsets of a voxel's neighbours
NEIGHBOUR_OFFSETS = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
NEIGHBOUR_OFFSETS = NEIGHBOUR_OFFSETS[(NEIGHBOUR_OFFSETS != 0).any(1)]


def _voxel_search(query: torch.Tensor, coords: torch.Tensor):
    """One sort of the keys of ``coords`` (V, 4) (batch, z, y, x) -> ``find(offset)``: for each query voxel (Q, 4)
    shifted by ``offset`` (3,) (dz, dy, dx), whether it is among ``coords`` (Q,) bool and its row there (Q,)."""
    q, c = query.long().clone(), coords.long().clone()
    q[:, 1:] += 1  # room for the -1 offsets: a shifted voxel never wraps into the row before
    c[:, 1:] += 1
    extent = torch.maximum(q.max(0).values, c.max(0).values) + 2

    def key(v: torch.Tensor) -> torch.Tensor:
        return ((v[:, 0] * extent[1] + v[:, 1]) * extent[2] + v[:, 2]) * extent[3] + v[:, 3]

    sorted_keys, order = key(c).sort()

    def find(offset: torch.Tensor):
        wanted = key(torch.cat([q[:, :1], q[:, 1:] + offset], dim=1))
        pos = torch.searchsorted(sorted_keys, wanted).clamp(max=len(sorted_keys) - 1)
        return sorted_keys[pos] == wanted, order[pos]

    return find


def value_at(query: torch.Tensor, coords: torch.Tensor, values: torch.Tensor):
    """``values`` (V, C) of the voxel ``coords`` (V, 4, distinct) equal to each query voxel (Q, 4), zeros where
    there is none, and whether there is one (Q,) bool. O((V + Q) log V)."""
    out = values.new_zeros(len(query), values.shape[1])
    if len(coords) == 0 or len(query) == 0:
        return out, torch.zeros(len(query), dtype=torch.bool, device=query.device)
    hit, row = _voxel_search(query, coords)(torch.zeros(3, dtype=torch.long, device=query.device))
    out[hit] = values[row[hit]]
    return out, hit


def neighbour_mean(query: torch.Tensor, coords: torch.Tensor, values: torch.Tensor):
    """Mean of ``values`` (V, C) over those voxels ``coords`` (V, 4) that are among the 26 neighbours of each
    query voxel (Q, 4), and how many they are (Q,). Coordinates are (batch, z, y, x); voxels of another sample
    are no neighbours. One sort of the voxel keys, then 26 binary searches: O((V + Q) log V)."""
    total = values.new_zeros(len(query), values.shape[1])
    count = torch.zeros(len(query), dtype=torch.long, device=query.device)
    if len(coords) == 0 or len(query) == 0:
        return total, count
    find = _voxel_search(query, coords)
    for offset in NEIGHBOUR_OFFSETS.to(query.device):
        hit, row = find(offset)
        total.index_add_(0, torch.nonzero(hit).squeeze(1), values[row[hit]])
        count += hit
    return total / count.clamp(min=1).unsqueeze(1).to(values.dtype), count
