"""Voxel-MAE (Hess et al., WACV-W 2023): hide non-empty voxels of a LiDAR sweep, rebuild what was there.

Read top to bottom: voxel tokens (``model.tokenizer``, linear time, no padding) -> mask (``model.masking``, in
metres around each sensor) -> encoder on visible voxels and decoder on query voxels (``model.backbone``) = hidden
occupied voxels + sampled empty ones -> the targets with a weight > 0 in ``model.loss_weights``:
  occupancy   BCE: is a query voxel occupied (hidden voxels) or empty (sampled free space)?
  num_points  smooth-L1 on log(1 + points in each hidden voxel);
  chamfer     Chamfer-L2 between K predicted points and the voxel's real points (voxel units).
Only the heads of those targets are built: every parameter gets a gradient at every step (DDP needs that).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import pcmae.backbones  # noqa: F401  (registers the model.backbone entries)
import pcmae.masking  # noqa: F401  (registers the model.masking entries)
import pcmae.tokenizers  # noqa: F401  (registers the model.tokenizer entries)
from pcmae.backbones.positions import FourierPosition  # noqa: F401  (pcmae.integrations imports it from here)
from pcmae.ops import chamfer_distance
from pcmae.pretrainers.voxel_targets import padded_voxel_points, sample_empty_voxels
from pcmae.registry import BACKBONES, MASKINGS, MODELS, TOKENIZERS, ConfigError
from pcmae.structures import PointBatch

LOSSES = ("occupancy", "num_points", "chamfer")
OPTIONAL_HEADS = {"num_points": "num_points_head", "chamfer": "points_head"}


def check_loss_weights(weights: dict) -> dict:
    """Every key a known target, every weight a number >= 0, occupancy > 0 (queries and evaluation rest on it)."""
    for key, value in weights.items():
        if key not in LOSSES:
            raise ConfigError(f"unknown loss 'model.loss_weights.{key}'; valid: {', '.join(LOSSES)}")
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
            raise ConfigError(f"'model.loss_weights.{key}' must be a number >= 0, got {value!r}")
    if not weights["occupancy"] > 0:
        raise ConfigError("'model.loss_weights.occupancy' must be > 0: the query voxels and the occupancy "
                          "evaluation are built on it")
    return weights


@MODELS.register
class VoxelMAE(nn.Module):
    """batch {"points": PointBatch (N, point_channels)} -> {"loss", "occupancy", "occupancy_acc", ...}.

    voxel_size / point_cloud_range: the grid, metres; max_points_per_voxel: points kept per voxel;
    tokenizer: {type: pointnet (embed_dim, hidden_dim) | mean}; backbone: {type: transformer (embed_dim, depth,
    num_heads, patch_size, drop_path_rate, decoder_dim, decoder_depth, decoder_num_heads) | sparse_conv
    (decoder_dim, sparse_encoder: mmdet3d SparseEncoder kwargs)}; masking: {type: random | range_aware | radial,
    ...}; num_pred_points: points predicted per hidden voxel (chamfer); empty_per_masked: sampled empty query
    voxels per hidden voxel; loss_weights: per target, a head is built only for a weight > 0.
    """

    context_keys = ()  # batch keys besides "points" that predict_occupancy takes (TemporalMAE: the past frame)
    default_masking = {"type": "random", "ratio": 0.7}
    default_loss_weights = {"occupancy": 1.0, "num_points": 1.0, "chamfer": 1.0}
    moved_keys = {"embed_dim": "model.tokenizer.embed_dim (pointnet) and model.backbone.embed_dim (transformer)",
                  **{k: f"model.backbone.{k}" for k in ("depth", "num_heads", "patch_size", "drop_path_rate",
                                                         "decoder_dim", "decoder_depth", "decoder_num_heads",
                                                         "sparse_encoder")}}

    def __init__(self, point_channels: int = 4, voxel_size=(0.2, 0.2, 0.2),
                 point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), max_points_per_voxel: int = 32,
                 tokenizer: dict | None = None, backbone: dict | None = None, masking: dict | None = None,
                 num_pred_points: int = 16, empty_per_masked: float = 1.0, loss_weights: dict | None = None):
        super().__init__()
        grid = dict(voxel_size=voxel_size, point_cloud_range=point_cloud_range)
        self.masking = MASKINGS.build(masking if masking is not None else self.default_masking, "model.masking")
        self.loss_weights = check_loss_weights({**self.default_loss_weights, **(loss_weights or {})})
        self.max_points_per_voxel = max_points_per_voxel
        self.num_pred_points = num_pred_points
        self.empty_per_masked = empty_per_masked
        self.tokenizer = TOKENIZERS.build(tokenizer if tokenizer is not None else {"type": "pointnet"},
                                          "model.tokenizer", point_channels=point_channels,
                                          max_points_per_voxel=max_points_per_voxel, **grid)
        self.backbone = BACKBONES.build(backbone if backbone is not None else {"type": "transformer"},
                                        "model.backbone", in_dim=self.tokenizer.embed_dim, **grid)
        width = self.backbone.out_dim
        self.occupancy_head = nn.Linear(width, 1)
        self.num_points_head = nn.Linear(width, 1) if self.loss_weights["num_points"] > 0 else None
        self.points_head = nn.Linear(width, 3 * num_pred_points) if self.loss_weights["chamfer"] > 0 else None
        self._register_load_state_dict_pre_hook(self._drop_unbuilt_heads)

    def _drop_unbuilt_heads(self, state_dict, prefix, *args):
        """Checkpoints written before the heads of weight-0 targets were left out hold them untrained: drop them."""
        for head in OPTIONAL_HEADS.values():
            if getattr(self, head) is None:
                for key in [k for k in state_dict if k.startswith(f"{prefix}{head}.")]:
                    del state_dict[key]

    @property
    def point_cloud_range(self) -> list[float]:
        """[x_min, y_min, z_min, x_max, y_max, z_max] of the voxel grid, metres."""
        return self.tokenizer.pc_range.tolist()

    @property
    def voxel_size(self) -> list[float]:
        return self.tokenizer.voxel_size.tolist()

    @property
    def predicts_points(self) -> bool:
        """True when the model has a point head (chamfer target): ``predict_occupancy`` then returns "points"."""
        return self.points_head is not None

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

    def draw_mask(self, tokens, generator: torch.Generator | None = None) -> torch.Tensor:
        """(V,) bool, True = hidden; drawn per sample around each sample's sensor (the frame origin)."""
        return self.masking(tokens.centers, tokens.batch_idx, tokens.batch_size, None, generator)

    def draw_queries(self, tokens, mask, generator: torch.Generator | None = None):
        """Hidden voxels first, then sampled empty voxels: coords (Q, 4), centers (Q, 3), labels (Q,)."""
        hidden_coords, hidden_centers = tokens.coords[mask], tokens.centers[mask]
        origins = tokens.centers.new_zeros(tokens.batch_size, 3)
        empty = sample_empty_voxels(hidden_coords, hidden_centers, tokens.coords, origins,
                                    self.tokenizer.voxel_size, self.tokenizer.pc_range, self.grid_size(),
                                    int(self.empty_per_masked * len(hidden_coords)), generator)
        vs, lo = self.tokenizer.voxel_size, self.tokenizer.pc_range[:3]
        empty_centers = (empty[:, 1:].flip(-1).float() + 0.5) * vs + lo
        labels = torch.cat([torch.ones(len(hidden_coords)), torch.zeros(len(empty))]).to(tokens.features)
        return torch.cat([hidden_coords, empty]), torch.cat([hidden_centers, empty_centers]), labels

    def forward_encoder(self, points: PointBatch, generator: torch.Generator | None = None):
        tokens = self.tokenizer(points)
        if tokens.coords.shape[0] == 0:
            raise ValueError("no voxel in the point-cloud range for this batch (empty sweeps after cropping)")
        mask = self.draw_mask(tokens, generator)
        visible = ~mask
        latent = self.backbone.encode(tokens.features[visible], tokens.coords[visible], tokens.centers[visible],
                                      tokens.batch_size)
        return latent, mask, tokens

    def forward_decoder(self, latent, tokens, mask, query_coords, query_centers) -> torch.Tensor:
        visible = ~mask
        return self.backbone.decode(latent, tokens.coords[visible], tokens.centers[visible], query_coords,
                                    query_centers, tokens.batch_size)

    def predict_points(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoded hidden voxels (M, D) -> (M, num_pred_points, 3) points in voxel units around each center."""
        return self.points_head(hidden).view(len(hidden), self.num_pred_points, 3)

    def forward_loss(self, decoded, labels, tokens, mask, points: PointBatch) -> dict:
        w = self.loss_weights
        logits = self.occupancy_head(decoded).squeeze(-1)
        out = {"occupancy": F.binary_cross_entropy_with_logits(logits, labels)}
        out["occupancy_acc"] = ((logits > 0).float() == labels).float().mean().detach()
        hidden = decoded[: int(labels.sum())]
        if self.num_points_head is not None:
            pred_count = self.num_points_head(hidden).squeeze(-1)
            out["num_points"] = F.smooth_l1_loss(pred_count, torch.log1p(tokens.counts[mask].float()))
        if self.points_head is not None:
            vs = self.tokenizer.voxel_size
            hidden_ids = torch.nonzero(mask).squeeze(1)
            target, valid = padded_voxel_points(points.xyz, tokens.point_to_voxel, hidden_ids,
                                                len(tokens.coords), self.max_points_per_voxel or 32)
            target = (target - tokens.centers[mask].unsqueeze(1)) / vs  # voxel units, center at 0
            pred = self.predict_points(hidden).float()  # fp32 under autocast
            out["chamfer"] = chamfer_distance(pred, target, y_mask=valid, norm=2)
        out["loss"] = sum(w[k] * out[k] for k in LOSSES if k in out)
        return out

    def forward(self, batch: dict) -> dict:
        points = batch["points"]
        latent, mask, tokens = self.forward_encoder(points)
        query_coords, query_centers, labels = self.draw_queries(tokens, mask)
        decoded = self.forward_decoder(latent, tokens, mask, query_coords, query_centers)
        return self.forward_loss(decoded, labels, tokens, mask, points)

    @torch.no_grad()
    def predict_occupancy(self, points: PointBatch, generator: torch.Generator | None = None) -> dict:
        """For evaluation and pictures: "tokens", "mask" (V,), "query_coords" (Q, 4), "query_centers" (Q, 3),
        "labels" (Q,) and "prob" (Q,) the predicted occupancy; with a point head also "points" (M, K, 3), metres,
        the rebuilt points of the M hidden voxels. ``generator`` (on the points' device) fixes mask and queries."""
        latent, mask, tokens = self.forward_encoder(points, generator)
        return self.occupancy_outputs(latent, mask, tokens, generator)

    def occupancy_outputs(self, latent, mask, tokens, generator: torch.Generator | None = None) -> dict:
        """The tail of ``predict_occupancy`` after the encoder: queries, decoder, heads."""
        query_coords, query_centers, labels = self.draw_queries(tokens, mask, generator)
        decoded = self.forward_decoder(latent, tokens, mask, query_coords, query_centers)
        out = {"tokens": tokens, "mask": mask, "query_coords": query_coords, "query_centers": query_centers,
               "labels": labels, "prob": torch.sigmoid(self.occupancy_head(decoded).squeeze(-1))}
        if self.predicts_points:
            hidden = decoded[: int(labels.sum())]
            out["points"] = self.predict_points(hidden) * self.tokenizer.voxel_size + tokens.centers[mask].unsqueeze(1)
        return out

    @torch.no_grad()
    def picture(self, batch: dict, seed: int = 0) -> np.ndarray:
        """Bird's-eye view of each sweep of ``batch`` (the dataset's collate output, on the model's device):
        visible | hidden (truth) | query voxels predicted occupied -> uint8 image (H, W, 3). The mask is drawn
        from a generator seeded with ``seed`` (the global RNG is left alone); train / eval mode is restored."""
        from pcmae.visualization import bev_figure, figure_to_array

        was_training = self.training
        self.eval()
        try:
            panels = self.picture_panels(batch, seed)
        finally:
            self.train(was_training)
        return figure_to_array(bev_figure(panels, extent=self.point_cloud_range))

    def picture_panels(self, batch: dict, seed: int) -> list[dict]:
        """One dict of BEV point sets per sample (``pcmae.visualization.occupancy_panels``)."""
        from pcmae.visualization import occupancy_panels

        points = batch["points"]
        generator = torch.Generator(device=points.points.device).manual_seed(seed)
        out = self.predict_occupancy(points, generator, **{key: batch[key] for key in self.context_keys})
        return occupancy_panels(out, points.batch_size)
