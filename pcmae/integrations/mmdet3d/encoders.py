"""pcmae's encoders as mmdet3d modules (``mmengine.model.BaseModule``), registered in ``mmdet3d.registry.MODELS``.

Each takes ``init_cfg=dict(type='Pretrained', checkpoint=PATH, prefix=None, allow_partial=False)``: PATH is a pcmae
pre-training checkpoint (the part for the module's slot is picked from the model type) or an exported file. The
load goes through :mod:`pcmae.integrations.mmdet3d.weights` (spconv metadata kept, key report logged, an encoder
weight left random is an error) instead of mmengine's ``PretrainedInit``.
"""
from __future__ import annotations

import math

import torch
from mmdet3d.registry import MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule

from pcmae.backbones.serialized_transformer import SerializedPatchTransformer
from pcmae.backbones.sparse_encoder import SparseEncoder
from pcmae.integrations.mmdet3d.weights import PretrainedWeightsError, check_compatible, load_part, read_part
from pcmae.ops import grid_size_of, voxel_centers
from pcmae.pretrainers.voxel_mae import FourierPosition
from pcmae.tokenizers.voxel_tokenizer import VoxelTokenizer

PRETRAINED_KEYS = {"type", "checkpoint", "prefix", "allow_partial", "map_location"}


class PcmaePretrainedInit:
    """Mixin for BaseModules: ``init_weights`` loads a Pretrained ``init_cfg`` through pcmae's checked loader.

    ``slot`` names the detector slot the module fills; ``pretrained_target()`` the submodule whose state dict equals
    the pre-trained part's."""

    slot: str

    def pretrained_target(self) -> torch.nn.Module:
        return self

    def init_weights(self):
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get("type") == "Pretrained"]
        if not pretrained:
            return BaseModule.init_weights(self)
        self.init_cfg = [c for c in cfgs if c.get("type") != "Pretrained"] or None
        try:
            BaseModule.init_weights(self)  # the other initialisers first, as mmengine does
        finally:
            self.init_cfg = cfgs
        self.load_pretrained(**pretrained[-1])

    def load_pretrained(self, checkpoint, prefix=None, allow_partial=False, **extra):
        """Load the slot's weights from ``checkpoint``; returns the KeyReport (also logged)."""
        name = type(self).__name__
        unknown = set(extra) - PRETRAINED_KEYS
        if unknown:
            raise PretrainedWeightsError(f"{name}.init_cfg: unknown key(s) {sorted(unknown)}; valid: "
                                         f"{', '.join(sorted(PRETRAINED_KEYS))}")
        if not checkpoint:
            raise PretrainedWeightsError(f"{name}.init_cfg.checkpoint is empty: give the pcmae checkpoint "
                                         f"(tools/finetune_det.py --pretrained PATH) or use the _scratch config")
        part = read_part(checkpoint, self.slot, prefix)
        check_compatible(self, part.pretrain_model, self.slot, name)
        report = load_part(self.pretrained_target(), part, name)
        for line in report.lines():
            print_log(line, logger="current")
        if not report.complete and not allow_partial:
            raise PretrainedWeightsError("\n".join(report.lines()) + "\n(init_cfg allow_partial=True accepts this)")
        self._is_init = True
        return report


@MODELS.register_module()
class PcmaeSparseEncoder(PcmaePretrainedInit, SparseEncoder, BaseModule):
    """mmdet3d's ``SparseEncoder``: same arguments, call (voxel_features (M, C), coors (M, 4) (batch, z, y, x),
    batch_size) -> BEV (B, C_out * D, H, W) and state-dict keys; CPU-safe spconv (see pcmae.backbones)."""

    slot = "middle_encoder"

    def __init__(self, *args, init_cfg=None, **kwargs):
        SparseEncoder.__init__(self, *args, **kwargs)  # its super().__init__() runs BaseModule's with init_cfg None
        self.init_cfg = init_cfg

    def forward(self, voxel_features, coors, batch_size):
        return super().forward(voxel_features, coors, int(batch_size))


