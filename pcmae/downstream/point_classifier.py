"""Shape classification with a Point-MAE encoder (the fine-tuning model of the paper).

tokens = [cls, patches] with positions [cls_pos, pos]; feature = concat(cls output, max over patches);
head = Linear-BN-ReLU-Dropout-Linear-BN-ReLU-Dropout-Linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcmae.augment import get_augmentation
from pcmae.backbones.transformer import PointTransformerEncoder, init_vit_weights
from pcmae.registry import MODELS
from pcmae.tokenizers.point_groups import PointGrouper


@MODELS.register
class PointClassifier(nn.Module):
    def __init__(self, num_classes: int = 40, num_groups: int = 64, group_size: int = 32, embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 6, drop_path_rate: float = 0.1, head_dropout: float = 0.5,
                 label_smoothing: float = 0.0, augment: str = "scale_translate"):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.augment = get_augmentation(augment)
        self.grouper = PointGrouper(num_groups, group_size)
        self.encoder = PointTransformerEncoder(embed_dim, depth, num_heads, drop_path_rate)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.head = nn.Sequential(
            nn.Linear(2 * embed_dim, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(head_dropout),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(head_dropout),
            nn.Linear(256, num_classes),
        )
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def no_weight_decay(self):
        return {"cls_token", "cls_pos"}

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) -> (B, 2C) = concat(cls token output, max over patch tokens)."""
        groups = self.grouper(points)
        tokens, pos = self.encoder.embed(groups.neighborhoods, groups.centers)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), pos], dim=1)
        x = self.encoder(x, pos)
        return torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)

    def forward(self, batch: dict) -> dict:
        points = batch["points"]
        if self.training and self.augment is not None:
            points = self.augment(points)
        logits = self.head(self.forward_features(points))
        out = {"logits": logits}
        if "label" in batch:
            label = batch["label"].reshape(-1).long()
            out["loss"] = F.cross_entropy(logits, label, label_smoothing=self.label_smoothing)
            out["acc"] = (logits.argmax(-1) == label).float().mean()
        return out

    def load_encoder_from_pretrainer(self, state_dict: dict) -> None:
        """Take the ``encoder.*`` weights of a pcmae pre-training state dict; every encoder key must match."""
        encoder_state = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        if not encoder_state:
            raise ValueError("the state dict holds no 'encoder.*' weights: not a pcmae pre-training checkpoint")
        missing, unexpected = self.encoder.load_state_dict(encoder_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"encoder weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
