"""T-MAE (Wei et al., ECCV 2024): the past frame, aligned by ego motion, helps rebuild the masked present.

Read top to bottom: both frames are voxel tokens of one grid (``model.tokenizer``; the dataset has already moved
the past frame into the current sensor frame, ``pcmae.data.LidarSequence``) -> the current frame is masked
(``model.masking``), the past frame is not -> the current frame's visible voxels and the whole past frame are
encoded (one shared encoder, or a separate past encoder: ``share_encoder``) -> fusion: the current latent tokens
attend to the past latent tokens that are near them along a Z-order curve over both frames (``fusion``, cost linear
in the tokens), the past tokens carrying an embedding of the time gap dt -> the Voxel-MAE decoder -> the past at
the queries (``past_at_queries``): each decoded query voxel reads the past frame's voxel token at its own voxel
and the mean over its 26 neighbours, then attends to the past voxel tokens near it (``query_fusion``) ->
Voxel-MAE's heads and targets (occupancy of hidden and empty query voxels, points per voxel, Chamfer of their
points; ``pcmae.pretrainers.voxel_mae``). Backbones: the serialized transformer fuses voxel tokens, the sparse-conv
encoder fuses its BEV cells. The current-frame encoder is the detector backbone (``detector_parts``, as Voxel-MAE's).

The past at the queries is pcmae's addition to T-MAE's encoder-side fusion (``past_at_queries: false`` is T-MAE's
design): with the encoder-side fusion alone the hidden voxels learn of the past only through visible neighbours,
and the model scored no better than a single-frame Voxel-MAE of the same size (README, "Does the past help?").
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from pcmae.backbones.positions import FourierPosition, mlp
from pcmae.backbones.serialized_transformer import SerializedCrossTransformer
from pcmae.ops import neighbour_mean, value_at
from pcmae.pretrainers.voxel_mae import VoxelMAE
from pcmae.registry import MODELS, ConfigError, check_kwargs
from pcmae.structures import PointBatch


class TemporalFusion(nn.Module):
    """Current latent tokens (T, D) attend to past latent tokens (P, D) of the same sample; positions of both and
    the time gap (seconds, per past token) are embedded; depth / num_heads / patch_size of the cross blocks."""

    def __init__(self, dim: int, voxel_size, point_cloud_range, depth: int = 2, num_heads: int = 4,
                 patch_size: int = 64, drop_path_rate: float = 0.0):
        super().__init__()
        self.pos_embed = FourierPosition(dim, *FourierPosition.grid_wavelengths(voxel_size, point_cloud_range))
        self.dt_embed = mlp([1, 64, dim])
        self.blocks = SerializedCrossTransformer(dim, depth, num_heads, patch_size, drop_path_rate)

    def forward(self, x, coords, centers, past, past_coords, past_centers, past_dt) -> torch.Tensor:
        """-> (T, D): x plus what the past says about each token."""
        past_pos = self.pos_embed(past_centers) + self.dt_embed(past_dt.unsqueeze(1).to(past))
        return x + self.blocks(x, coords, self.pos_embed(centers), past, past_coords, past_pos)


class TemporalLatent(NamedTuple):
    """What the decoder side needs: the fused current latent and the past frame's voxel tokens (P, ...)."""

    current: object                 # the backbone's latent (tokens (V, D) or a BEV map), fused with the past
    past_voxels: torch.Tensor       # (P, tokenizer width) the past frame's voxel tokens
    past_coords: torch.Tensor       # (P, 4) (batch, z, y, x)
    past_centers: torch.Tensor      # (P, 3) metres
    past_dt: torch.Tensor           # (P,) seconds from the past frame to the current one


