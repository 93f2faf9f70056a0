"""Shape classification with a Point-MAE encoder (the fine-tuning model of the paper).

tokens = [cls, patches] with positions [cls_pos, pos]; feature = concat(cls output, max over patches);
MLP = Linear-BN-ReLU-Dropout-Linear-BN-ReLU-Dropout-Linear. The head (cls token, cls position, MLP) is its own
module (``ClassificationHead`` in pcmae/backbones/point_mae_parts.py), so the joint model MATE composes the same one.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from pcmae.augment import get_augmentation
from pcmae.backbones.point_mae_parts import ClassificationHead, rename_legacy_keys
from pcmae.backbones.transformer import PointTransformerEncoder, init_vit_weights
from pcmae.registry import MODELS
from pcmae.tokenizers.point_groups import PointGrouper


def classification_outputs(logits: torch.Tensor, batch: dict, label_smoothing: float = 0.0) -> dict:
    """{"logits"} plus, when ``batch`` has "label" (B,), the cross-entropy "loss" and the batch "acc"."""
    out = {"logits": logits}
    if "label" in batch:
        label = batch["label"].reshape(-1).long()
        out["loss"] = F.cross_entropy(logits, label, label_smoothing=label_smoothing)
        out["acc"] = (logits.argmax(-1) == label).float().mean()
    return out


# pcmae checkpoints written before the head was its own module
LEGACY_HEAD_KEYS = {"cls_token": "head.cls_token", "cls_pos": "head.cls_pos", "head.": "head.mlp."}


_PARAM_NAMES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def is_legacy_head_state(state_dict: dict, prefix: str = "") -> bool:
    return prefix + "cls_token" in state_dict


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
        self.encoder.apply(init_vit_weights)
        self.head = ClassificationHead(embed_dim, num_classes, head_dropout)
        self.register_load_state_dict_pre_hook(upgrade_legacy_head_hook)

    def upgrade_state_dict(self, state_dict: dict) -> dict:
        """A copy of ``state_dict`` with old key names renamed (what ``load_state_dict`` will see)."""
        state_dict = dict(state_dict)
        return rename_legacy_keys(state_dict, LEGACY_HEAD_KEYS) if is_legacy_head_state(state_dict) else state_dict

    def no_weight_decay(self):
        return {"head.cls_token", "head.cls_pos"}

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) -> (B, 2C) = concat(cls token output, max over patch tokens)."""
        groups = self.grouper(points)
        return self.head.features(self.encoder, *self.encoder.embed(groups.neighborhoods, groups.centers))

    def classify(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) -> logits (B, num_classes); no augmentation (the caller sets train / eval mode)."""
        return self.head.mlp(self.forward_features(points))

    def forward(self, batch: dict) -> dict:
        points = batch["points"]
        if self.training and self.augment is not None:
            points = self.augment(points)
        return classification_outputs(self.classify(points), batch, self.label_smoothing)

    def load_encoder_from_pretrainer(self, state_dict: dict, source: str = "the state dict") -> list:
        """Take the ``encoder.*`` weights of a pcmae state dict (pre-training, or a classifier used as pre-trained
        weights); every encoder key must match. The other keys are dropped, and ONE line on stderr names them
        (e.g. ``head.cls_token, head.cls_pos, head.mlp.* (16)`` of a classifier, ``decoder.*`` of a pre-training
        model). Returns the dropped keys."""
        encoder_state = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        if not encoder_state:
            raise ValueError(f"{source} holds no 'encoder.*' weights: not a pcmae pre-training checkpoint")
        missing, unexpected = self.encoder.load_state_dict(encoder_state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{source}: encoder weights do not fit: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        dropped = [k for k in state_dict if not k.startswith("encoder.")]
        if dropped:
            groups: dict[str, int] = {}
            for key in dropped:  # "head.mlp.0.weight" -> "head.mlp.*"; "head.cls_token" stays as it is
                parts = key.split(".")
                cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts))
                name = ".".join(parts[:cut]) + (".*" if cut < len(parts) else "")
                if cut == len(parts) and len(parts) > 1 and parts[-1] in _PARAM_NAMES:
                    name = ".".join(parts[:-1]) + ".*"
                groups[name] = groups.get(name, 0) + 1
            names = ", ".join(n + (f" ({c})" if c > 1 else "") for n, c in groups.items())
            print(f"{source}: took {len(encoder_state)} encoder tensors; dropped {len(dropped)} that the encoder "
                  f"does not use: {names}", file=sys.stderr, flush=True)
        return dropped


def upgrade_legacy_head_hook(module, state_dict, prefix, *args):
    """load_state_dict pre-hook: old flat ``cls_token``, ``cls_pos``, ``head.<i>.*`` -> ``head.{cls_token,
    cls_pos, mlp.<i>.*}``; only when the old layout is there (new ``head.*`` keys must stay as they are)."""
    if is_legacy_head_state(state_dict, prefix):
        rename_legacy_keys(state_dict, LEGACY_HEAD_KEYS, prefix)
