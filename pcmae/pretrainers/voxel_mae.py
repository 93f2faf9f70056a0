"""Voxel-MAE (Hess et al., WACV-W 2023): hide non-empty voxels of a LiDAR sweep, rebuild what was there.

Read top to bottom: voxel tokens (linear time, no padding) -> mask (in metres around each sensor) ->
encoder on visible voxels (a patch-attention transformer, or spconv's SparseEncoder) -> decoder on query
voxels = hidden occupied voxels + sampled empty ones -> three targets, weighted in the config:
  occupancy   BCE: is a query voxel occupied (hidden voxels) or empty (sampled free space)?
  num_points  smooth-L1 on log(1 + points in each hidden voxel);
  chamfer     Chamfer-L2 between K predicted points and the voxel's real points (voxel units).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pcmae.backbones.serialized_transformer import SerializedPatchTransformer
from pcmae.masking import radial_mask, random_token_mask, range_aware_mask
from pcmae.ops import chamfer_distance, neighbour_mean
from pcmae.pretrainers.voxel_targets import padded_voxel_points, sample_empty_voxels
from pcmae.registry import MODELS, check_kwargs
from pcmae.structures import PointBatch
from pcmae.tokenizers.voxel_tokenizer import VoxelTokenizer

MASKINGS = {
    "random": lambda xyz, batch_idx, batch_size, generator, ratio=0.7: random_token_mask(batch_idx, ratio, generator),
    "range_aware": lambda xyz, batch_idx, batch_size, generator, range_bins=(20.0, 40.0, float("inf")),
    ratios=(0.5, 0.7, 0.9): range_aware_mask(xyz, batch_idx, range_bins, ratios, generator=generator),
    "radial": lambda xyz, batch_idx, batch_size, generator, ratio=0.8, sector_deg=1.0: radial_mask(
        xyz, batch_idx, batch_size, ratio, sector_deg, generator=generator)[0],
}
LOSSES = ("occupancy", "num_points", "chamfer")


def mlp(dims) -> nn.Sequential:
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers[:-1])


class FourierPosition(nn.Module):
    """Voxel centers in metres (N, 3) -> (N, dim): sin / cos of each coordinate at ``num_bands`` wavelengths from
    two voxels to twice the range, then an MLP. A 1-voxel offset is then as plain to the network as a 50 m one
    (an MLP of ``xyz / range`` sees neighbouring voxels 0.005 apart and cannot tell them from the same voxel)."""

    def __init__(self, dim: int, min_wavelength: float, max_wavelength: float, num_bands: int = 12):
        super().__init__()
        wavelengths = torch.logspace(math.log10(min_wavelength), math.log10(max_wavelength), num_bands)
        self.register_buffer("frequencies", 2 * math.pi / wavelengths, persistent=False)
        self.mlp = mlp([6 * num_bands, 128, dim])

    @staticmethod
    def grid_wavelengths(voxel_size, point_cloud_range) -> tuple[float, float]:
        """(min, max) wavelength for a voxel grid: two voxels, and twice the largest extent of the range."""
        extent = max(hi - lo for lo, hi in zip(point_cloud_range[:3], point_cloud_range[3:]))
        return 2 * min(voxel_size), 2 * extent

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        angles = (xyz.unsqueeze(-1) * self.frequencies).flatten(1)  # (N, 3 * bands)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class TransformerVoxelEncoderDecoder(nn.Module):
    """Encoder on visible tokens and an MAE decoder over [visible latents, mask tokens at query voxels].

    Each query's mask token also gets the mean latent of its visible 26-neighbours and their count: patch
    attention alone (a z-order patch may cut a voxel off from its neighbours) learned occupancy no better than
    "a neighbour is visible" on real KITTI sweeps; with the local context it starts from there."""

    def __init__(self, in_dim, embed_dim, depth, num_heads, patch_size, drop_path_rate, decoder_dim,
                 decoder_depth, decoder_num_heads, wavelengths):
        super().__init__()
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


class SparseConvVoxelEncoderDecoder(nn.Module):
    """mmdet3d-compatible SparseEncoder on visible voxels; queries read the BEV map at their (x, y)."""

    def __init__(self, in_dim, grid_size, pc_range, decoder_dim, sparse_encoder: dict | None, wavelengths):
        super().__init__()
        from pcmae.backbones.sparse_encoder import SparseEncoder  # needs the optional spconv

        gx, gy, gz = grid_size
        cfg = {"in_channels": in_dim, "sparse_shape": [gz + 1, gy, gx], **(sparse_encoder or {})}
        check_kwargs(SparseEncoder, cfg, "model.sparse_encoder")
        self.encoder = SparseEncoder(**cfg)
        self.register_buffer("pc_range", torch.as_tensor(pc_range, dtype=torch.float32), persistent=False)
        self.bev_proj = nn.Linear(self.encoder.bev_channels, decoder_dim)
        self.decoder_pos_embed = FourierPosition(decoder_dim, *wavelengths)
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


@MODELS.register
class VoxelMAE(nn.Module):
    """batch {"points": PointBatch (N, point_channels)} -> {"loss", "occupancy", "num_points", "chamfer", ...}.

    voxel_size / point_cloud_range: the grid, metres; backbone: "transformer" (embed_dim, depth, num_heads,
    patch_size, decoder_*) or "sparse_conv" (mmdet3d SparseEncoder, kwargs in ``sparse_encoder``; grid z must be
    40 voxels for SECOND's default); tokenizer: "pointnet" or "mean"; masking: {type: random | range_aware |
    radial, ...}; empty_per_masked: sampled empty query voxels per hidden voxel; loss_weights: per target.
    """

    def __init__(self, point_channels: int = 4, voxel_size=(0.2, 0.2, 0.2),
                 point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), max_points_per_voxel: int = 32,
                 backbone: str = "transformer", tokenizer: str = "pointnet", embed_dim: int = 128, depth: int = 4,
                 num_heads: int = 4, patch_size: int = 64, drop_path_rate: float = 0.0,
                 sparse_encoder: dict | None = None, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_num_heads: int = 4, masking: dict | None = None, num_pred_points: int = 16,
                 empty_per_masked: float = 1.0, loss_weights: dict | None = None):
        super().__init__()
        self.masking = dict(masking or {"type": "random", "ratio": 0.7})
        if self.masking.get("type") not in MASKINGS:
            raise ValueError(f"model.masking.type must be one of {sorted(MASKINGS)}, got {self.masking.get('type')!r}")
        check_kwargs(MASKINGS[self.masking["type"]], {k: v for k, v in self.masking.items() if k != "type"},
                     "model.masking")
        self.loss_weights = {"occupancy": 1.0, "num_points": 1.0, "chamfer": 1.0, **(loss_weights or {})}
        for key in self.loss_weights:
            if key not in LOSSES:
                raise ValueError(f"unknown loss 'model.loss_weights.{key}'; valid: {', '.join(LOSSES)}")
        self.max_points_per_voxel = max_points_per_voxel
        self.num_pred_points = num_pred_points
        self.empty_per_masked = empty_per_masked
        # --- tokenizer -----------------------------------------------------------------------
        self.tokenizer = VoxelTokenizer(point_channels, embed_dim, voxel_size, point_cloud_range,
                                        max_points_per_voxel, mode=tokenizer)
        wavelengths = FourierPosition.grid_wavelengths(voxel_size, point_cloud_range)
        # --- encoder + decoder -------------------------------------------------------------------
        if backbone == "transformer":
            self.backbone = TransformerVoxelEncoderDecoder(
                self.tokenizer.embed_dim, embed_dim, depth, num_heads, patch_size, drop_path_rate, decoder_dim,
                decoder_depth, decoder_num_heads, wavelengths)
        elif backbone == "sparse_conv":
            self.backbone = SparseConvVoxelEncoderDecoder(self.tokenizer.embed_dim, self.grid_size(),
                                                          point_cloud_range, decoder_dim, sparse_encoder, wavelengths)
        else:
            raise ValueError(f"model.backbone must be 'transformer' or 'sparse_conv', got {backbone!r}")
        # --- heads -----------------------------------------------------------------------------
        self.occupancy_head = nn.Linear(decoder_dim, 1)
        self.num_points_head = nn.Linear(decoder_dim, 1)
        self.points_head = nn.Linear(decoder_dim, 3 * num_pred_points)

    def detector_parts(self) -> dict:
        """What a detector reuses, by mmdet3d slot: {"voxel_encoder": the PointNet tokenizer (absent for the
        parameter-free mean tokenizer), "middle_encoder": the encoder on visible voxels}. Each value is a module
        whose state dict is exactly that of pcmae's mmdet3d encoder for the slot (pcmae.integrations.mmdet3d)."""
        parts = {"middle_encoder": self.backbone.detector_encoder()}
        if self.tokenizer.mode == "pointnet":
            parts["voxel_encoder"] = self.tokenizer
        return parts

    def grid_size(self):
        """(X, Y, Z) voxels in the range."""
        extent = self.tokenizer.pc_range[3:] - self.tokenizer.pc_range[:3]
        return [int(v) for v in torch.round(extent / self.tokenizer.voxel_size).tolist()]

    def draw_mask(self, tokens) -> torch.Tensor:
        """(V,) bool, True = hidden; drawn per sample around each sample's sensor (the frame origin)."""
        kwargs = {k: v for k, v in self.masking.items() if k != "type"}
        return MASKINGS[self.masking["type"]](tokens.centers, tokens.batch_idx, tokens.batch_size, None, **kwargs)

    def draw_queries(self, tokens, mask):
        """Hidden voxels first, then sampled empty voxels: coords (Q, 4), centers (Q, 3), labels (Q,)."""
        hidden_coords, hidden_centers = tokens.coords[mask], tokens.centers[mask]
        origins = tokens.centers.new_zeros(tokens.batch_size, 3)
        empty = sample_empty_voxels(hidden_coords, hidden_centers, tokens.coords, origins,
                                    self.tokenizer.voxel_size, self.tokenizer.pc_range, self.grid_size(),
                                    int(self.empty_per_masked * len(hidden_coords)))
        vs, lo = self.tokenizer.voxel_size, self.tokenizer.pc_range[:3]
        empty_centers = (empty[:, 1:].flip(-1).float() + 0.5) * vs + lo
        labels = torch.cat([torch.ones(len(hidden_coords)), torch.zeros(len(empty))]).to(tokens.features)
        return torch.cat([hidden_coords, empty]), torch.cat([hidden_centers, empty_centers]), labels

    def forward_encoder(self, points: PointBatch):
        tokens = self.tokenizer(points)
        if tokens.coords.shape[0] == 0:
            raise ValueError("no voxel in the point-cloud range for this batch (empty sweeps after cropping)")
        mask = self.draw_mask(tokens)
        visible = ~mask
        latent = self.backbone.encode(tokens.features[visible], tokens.coords[visible], tokens.centers[visible],
                                      tokens.batch_size)
        return latent, mask, tokens

    def forward_decoder(self, latent, tokens, mask, query_coords, query_centers) -> torch.Tensor:
        visible = ~mask
        return self.backbone.decode(latent, tokens.coords[visible], tokens.centers[visible], query_coords,
                                    query_centers, tokens.batch_size)

    def forward_loss(self, decoded, labels, tokens, mask, points: PointBatch) -> dict:
        w = self.loss_weights
        logits = self.occupancy_head(decoded).squeeze(-1)
        out = {"occupancy": F.binary_cross_entropy_with_logits(logits, labels)}
        out["occupancy_acc"] = ((logits > 0).float() == labels).float().mean().detach()
        hidden = decoded[: int(labels.sum())]
        hidden_ids = torch.nonzero(mask).squeeze(1)
        if w["num_points"] > 0:
            pred_count = self.num_points_head(hidden).squeeze(-1)
            out["num_points"] = F.smooth_l1_loss(pred_count, torch.log1p(tokens.counts[mask].float()))
        if w["chamfer"] > 0:
            vs = self.tokenizer.voxel_size
            target, valid = padded_voxel_points(points.xyz, tokens.point_to_voxel, hidden_ids,
                                                len(tokens.coords), self.max_points_per_voxel or 32)
            target = (target - tokens.centers[mask].unsqueeze(1)) / vs  # voxel units, center at 0
            pred = self.points_head(hidden).view(len(hidden), self.num_pred_points, 3).float()  # fp32 under autocast
            out["chamfer"] = chamfer_distance(pred, target, y_mask=valid, norm=2)
        out["loss"] = sum(w[k] * out[k] for k in LOSSES if k in out and w[k] > 0)
        return out

    def forward(self, batch: dict) -> dict:
        points = batch["points"]
        latent, mask, tokens = self.forward_encoder(points)
        query_coords, query_centers, labels = self.draw_queries(tokens, mask)
        decoded = self.forward_decoder(latent, tokens, mask, query_coords, query_centers)
        return self.forward_loss(decoded, labels, tokens, mask, points)

    @torch.no_grad()
    def predict_occupancy(self, points: PointBatch) -> dict:
        """For evaluation and pictures: the mask, the query voxels, their labels and predicted probabilities."""
        latent, mask, tokens = self.forward_encoder(points)
        query_coords, query_centers, labels = self.draw_queries(tokens, mask)
        decoded = self.forward_decoder(latent, tokens, mask, query_coords, query_centers)
        prob = torch.sigmoid(self.occupancy_head(decoded).squeeze(-1))
        hidden = decoded[: int(labels.sum())]
        vs = self.tokenizer.voxel_size
        pred_points = self.points_head(hidden).view(len(hidden), self.num_pred_points, 3) * vs
        return {"tokens": tokens, "mask": mask, "query_coords": query_coords, "query_centers": query_centers,
                "labels": labels, "prob": prob, "points": pred_points + tokens.centers[mask].unsqueeze(1)}
