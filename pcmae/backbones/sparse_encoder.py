"""SECOND / CenterPoint sparse-conv encoder (spconv), with mmdet3d's ``SparseEncoder`` interface and state-dict keys.

voxel features (N, C) + coords (N, 4) int32 (batch, z, y, x) -> SubMConv3d stem -> stages (each after the
first opens with a stride-2 SparseConv3d, or closes with one for ``block_type='basicblock'``) -> SparseConv3d
kernel (3, 1, 1) stride (2, 1, 1) -> dense (B, C, D, H, W) -> BEV map (B, C * D, H, W).

Parameter names and shapes equal mmdet3d's (``conv_input.0.weight``, ``encoder_layers.encoder_layer2.0.0.weight``,
``conv_out.1.running_mean``, ...; spconv 2.x kernels are (out, kz, ky, kx, in)), so a pre-trained state dict
loads into mmdet3d's ``middle_encoder`` / ``pts_middle_encoder``. Conv layers save state-dict metadata
version 2: mmdet3d permutes sparse-conv weights whose metadata says otherwise, taking them for spconv 1.x.
Needs the optional spconv package (see :mod:`pcmae.backbones.spconv_compat`); this module imports without it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pcmae.backbones.spconv_compat import (BackwardThreadGuard, require_spconv, select_conv_algo,
                                           single_threaded)

ORDER_PARTS = {"conv", "norm", "act"}
NORM_TYPES = {"BN1d": nn.BatchNorm1d, "BN": nn.BatchNorm1d, "SyncBN": nn.SyncBatchNorm}


def _takes_sparse(layer: nn.Module) -> bool:
    return isinstance(layer, (SparseChain, SparseBasicBlock, require_spconv().conv.SparseConvolution))


class SparseChain(nn.Sequential):
    """``nn.Sequential`` over a SparseConvTensor: sparse layers take the tensor, the others (norm, ReLU) its
    features. Plays the part of spconv's ``SparseSequential`` (same child names) without importing spconv."""

    def forward(self, x):
        for layer in self:
            x = layer(x) if _takes_sparse(layer) else x.replace_feature(layer(x.features))
        return x


class SparseBasicBlock(nn.Module):
    """Residual block of two 3x3x3 submanifold convs (mmdet3d's ``SparseBasicBlock``: conv1, bn1, conv2, bn2)."""

    def __init__(self, channels: int, make_norm, indice_key: str | None):
        super().__init__()
        spconv = require_spconv()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = make_norm(channels)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = make_norm(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.relu(self.bn2(out.features) + identity))
        return out


def _norm_factory(norm_cfg: dict | None):
    cfg = {"type": "BN1d", "eps": 1e-3, "momentum": 0.01, **(norm_cfg or {})}
    unknown = set(cfg) - {"type", "eps", "momentum"}
    if unknown:
        raise ValueError(f"norm_cfg: unknown key(s) {sorted(unknown)}; valid: type, eps, momentum")
    if cfg["type"] not in NORM_TYPES:
        raise ValueError(f"norm_cfg.type must be one of {sorted(NORM_TYPES)}, got {cfg['type']!r}")
    norm_cls, eps, momentum = NORM_TYPES[cfg["type"]], float(cfg["eps"]), float(cfg["momentum"])
    return lambda channels: norm_cls(channels, eps=eps, momentum=momentum)


def _triple(value) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _bev(features: torch.Tensor, indices: torch.Tensor, spatial_shape, batch_size: int) -> torch.Tensor:
    """Sparse (N, C) at (batch, z, y, x) -> dense (B, C * D, H, W), channel-major as mmdet3d's
    ``out.dense().view(B, C * D, H, W)`` (done here: spconv's ``dense()`` indexes with a list, deprecated in torch)."""
    d, h, w = spatial_shape
    c = features.shape[1]
    dense = features.new_zeros(batch_size, c, d, h, w)
    b, z, y, x = indices.long().unbind(1)
    dense.permute(0, 2, 3, 4, 1)[b, z, y, x] = features  # written in place: the reshape below is a view, no copy
    return dense.view(batch_size, c * d, h, w)


