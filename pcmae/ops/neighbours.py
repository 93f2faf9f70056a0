"""Voxel neighbourhoods on sparse grids: the value at each query voxel, and the mean of values over its 26
occupied neighbours."""
from __future__ import annotations

import torch

# the 26 (dz, dy, dx) offsets of a voxel's neighbours
NEIGHBOUR_OFFSETS = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
NEIGHBOUR_OFFSETS = NEIGHBOUR_OFFSETS[(NEIGHBOUR_OFFSETS != 0).any(1)]


def _sortable_keys(query: torch.Tensor, coords: torch.Tensor):
    """Integer keys of (batch, z, y, x) voxels shifted by +1 (room for -1 offsets: a shifted voxel never wraps into
    the row before): key(voxel) function, query voxels (Q, 4) and coords (V, 4) shifted."""
    q, c = query.long().clone(), coords.long().clone()
    q[:, 1:] += 1
    c[:, 1:] += 1
    extent = torch.maximum(q.max(0).values, c.max(0).values) + 2

    def key(v: torch.Tensor) -> torch.Tensor:
        return ((v[:, 0] * extent[1] + v[:, 1]) * extent[2] + v[:, 2]) * extent[3] + v[:, 3]

    return key, q, c


def value_at(query: torch.Tensor, coords: torch.Tensor, values: torch.Tensor):
    """``values`` (V, C) of the voxel ``coords`` (V, 4, distinct) equal to each query voxel (Q, 4), zeros where
    there is none, and whether there is one (Q,) bool. O((V + Q) log V)."""
    out = values.new_zeros(len(query), values.shape[1])
    hit = torch.zeros(len(query), dtype=torch.bool, device=query.device)
    if len(coords) == 0 or len(query) == 0:
        return out, hit
    key, q, c = _sortable_keys(query, coords)
    sorted_keys, order = key(c).sort()
    wanted = key(q)
    pos = torch.searchsorted(sorted_keys, wanted).clamp(max=len(sorted_keys) - 1)
    hit = sorted_keys[pos] == wanted
    out[hit] = values[order[pos[hit]]]
    return out, hit


def neighbour_mean(query: torch.Tensor, coords: torch.Tensor, values: torch.Tensor):
    """Mean of ``values`` (V, C) over those voxels ``coords`` (V, 4) that are among the 26 neighbours of each
    query voxel (Q, 4), and how many they are (Q,). Coordinates are (batch, z, y, x); voxels of another sample
    are no neighbours. One sort of the voxel keys, then 26 binary searches: O((V + Q) log V)."""
    total = values.new_zeros(len(query), values.shape[1])
    count = torch.zeros(len(query), dtype=torch.long, device=query.device)
    if len(coords) == 0 or len(query) == 0:
        return total, count
    key, q, c = _sortable_keys(query, coords)
    sorted_keys, order = key(c).sort()
    for offset in NEIGHBOUR_OFFSETS.to(query.device):
        shifted = key(torch.cat([q[:, :1], q[:, 1:] + offset], dim=1))
        pos = torch.searchsorted(sorted_keys, shifted).clamp(max=len(sorted_keys) - 1)
        hit = sorted_keys[pos] == shifted
        total.index_add_(0, torch.nonzero(hit).squeeze(1), values[order[pos[hit]]])
        count += hit
    return total / count.clamp(min=1).unsqueeze(1).to(values.dtype), count
