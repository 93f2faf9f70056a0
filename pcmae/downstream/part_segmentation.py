"""Part segmentation with a Point-MAE encoder (the ShapeNetPart model of the paper, segmentation/models/pt.py).

points (B, N, 3) -> G patches -> encoder; the outputs of three blocks (by default the last of each third: 3, 7, 11
of 12), each through the encoder's final LayerNorm, are concatenated into (B, G, 3C) patch features;
global feature = [max over patches, mean over patches, label embedding] with the category one-hot through
Linear(num_categories -> 64, no bias)-BN-LeakyReLU(0.2); each point gets the inverse-distance weighted mean of its 3
nearest patch centers' features (PointNet++ feature propagation) concatenated to its xyz, through an MLP
(3C + 3 -> 4C -> 1024, ``propagation_dims``); then [propagated, global] -> 512 -> dropout -> 256 (``head_dims``)
-> num_parts logits per point. The defaults are Point-MAE's widths; the CPU demo narrows them.
The 1x1 convolutions of Point-MAE are Linear layers on channels-last points here (the same function).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pcmae.augment import get_augmentation
from pcmae.backbones.transformer import PointTransformerEncoder, init_vit_weights
from pcmae.downstream.point_classifier import PointClassifier
from pcmae.ops import knn
from pcmae.registry import MODELS
from pcmae.tokenizers.point_groups import PointGrouper

LABEL_DIM = 64  # width of the category embedding


def default_feature_blocks(depth: int) -> list:
    """The last block of each third of the encoder: [3, 7, 11] for 12 blocks, [1, 2, 3] for 4, [0, 0, 0] for 1."""
    return [math.ceil(depth * (i + 1) / 3) - 1 for i in range(3)]


def shared_mlp(widths: Sequence[int], dropout_after: Optional[int] = None) -> nn.Sequential:
    """Linear-BN-ReLU for each step of ``widths``, on channels-last points (M, C) (Point-MAE's 1x1 convs)."""
    layers = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]
        if i == dropout_after:
            layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers)


def interpolate_features(points: torch.Tensor, centers: torch.Tensor, features: torch.Tensor,
                         k: int = 3) -> torch.Tensor:
    """Inverse squared-distance weighted mean of the ``k`` nearest centers' features for every point.

    points (B, N, 3), centers (B, G, 3), features (B, G, D) -> (B, N, D) (PointNet++ feature propagation).
    """
    k = min(k, centers.shape[1])
    dist2, idx = knn(points, centers, k)  # (B, N, k)
    weight = 1.0 / (dist2 + 1e-8)
    weight = weight / weight.sum(dim=-1, keepdim=True)
    b, n, _ = idx.shape
    neighbours = torch.gather(features, 1, idx.reshape(b, n * k, 1).expand(-1, -1, features.shape[-1]))
    return (neighbours.view(b, n, k, -1) * weight.unsqueeze(-1)).sum(dim=2)


@MODELS.register
class PointPartSegmenter(nn.Module):
    """Per-point part logits from a Point-MAE encoder; batch {"points" (B, N, 3), "label" (B,) category,
    optional "seg" (B, N) part labels} -> {"logits" (B, N, num_parts)} (+ "loss", "acc" with "seg")."""

    evaluation = "part_segmentation"  # tools/finetune.py scores it by instance / class mIoU

    def __init__(self, num_parts: int = 50, num_categories: int = 16, num_groups: int = 128, group_size: int = 32,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6, drop_path_rate: float = 0.1,
                 feature_blocks: Optional[Sequence[int]] = None, propagation_dims: Optional[Sequence[int]] = None,
                 head_dims: Sequence[int] = (512, 256), augment: str = "scale_shift"):
        super().__init__()
        self.feature_blocks = list(default_feature_blocks(depth) if feature_blocks is None else feature_blocks)
        if not self.feature_blocks or any(not 0 <= i < depth for i in self.feature_blocks):
            raise ValueError(f"feature_blocks {self.feature_blocks} must be block indices in [0, {depth})")
        if max(self.feature_blocks) != depth - 1:
            raise ValueError(f"feature_blocks {self.feature_blocks} leave blocks {max(self.feature_blocks) + 1}.."
                             f"{depth - 1} unused (no gradient); include the last block {depth - 1}")
        self.num_parts, self.num_categories = num_parts, num_categories
        self.augment = get_augmentation(augment)
        self.grouper = PointGrouper(num_groups, group_size)
        self.encoder = PointTransformerEncoder(embed_dim, depth, num_heads, drop_path_rate)
        self.encoder.apply(init_vit_weights)
        feature_dim = embed_dim * len(self.feature_blocks)
        self.label_embed = nn.Sequential(nn.Linear(num_categories, LABEL_DIM, bias=False), nn.BatchNorm1d(LABEL_DIM),
                                         nn.LeakyReLU(0.2))
        propagation_dims = list(propagation_dims or (4 * embed_dim, 1024))
        self.propagation = shared_mlp([feature_dim + 3] + propagation_dims)
        head_dims = list(head_dims)
        self.head = shared_mlp([propagation_dims[-1] + 2 * feature_dim + LABEL_DIM] + head_dims, dropout_after=0)
        self.classifier = nn.Linear(head_dims[-1], num_parts)

    def segment(self, points: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3), category label (B,) -> part logits (B, N, num_parts); no augmentation."""
        b, n, _ = points.shape
        groups = self.grouper(points)
        tokens, pos = self.encoder.embed(groups.neighborhoods, groups.centers)
        patches = torch.cat(self.encoder.block_outputs(tokens, pos, self.feature_blocks), dim=-1)  # (B, G, 3C)
        one_hot = F.one_hot(label.reshape(-1).long(), self.num_categories).to(patches.dtype)
        shape = torch.cat([patches.max(dim=1).values, patches.mean(dim=1), self.label_embed(one_hot)], dim=-1)
        per_point = torch.cat([points, interpolate_features(points, groups.centers, patches)], dim=-1)
        per_point = self.propagation(per_point.reshape(b * n, -1)).view(b, n, -1)
        x = torch.cat([per_point, shape.unsqueeze(1).expand(-1, n, -1)], dim=-1).reshape(b * n, -1)
        return self.classifier(self.head(x)).view(b, n, self.num_parts)

    def forward(self, batch: dict) -> dict:
        points = batch["points"]
        if self.training and self.augment is not None:
            points = self.augment(points)
        logits = self.segment(points, batch["label"])
        out = {"logits": logits}
        if "seg" in batch:
            seg = batch["seg"].long()
            out["loss"] = F.cross_entropy(logits.reshape(-1, self.num_parts), seg.reshape(-1))
            out["acc"] = (logits.argmax(-1) == seg).float().mean()
        return out

    # the encoder.* weights of a pcmae pre-training state dict (every encoder key must match), as the classifier
    load_encoder_from_pretrainer = PointClassifier.load_encoder_from_pretrainer
