"""Encoder + decoder pairs of the LiDAR masked autoencoders, registry entries of ``model.backbone: {type: ...}``.

Every entry is built with the model's ``in_dim`` (channels of the voxel tokens), ``voxel_size`` and
``point_cloud_range`` plus its own config keys, and offers:
  encode(features (V, in_dim), coords (V, 4) int (batch, z, y, x), centers (V, 3) m, batch_size) -> latent;
  decode(latent, visible_coords, visible_centers, query_coords (Q, 4), query_centers (Q, 3), batch_size)
      -> (Q, out_dim) features of the query voxels;
  detector_encoder() -> the module a detector reuses (its state dict is that of pcmae's mmdet3d encoder);
  out_dim: the width of the decoded features.
"""
from __future__ import annotations

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
        return nn.ModuleDict({"input_proj": self.input_proj, "pos_embed": self.pos_embed, "encoder": self.encoder})

    def encode(self, features, coords, centers, batch_size):
        """Visible tokens (V, C) -> latents (V, D)."""
        return self.encoder(self.input_proj(features), coords, self.pos_embed(centers))

    def decode(self, latent, visible_coords, visible_centers, query_coords, query_centers, batch_size):
        """-> (Q, decoder_dim) features of the query voxels."""
        visible = self.encoder_to_decoder(latent)
        context, count = neighbour_mean(query_coords, visible_coords, visible)  # (Q, D), (Q,)
        queries = self.mask_token + self.query_context(torch.cat([context, count.unsqueeze(1) / 26.0], dim=1))
        x = torch.cat([visible, queries])
        coords = torch.cat([visible_coords, query_coords])
        pos = self.decoder_pos_embed(torch.cat([visible_centers, query_centers]))
        return self.decoder(x, coords, pos)[len(latent):]


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

    def decode(self, bev, visible_coords, visible_centers, query_coords, query_centers, batch_size):
        lo, hi = self.pc_range[:2], self.pc_range[3:5]
        grid = ((query_centers[:, :2] - lo) / (hi - lo) * 2 - 1)  # x, y in [-1, 1]
        sampled = query_centers.new_zeros(len(query_coords), bev.shape[1])
        for b in range(batch_size):  # bilinear read of each sample's BEV map at its queries' (x, y)
            sel = query_coords[:, 0] == b
            sampled[sel] = F.grid_sample(bev[b:b + 1], grid[sel].view(1, -1, 1, 2), align_corners=False)[0, :, :, 0].T
        x = self.bev_proj(sampled) + self.decoder_pos_embed(query_centers)
        return self.decoder(x)
