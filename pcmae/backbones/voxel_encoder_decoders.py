"""Encoder + decoder pairs of the LiDAR masked autoencoders, registry entries of ``model.backbone: {type: ...}``.

Every entry is built with the model's ``in_dim`` (channels of the voxel tokens), ``voxel_size`` and
``point_cloud_range`` plus its own config keys, and offers:
  encode(features (V, in_dim), coords (V, 4) int (batch, z, y, x), centers (V, 3) m, batch_size) -> latent;
  decode(latent, visible_coords, visible_centers, query_coords (Q, 4), query_centers (Q, 3), batch_size)
      -> (Q, out_dim) features of the query voxels;
  detector_encoder() -> the module a detector reuses (its state dict is that of pcmae's mmdet3d encoder);
  out_dim: the width of the decoded features.
For temporal fusion (TemporalMAE) each also offers:
  latent_dim: the width of the latent tokens;
  latent_tokens(latent, coords, centers) -> (x (T, latent_dim), coords (T, 4), centers (T, 3)): the latent as tokens;
  with_tokens(latent, x, coords) -> latent with those tokens replaced by x;
  encoder_copy() -> a separate encoder (a copy of the current weights), called like ``encode``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pcmae.backbones.positions import FourierPosition, mlp
from pcmae.backbones.serialized_transformer import SerializedPatchTransformer
from pcmae.ops import grid_size_of, neighbour_mean
from pcmae.registry import BACKBONES, ConfigError, check_kwargs


@BACKBONES.register(name="transformer")
class TransformerVoxelEncoderDecoder(nn.Module):
    """Patch-attention transformer on visible tokens and an MAE decoder over [visible latents, mask tokens at the
    query voxels] (``embed_dim`` / ``depth`` / ``num_heads`` for the encoder, ``decoder_*`` for the decoder).

    Each query's mask token also gets the mean latent of its visible 26-neighbours and their count: patch
    attention alone (a z-order patch may cut a voxel off from its neighbours) learned occupancy no better than
    "a neighbour is visible" on real KITTI sweeps; with the local context it starts from there."""

    def __init__(self, in_dim: int, voxel_size, point_cloud_range, embed_dim: int = 128, depth: int = 4,
                 num_heads: int = 4, patch_size: int = 64, drop_path_rate: float = 0.0, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_num_heads: int = 4):
        super().__init__()
        wavelengths = FourierPosition.grid_wavelengths(voxel_size, point_cloud_range)
        self.out_dim = decoder_dim
        self.input_proj = nn.Linear(in_dim, embed_dim)
        self.pos_embed = FourierPosition(embed_dim, *wavelengths)
        self.encoder = SerializedPatchTransformer(embed_dim, depth, num_heads, patch_size, drop_path_rate)
        self.encoder_to_decoder = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim))
        self.query_context = nn.Linear(decoder_dim + 1, decoder_dim)
        self.decoder_pos_embed = FourierPosition(decoder_dim, *wavelengths)
        self.decoder = SerializedPatchTransformer(decoder_dim, decoder_depth, decoder_num_heads, patch_size)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def detector_encoder(self) -> nn.Module:
        """The encoder without the decoder: input projection, positions and transformer (shared modules)."""
        return VoxelTokenEncoder(self.input_proj, self.pos_embed, self.encoder)

    def encode(self, features, coords, centers, batch_size):
        """Visible tokens (V, C) -> latents (V, D)."""
        return self.encoder(self.input_proj(features), coords, self.pos_embed(centers))

    @property
    def latent_dim(self) -> int:
        return self.input_proj.out_features

    def latent_tokens(self, latent, coords, centers):
        """The latents are already tokens: (V, D), (V, 4), (V, 3)."""
        return latent, coords, centers

    def with_tokens(self, latent, x, coords):
        return x

    def encoder_copy(self) -> nn.Module:
        return copy.deepcopy(self.detector_encoder())

    def decode(self, latent, visible_coords, visible_centers, query_coords, query_centers, batch_size):
        """-> (Q, decoder_dim) features of the query voxels."""
        visible = self.encoder_to_decoder(latent)
        context, count = neighbour_mean(query_coords, visible_coords, visible)  # (Q, D), (Q,)
        queries = self.mask_token + self.query_context(torch.cat([context, count.unsqueeze(1) / 26.0], dim=1))
        x = torch.cat([visible, queries])
        coords = torch.cat([visible_coords, query_coords])
        pos = self.decoder_pos_embed(torch.cat([visible_centers, query_centers]))
        return self.decoder(x, coords, pos)[len(latent):]


class VoxelTokenEncoder(nn.Module):
    """Input projection + Fourier positions + serialized transformer: (V, C) voxel tokens -> (V, D) latents."""

    def __init__(self, input_proj: nn.Module, pos_embed: nn.Module, encoder: nn.Module):
        super().__init__()
        self.input_proj, self.pos_embed, self.encoder = input_proj, pos_embed, encoder

    def forward(self, features, coords, centers, batch_size):
        return self.encoder(self.input_proj(features), coords, self.pos_embed(centers))


class SparseBEVEncoder(nn.Module):
    """A SparseEncoder called like ``encode``: (V, C) voxel features -> (B, C', H, W) BEV map."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, features, coords, centers, batch_size):
        return self.encoder(features, coords.int(), batch_size)


SET_BY_MODEL = ("in_channels", "sparse_shape", "return_middle_feats")


@BACKBONES.register(name="sparse_conv")
class SparseConvVoxelEncoderDecoder(nn.Module):
    """mmdet3d-compatible SparseEncoder (spconv; its keyword arguments in ``sparse_encoder``) on visible voxels;
    each query reads the BEV map at its (x, y), adds its Fourier position and goes through a 2-layer MLP of width
    ``decoder_dim``. The grid's z must suit the encoder (40 voxels for SECOND's default)."""

    def __init__(self, in_dim: int, voxel_size, point_cloud_range, decoder_dim: int = 128,
                 sparse_encoder: dict | None = None):
        super().__init__()
        from pcmae.backbones.sparse_encoder import SparseEncoder  # needs the optional spconv

        for key in SET_BY_MODEL:
            if key in (sparse_encoder or {}):
                raise ConfigError(f"'model.backbone.sparse_encoder.{key}' is set by the model, not in the config")
        gx, gy, gz = grid_size_of(voxel_size, point_cloud_range)
        cfg = {"in_channels": in_dim, "sparse_shape": [gz + 1, gy, gx], **(sparse_encoder or {})}
        check_kwargs(SparseEncoder, cfg, "model.backbone.sparse_encoder")
        self.out_dim = decoder_dim
        self.encoder = SparseEncoder(**cfg)
        self.register_buffer("pc_range", torch.as_tensor(point_cloud_range, dtype=torch.float32), persistent=False)
        self.bev_proj = nn.Linear(self.encoder.bev_channels, decoder_dim)
        self.decoder_pos_embed = FourierPosition(decoder_dim, *FourierPosition.grid_wavelengths(voxel_size,
                                                                                                point_cloud_range))
        self.decoder = mlp([decoder_dim, decoder_dim, decoder_dim])

    def detector_encoder(self) -> nn.Module:
        return self.encoder

    def encode(self, features, coords, centers, batch_size):
        return self.encoder(features, coords.int(), batch_size)  # (B, C, H, W)

    @property
    def latent_dim(self) -> int:
        return self.encoder.bev_channels

    def latent_tokens(self, bev, coords, centers):
        """The BEV cells with features (B, C, H, W) -> (T, C), coords (T, 4) (batch, 0, row, column) and centers
        (T, 3) (x, y at the cell center, z mid-range)."""
        b, y, x = torch.nonzero(bev.abs().amax(dim=1) > 0, as_tuple=True)
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        cell = (hi[:2] - lo[:2]) / torch.tensor([bev.shape[3], bev.shape[2]], device=bev.device)
        xy = lo[:2] + (torch.stack([x, y], dim=1).to(cell) + 0.5) * cell
        token_centers = torch.cat([xy, ((lo[2] + hi[2]) / 2).expand(len(xy), 1)], dim=1)
        token_coords = torch.stack([b, torch.zeros_like(b), y, x], dim=1)
        return bev.permute(0, 2, 3, 1)[b, y, x], token_coords, token_centers

    def with_tokens(self, bev, x, coords):
        b, y, x_index = coords[:, 0], coords[:, 2], coords[:, 3]
        return bev.permute(0, 2, 3, 1).index_put((b, y, x_index), x.to(bev.dtype)).permute(0, 3, 1, 2)

    def encoder_copy(self) -> nn.Module:
        return SparseBEVEncoder(copy.deepcopy(self.encoder))

    def decode(self, bev, visible_coords, visible_centers, query_coords, query_centers, batch_size):
        lo, hi = self.pc_range[:2], self.pc_range[3:5]
        grid = ((query_centers[:, :2] - lo) / (hi - lo) * 2 - 1)  # x, y in [-1, 1]
        sampled = query_centers.new_zeros(len(query_coords), bev.shape[1])
        for b in range(batch_size):  # bilinear read of each sample's BEV map at its queries' (x, y)
            sel = query_coords[:, 0] == b
            sampled[sel] = F.grid_sample(bev[b:b + 1], grid[sel].view(1, -1, 1, 2), align_corners=False)[0, :, :, 0].T
        x = self.bev_proj(sampled) + self.decoder_pos_embed(query_centers)
        return self.decoder(x)