@MODELS.register_module()
class PcmaeVoxelEncoder(PcmaePretrainedInit, BaseModule):
    """pcmae's PointNet voxel tokenizer over mmdet3d's hard voxels: (voxels (M, P, C), num_points (M,), coors (M, 4))
    -> (M, feat_channels). Per point: offsets to the voxel center and to the voxel's point mean (voxel units), raw
    channels with xyz scaled to the range; shared MLP; max over each voxel's points."""

    slot = "voxel_encoder"

    def __init__(self, in_channels: int = 4, feat_channels: int = 128, hidden_channels: int = 64,
                 voxel_size=(0.2, 0.2, 0.2), point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.voxel_size = [float(v) for v in voxel_size]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.tokenizer = VoxelTokenizer(in_channels, feat_channels, voxel_size, point_cloud_range, None,
                                        mode="pointnet", hidden_dim=hidden_channels)

    def pretrained_target(self):
        return self.tokenizer

    def forward(self, voxels, num_points, coors, *unused):
        num_voxels, max_points, channels = voxels.shape
        if channels != self.in_channels:
            raise ValueError(f"PcmaeVoxelEncoder expects {self.in_channels} point channels, got {channels}")
        valid = torch.arange(max_points, device=voxels.device) < num_points.unsqueeze(1)  # (M, P)
        voxel_of_point = valid.nonzero()[:, 0]
        centers = voxel_centers(coors, self.voxel_size, self.point_cloud_range)
        return self.tokenizer.embed(voxels[valid], voxel_of_point, centers, num_voxels)


def scatter_to_bev(features: torch.Tensor, coors: torch.Tensor, batch_size: int, bev_shape, stride: int):
    """Tokens (T, C) at (batch, z, y, x) -> dense (B, C, H, W): the max over each BEV cell's tokens (a cell is
    ``stride`` x ``stride`` voxels of every height), 0 where there is none. O(T + B * H * W)."""
    height, width = bev_shape
    b, y, x = coors[:, 0].long(), coors[:, 2].long() // stride, coors[:, 3].long() // stride
    cell = (b * height + y) * width + x
    dense = features.new_zeros(batch_size * height * width, features.shape[1])
    dense = dense.scatter_reduce(0, cell.unsqueeze(1).expand_as(features), features, "amax", include_self=False)
    return dense.view(batch_size, height, width, -1).permute(0, 3, 1, 2).contiguous()


@MODELS.register_module()
class PcmaeTransformerBEV(PcmaePretrainedInit, BaseModule):
    """The serialized patch transformer as a ``middle_encoder``: (voxel_features (M, in_channels), coors (M, 4),
    batch_size) -> BEV (B, embed_dim, ceil(ny / bev_stride), ceil(nx / bev_stride)) for mmdet3d's 2D ``SECOND``
    backbone (in_channels = embed_dim), ``SECONDFPN`` and ``CenterHead`` / ``Anchor3DHead``.

    Tokens: a linear projection plus Fourier positions of the voxel centers; patch attention along z-order curves
    (linear in the voxel count); then the max over each BEV cell. Keys equal a VoxelMAE transformer's encoder.
    """

    slot = "middle_encoder"

    def __init__(self, in_channels: int = 128, embed_dim: int = 128, depth: int = 4, num_heads: int = 4,
                 patch_size: int = 64, drop_path_rate: float = 0.0, voxel_size=(0.2, 0.2, 0.2),
                 point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), bev_stride: int = 1, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.voxel_size = [float(v) for v in voxel_size]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.bev_stride = int(bev_stride)
        if self.bev_stride < 1:
            raise ValueError(f"PcmaeTransformerBEV.bev_stride must be >= 1, got {bev_stride}")
        nx, ny, _ = grid_size_of(self.voxel_size, self.point_cloud_range)
        self.bev_shape = (math.ceil(ny / self.bev_stride), math.ceil(nx / self.bev_stride))
        self.input_proj = torch.nn.Linear(in_channels, embed_dim)
        self.pos_embed = FourierPosition(embed_dim, *FourierPosition.grid_wavelengths(self.voxel_size,
                                                                                      self.point_cloud_range))
        self.encoder = SerializedPatchTransformer(embed_dim, depth, num_heads, patch_size, drop_path_rate)

    def forward(self, voxel_features, coors, batch_size):
        """-> (B, embed_dim, H, W)."""
        coors = coors.long()
        centers = voxel_centers(coors, self.voxel_size, self.point_cloud_range)
        tokens = self.encoder(self.input_proj(voxel_features), coors, self.pos_embed(centers))
        return scatter_to_bev(tokens, coors, int(batch_size), self.bev_shape, self.bev_stride)