class SparseEncoder(nn.Module):
    """mmdet3d-compatible sparse encoder.

    in_channels: C of the voxel features; sparse_shape: [D, H, W] voxels along z, y, x (mmdet3d uses grid z + 1,
    e.g. [41, 1600, 1408] for KITTI at 0.05 x 0.05 x 0.1 m); order: conv / norm / act order of each conv module;
    norm_cfg: dict(type='BN1d' | 'BN' | 'SyncBN', eps, momentum); encoder_channels / encoder_paddings: one tuple
    per stage; block_type: 'conv_module' (SECOND) or 'basicblock' (CenterPoint); return_middle_feats: forward
    also returns the stage outputs (as in mmdet3d).
    """

    def __init__(self, in_channels: int, sparse_shape: Sequence[int], order: Sequence[str] = ("conv", "norm", "act"),
                 norm_cfg: dict | None = None, base_channels: int = 16, output_channels: int = 128,
                 encoder_channels=((16,), (32, 32, 32), (64, 64, 64), (64, 64, 64)),
                 encoder_paddings=((1,), (1, 1, 1), (1, 1, 1), ((0, 1, 1), 1, 1)),
                 block_type: str = "conv_module", return_middle_feats: bool = False):
        super().__init__()
        spconv = require_spconv()
        order = tuple(order)
        if len(order) != 3 or set(order) != ORDER_PARTS:
            raise ValueError(f"order must arrange 'conv', 'norm', 'act' once each, got {order!r}")
        if block_type not in ("conv_module", "basicblock"):
            raise ValueError(f"block_type must be 'conv_module' or 'basicblock', got {block_type!r}")
        sparse_shape = [int(v) for v in sparse_shape]
        if len(sparse_shape) != 3 or min(sparse_shape) < 1:
            raise ValueError(f"sparse_shape must be 3 positive ints [D, H, W] (z, y, x), got {sparse_shape!r}")
        encoder_channels = tuple(tuple(stage) for stage in encoder_channels)
        encoder_paddings = tuple(tuple(_as_tuple(p) for p in stage) for stage in encoder_paddings)
        if [len(s) for s in encoder_channels] != [len(s) for s in encoder_paddings[:len(encoder_channels)]]:
            raise ValueError(f"encoder_paddings {encoder_paddings} must give one padding per conv of "
                             f"encoder_channels {encoder_channels}")
        self.in_channels = in_channels
        self.sparse_shape = sparse_shape
        self.order = order
        self.base_channels = base_channels
        self.output_channels = output_channels
        self.encoder_channels = encoder_channels
        self.encoder_paddings = encoder_paddings
        self.block_type = block_type
        self.return_middle_feats = return_middle_feats
        self._make_norm = _norm_factory(norm_cfg)

        stem_order = ("conv",) if order[0] != "conv" else order  # pre-activation: the stem is a bare conv
        self.conv_input = self._conv_module(spconv.SubMConv3d, in_channels, base_channels, 3, padding=1,
                                            indice_key="subm1", order=stem_order)
        self.encoder_layers = SparseChain()
        channels = base_channels
        last_stage = len(encoder_channels) - 1
        for i, (outs, pads) in enumerate(zip(encoder_channels, encoder_paddings)):
            blocks = []
            for j, (out, pad) in enumerate(zip(outs, pads)):
                if block_type == "conv_module" and i > 0 and j == 0:
                    blocks.append(self._conv_module(spconv.SparseConv3d, channels, out, 3, stride=2, padding=pad,
                                                    indice_key=f"spconv{i + 1}"))
                elif block_type == "basicblock" and j == len(outs) - 1 and i != last_stage:
                    blocks.append(self._conv_module(spconv.SparseConv3d, channels, out, 3, stride=2, padding=pad,
                                                    indice_key=f"spconv{i + 1}"))
                elif block_type == "basicblock":
                    if channels != out:
                        raise ValueError(f"encoder_channels {encoder_channels}: basic block {j} of stage {i + 1} "
                                         f"gets {channels} channels but outputs {out} (they must match)")
                    blocks.append(SparseBasicBlock(out, self._make_norm, indice_key=f"subm{i + 1}"))
                else:
                    blocks.append(self._conv_module(spconv.SubMConv3d, channels, out, 3, padding=pad,
                                                    indice_key=f"subm{i + 1}"))
                channels = out
            self.encoder_layers.add_module(f"encoder_layer{i + 1}", SparseChain(*blocks))
        self.conv_out = self._conv_module(spconv.SparseConv3d, channels, output_channels, (3, 1, 1),
                                          stride=(2, 1, 1), padding=0, indice_key="spconv_down2")
        for layer in self.modules():
            if isinstance(layer, spconv.conv.SparseConvolution):
                layer._version = 2  # mmdet3d reads metadata version != 2 as spconv 1.x layout and permutes
        if min(self.output_shape()) < 1:
            raise ValueError(f"sparse_shape {sparse_shape} (z, y, x) shrinks to {self.output_shape()} through the "
                             f"strided convs; SECOND / CenterPoint need z = 41 (a grid of 40 voxels in z, +1)")

    def output_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of the last sparse tensor; the BEV map is (B, output_channels * D, H, W)."""
        shape = list(self.sparse_shape)
        strided = [m for m in self.modules() if type(m).__name__ == "SparseConv3d"]  # strided convs, in order
        for conv in strided:
            k, s, p = (_triple(v) for v in (conv.kernel_size, conv.stride, conv.padding))
            shape = [(n + 2 * p_ - k_) // s_ + 1 for n, k_, s_, p_ in zip(shape, k, s, p)]
        return tuple(shape)

    @property
    def bev_channels(self) -> int:
        return self.output_channels * self.output_shape()[0]

    def _conv_module(self, conv_cls, in_channels, out_channels, kernel_size, stride=1, padding=0, indice_key=None,
                     order=None) -> SparseChain:
        """mmdet3d's make_sparse_convmodule: conv (no bias) / BN / ReLU in `order`; BN has out_channels."""
        parts = {"conv": lambda: conv_cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                          bias=False, indice_key=indice_key),
                 "norm": lambda: self._make_norm(out_channels),
                 "act": lambda: nn.ReLU(inplace=True)}
        return SparseChain(*(parts[name]() for name in (order or self.order)))

    def forward(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int):
        """voxel_features: (N, C); coors: (N, 4) int (batch, z, y, x) -> BEV (B, C_out * D_out, H_out, W_out)
        (and the stage outputs when ``return_middle_feats``)."""
        bev, stages = self.forward_features(voxel_features, coors, batch_size)
        return (bev, stages) if self.return_middle_feats else bev

    def forward_features(self, voxel_features: torch.Tensor, coors: torch.Tensor, batch_size: int):
        """-> (bev (B, C_out * D_out, H_out, W_out), [SparseConvTensor of each stage, finest first])."""
        spconv = require_spconv()
        self._check_inputs(voxel_features, coors, batch_size)
        # spconv reads the index memory as dense int32 rows: a strided (e.g. transposed) tensor silently gives
        # wrong neighbours, so make it contiguous here
        coors = coors.to(torch.int32).contiguous()
        device = voxel_features.device
        on_cpu = device.type == "cpu"
        select_conv_algo(self, device)
        needs_grad = torch.is_grad_enabled() and (voxel_features.requires_grad
                                                  or any(p.requires_grad for p in self.parameters()))
        guard = BackwardThreadGuard(active=on_cpu and needs_grad)
        with torch.autocast(device_type=device.type, enabled=False), single_threaded(on_cpu):
            features = guard.wrap_input(voxel_features.float())
            x = self.conv_input(spconv.SparseConvTensor(features, coors, self.sparse_shape, batch_size))
            stages = []
            for stage in self.encoder_layers:
                x = stage(x)
                stages.append(x)
            out = self.conv_out(x)
            guarded = guard.wrap_outputs(out.features, *(s.features for s in stages))
            stages = [s.replace_feature(f) for s, f in zip(stages, guarded[1:])]
            bev = _bev(guarded[0], out.indices, out.spatial_shape, batch_size)
        return bev, stages

    def _check_inputs(self, voxel_features, coors, batch_size) -> None:
        if voxel_features.dim() != 2 or voxel_features.shape[1] != self.in_channels:
            raise ValueError(f"SparseEncoder expects voxel_features (N, {self.in_channels}), "
                             f"got {tuple(voxel_features.shape)}")
        if coors.shape != (voxel_features.shape[0], 4):
            raise ValueError(f"coors must be ({voxel_features.shape[0]}, 4) (batch, z, y, x), got {tuple(coors.shape)}")
        if voxel_features.shape[0] == 0:
            raise ValueError("SparseEncoder got no voxel (N = 0); spconv cannot run on an empty tensor")
        if coors.device != voxel_features.device:
            raise ValueError(f"coors on {coors.device} but voxel_features on {voxel_features.device}")
        low = coors.amin(dim=0).tolist()
        high = coors.amax(dim=0).tolist()
        limits = [batch_size, *self.sparse_shape]
        if min(low) < 0 or any(h >= lim for h, lim in zip(high, limits)):
            raise ValueError(f"coors (batch, z, y, x) must lie in [0, {limits}), got min {low} max {high}")
