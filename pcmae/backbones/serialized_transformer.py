"""Transformers over voxel tokens whose cost is linear in the number of tokens.

Tokens are sorted along a space-filling curve (Z-order of the voxel grid; odd blocks use the curve with
x and y swapped, so patch borders move and information crosses them), cut into fixed-size patches that
never straddle two samples, and attend only inside their patch: memory and time O(T * patch_size).
``SerializedCrossTransformer`` does the same for attention from one token set to another (T-MAE's fusion): both
sets are sorted together, and each patch's queries attend to the context tokens of the same patch.
"""
from __future__ import annotations

import torch
from torch import nn

from pcmae.backbones.transformer import Block, CrossBlock


def spread_bits(v: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """Put bit i of v at bit 3i (v: int64 < 2**bits)."""
    out = torch.zeros_like(v)
    for i in range(bits):
        out |= ((v >> i) & 1) << (3 * i)
    return out


def z_order_key(coords: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """(T, 4) int (batch, z, y, x) -> (T,) int64 key: batch in the high bits, Morton code of x, y, z below."""
    c = coords.long()
    if c.numel() and int(c[:, 1:].max()) >= 1 << 16:
        raise ValueError("voxel grid index exceeds 65535; use larger voxels")
    x, y = (c[:, 2], c[:, 3]) if transpose else (c[:, 3], c[:, 2])
    morton = spread_bits(x) | (spread_bits(y) << 1) | (spread_bits(c[:, 1]) << 2)
    return (c[:, 0] << 48) | morton


class PatchLayout:
    """Where each token sits in a (num_patches, patch_size) layout for one serialization order."""

    def __init__(self, coords: torch.Tensor, patch_size: int, transpose: bool):
        order = torch.argsort(z_order_key(coords, transpose))
        batch = coords[order, 0].long()
        counts = torch.bincount(batch)
        padded = (counts + patch_size - 1) // patch_size * patch_size
        start = torch.cumsum(counts, 0) - counts
        padded_start = torch.cumsum(padded, 0) - padded
        slot_sorted = torch.arange(len(order), device=coords.device) - start[batch] + padded_start[batch]
        self.slot = torch.empty_like(slot_sorted)
        self.slot[order] = slot_sorted  # token i -> slot
        self.num_slots = int(padded.sum())
        self.patch_size = patch_size
        valid = torch.zeros(self.num_slots, dtype=torch.bool, device=coords.device)
        valid[self.slot] = True
        valid = valid.view(-1, patch_size)
        self.attn_mask = valid[:, None, None, :]  # (P, 1, 1, S): keys that exist

    def to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(T, C) -> (num_patches, patch_size, C), zeros where there is no token."""
        out = x.new_zeros(self.num_slots, x.shape[-1])
        out[self.slot] = x
        return out.view(-1, self.patch_size, x.shape[-1])

    def from_patches(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])[self.slot]


class SerializedPatchTransformer(nn.Module):
    """Pre-norm blocks over voxel tokens with patch attention along alternating Z-order curves.

    forward(x (T, C), coords (T, 4) int (batch, z, y, x), pos (T, C)) -> (T, C); pos is added before
    every block, as in Point-MAE.
    """

    def __init__(self, dim: int = 256, depth: int = 6, num_heads: int = 8, patch_size: int = 64,
                 drop_path_rate: float = 0.0, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size
        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, coords: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return self.norm(x)
        layouts = [PatchLayout(coords, self.patch_size, transpose) for transpose in (False, True)]
        for i, block in enumerate(self.blocks):
            layout = layouts[i % 2]
            x = layout.from_patches(block(layout.to_patches(x + pos), layout.attn_mask))
        return self.norm(x)


class SerializedCrossTransformer(nn.Module):
    """Cross-attention blocks from query tokens to context tokens, linear in their number: queries and context
    are serialized together along alternating Z-order curves and cut into patches of ``patch_size`` tokens; a
    query attends to the context tokens of its patch and to a learned "no context" token (a patch may hold no
    context: nothing there in the other frame).

    forward(x (Tq, C), coords (Tq, 4), pos (Tq, C), context (Tk, C), context_coords (Tk, 4), context_pos (Tk, C))
    -> (Tq, C); coords are (batch, z, y, x) of one grid, positions are added before every block.
    """

    def __init__(self, dim: int = 256, depth: int = 1, num_heads: int = 8, patch_size: int = 64,
                 drop_path_rate: float = 0.0, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size
        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(CrossBlock(dim, num_heads, mlp_ratio, r) for r in rates)
        self.no_context = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.no_context, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, coords, pos, context, context_coords, context_pos) -> torch.Tensor:
        if x.shape[0] == 0:
            return self.norm(x)
        num_queries = x.shape[0]
        is_context = torch.cat([torch.zeros(num_queries, dtype=torch.bool, device=x.device),
                                torch.ones(len(context), dtype=torch.bool, device=x.device)])
        layouts = [PatchLayout(torch.cat([coords, context_coords]), self.patch_size, t) for t in (False, True)]
        context_masks = [layout.attn_mask & layout.to_patches(is_context[:, None].float()).bool().view(
            -1, 1, 1, self.patch_size) for layout in layouts]
        context = context + context_pos
        for i, block in enumerate(self.blocks):
            layout, mask = layouts[i % 2], context_masks[i % 2]
            queries = layout.to_patches(torch.cat([x + pos, x.new_zeros(len(context), x.shape[1])]))
            keys = layout.to_patches(torch.cat([context.new_zeros(num_queries, x.shape[1]), context]))
            keys = torch.cat([self.no_context.expand(len(keys), 1, -1), keys], dim=1)
            mask = torch.cat([mask.new_ones(len(keys), 1, 1, 1), mask], dim=-1)
            x = layout.from_patches(block(queries, keys, mask))[:num_queries]
        return self.norm(x)