@MODELS.register
class TemporalMAE(VoxelMAE):
    """batch {"points": PointBatch, "past_points": PointBatch (aligned), "dt": (B,)} -> {"loss", "occupancy", ...}.

    Every VoxelMAE keyword (grid, tokenizer, backbone, masking, targets), plus share_encoder: one encoder for
    both frames (T-MAE's Siamese encoder) or a separate past encoder starting from a copy of the current one;
    fusion: {depth, num_heads, patch_size, drop_path_rate} of the cross-attention blocks after the encoder;
    past_at_queries: the decoded query voxels read the past voxel tokens (false: T-MAE's own design);
    query_fusion: the cross-attention blocks of that reading (default {depth: 1} with the fusion's heads and patch).
    """

    context_keys = ("past_points", "dt")  # batch keys predict_occupancy needs besides the points
    default_fusion = {"depth": 2, "num_heads": 4, "patch_size": 64}

    def __init__(self, share_encoder: bool = True, fusion: dict | None = None, past_at_queries: bool = True,
                 query_fusion: dict | None = None, **voxel_mae):
        super().__init__(**voxel_mae)
        for key, value in (("share_encoder", share_encoder), ("past_at_queries", past_at_queries)):
            if not isinstance(value, bool):
                raise ConfigError(f"'model.{key}' must be true or false, got {value!r}")
        fusion = {**self.default_fusion, **(fusion or {})}
        query_fusion = {**fusion, "depth": 1, **(query_fusion or {})}
        check_kwargs(TemporalFusion, fusion, "model.fusion")
        check_kwargs(TemporalFusion, query_fusion, "model.query_fusion")
        grid = (self.voxel_size, self.point_cloud_range)
        self.past_encoder = None if share_encoder else self.backbone.encoder_copy()
        self.fusion = TemporalFusion(self.backbone.latent_dim, *grid, **fusion)
        self.past_voxel_proj = self.past_query_context = self.query_fusion = None
        if past_at_queries:
            width = self.backbone.out_dim
            self.past_voxel_proj = nn.Linear(self.tokenizer.embed_dim, width)
            self.past_query_context = nn.Linear(2 * width + 2, width)  # [at the voxel, found, neighbours, count]
            if query_fusion["depth"] > 0:
                self.query_fusion = TemporalFusion(width, *grid, **query_fusion)

    def encode_past(self, past_points: PointBatch):
        """The whole past frame -> its voxel tokens and its latent tokens (T, D), coords (T, 4), centers (T, 3)."""
        tokens = self.tokenizer(past_points)
        encode = self.backbone.encode if self.past_encoder is None else self.past_encoder
        latent = encode(tokens.features, tokens.coords, tokens.centers, tokens.batch_size)
        return tokens, self.backbone.latent_tokens(latent, tokens.coords, tokens.centers)

    def forward_encoder(self, points: PointBatch, past_points: PointBatch, dt: torch.Tensor,
                        generator: torch.Generator | None = None):
        if past_points.batch_size != points.batch_size:
            raise ValueError(f"past_points has {past_points.batch_size} samples, points {points.batch_size}")
        latent, mask, tokens = super().forward_encoder(points, generator)
        past_tokens, (past, past_coords, past_centers) = self.encode_past(past_points)
        visible = ~mask
        x, coords, centers = self.backbone.latent_tokens(latent, tokens.coords[visible], tokens.centers[visible])
        dt = dt.to(past.device)
        fused = self.fusion(x, coords, centers, past, past_coords, past_centers, dt[past_coords[:, 0].long()])
        latent = TemporalLatent(self.backbone.with_tokens(latent, fused, coords), past_tokens.features,
                                past_tokens.coords, past_tokens.centers, dt[past_tokens.coords[:, 0].long()])
        return latent, mask, tokens

    def forward_decoder(self, latent: TemporalLatent, tokens, mask, query_coords, query_centers) -> torch.Tensor:
        """Voxel-MAE's decoder on the fused latent, then each query voxel reads the past voxels at and near it."""
        decoded = super().forward_decoder(latent.current, tokens, mask, query_coords, query_centers)
        if self.past_voxel_proj is None:
            return decoded
        past = self.past_voxel_proj(latent.past_voxels)
        here, found = value_at(query_coords, latent.past_coords, past)
        around, count = neighbour_mean(query_coords, latent.past_coords, past)
        context = torch.cat([here, found.unsqueeze(1).to(here), around, count.unsqueeze(1).to(here) / 26.0], dim=1)
        decoded = decoded + self.past_query_context(context)
        if self.query_fusion is None:
            return decoded
        return self.query_fusion(decoded, query_coords, query_centers, past, latent.past_coords,
                                 latent.past_centers, latent.past_dt)

    def forward(self, batch: dict) -> dict:
        points = batch["points"]
        latent, mask, tokens = self.forward_encoder(points, batch["past_points"], batch["dt"])
        query_coords, query_centers, labels = self.draw_queries(tokens, mask)
        decoded = self.forward_decoder(latent, tokens, mask, query_coords, query_centers)
        return self.forward_loss(decoded, labels, tokens, mask, points)

    @torch.no_grad()
    def predict_occupancy(self, points: PointBatch, generator: torch.Generator | None = None,
                          past_points: PointBatch | None = None, dt: torch.Tensor | None = None) -> dict:
        """VoxelMAE.predict_occupancy with the past frame: the same seed draws the same mask and queries as a
        VoxelMAE of the same grid and masking on the same points (the past frame draws nothing)."""
        if past_points is None or dt is None:
            raise ValueError("TemporalMAE.predict_occupancy needs past_points and dt (a LidarSequence batch)")
        latent, mask, tokens = self.forward_encoder(points, past_points, dt, generator)
        return self.occupancy_outputs(latent, mask, tokens, generator)

    def picture_panels(self, batch: dict, seed: int) -> list[dict]:
        """VoxelMAE's panels plus the aligned past frame of each sample."""
        past = batch["past_points"]
        return [{"past": past.xyz[past.batch_idx == b, :2].float().cpu().numpy(), **panel}
                for b, panel in enumerate(super().picture_panels(batch, seed))]
