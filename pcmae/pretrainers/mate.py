"""MATE's source model (Mirza et al., ICCV 2023): classification and Point-MAE reconstruction on ONE encoder.

Trained jointly so that, at test time, the self-supervised reconstruction loss can adapt the encoder that the
classifier reads (pcmae.tta). Read top to bottom:

  points (B, N, 3) -> grouper -> patches (B, G, K, 3) + centers (B, G, 3) -> patch tokens + positions (B, G, C)
  classification branch: [cls, EVERY patch] through the encoder -> head -> logits -> cross-entropy
  reconstruction branch: hide ``mask_ratio`` (0.9, as MATE) of the patches, encoder on the visible ones,
                         Point-MAE decoder -> points of each hidden patch -> Chamfer-L2
  loss = cls_loss + rec_weight * rec_loss

MATE's ``--jt --cyclic`` training gives the classifier all tokens and the decoder 10 %; the grouping and the
patch embedding are computed once and shared by both branches here (they are deterministic).
"""
from __future__ import annotations

import torch
from torch import nn

from pcmae.augment import get_augmentation
from pcmae.backbones.point_mae_parts import ClassificationHead, PointMAEDecoder, patch_chamfer_loss, select_tokens
from pcmae.backbones.transformer import PointTransformerEncoder, init_vit_weights
from pcmae.downstream.point_classifier import classification_outputs
from pcmae.masking import make_mask
from pcmae.registry import MODELS
from pcmae.tokenizers.point_groups import PointGrouper


@MODELS.register
class MATE(nn.Module):
    def __init__(self, num_classes: int = 40, num_groups: int = 64, group_size: int = 32, embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 6, drop_path_rate: float = 0.1, decoder_depth: int = 4,
                 decoder_num_heads: int = 6, mask_ratio: float = 0.9, mask_type: str = "rand",
                 rec_weight: float = 1.0, head_dropout: float = 0.5, label_smoothing: float = 0.0,
                 augment: str = "scale_translate"):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"MATE: mask_ratio must be in (0, 1), got {mask_ratio}")
        if rec_weight < 0:
            raise ValueError(f"MATE: rec_weight must be >= 0, got {rec_weight}")
        self.mask_ratio, self.mask_type = mask_ratio, mask_type
        self.rec_weight, self.label_smoothing = rec_weight, label_smoothing
        self.augment = get_augmentation(augment)
        self.grouper = PointGrouper(num_groups, group_size)
        self.encoder = PointTransformerEncoder(embed_dim, depth, num_heads, drop_path_rate)
        self.encoder.apply(init_vit_weights)
        self.decoder = PointMAEDecoder(embed_dim, group_size, decoder_depth, decoder_num_heads, drop_path_rate)
        self.head = ClassificationHead(embed_dim, num_classes, head_dropout)

    def no_weight_decay(self):
        return {"decoder.mask_token", "head.cls_token", "head.cls_pos"}

    # --- the two branches on one tokenised batch ------------------------------------------------------
    def tokenize(self, points: torch.Tensor):
        """points (B, N, 3) -> groups, patch tokens (B, G, C), positions (B, G, C)."""
        groups = self.grouper(points)
        tokens, pos = self.encoder.embed(groups.neighborhoods, groups.centers)
        return groups, tokens, pos

    def masked_reconstruction(self, groups, tokens: torch.Tensor, pos: torch.Tensor,
                              generator: torch.Generator | None = None) -> torch.Tensor:
        """Point-MAE's loss: hide ``mask_ratio`` of the patches, encode the rest, rebuild the hidden ones -> scalar."""
        mask = make_mask(self.mask_type, groups.centers, self.mask_ratio, generator)  # (B, G) True = hidden
        latent = self.encoder(select_tokens(tokens, ~mask), select_tokens(pos, ~mask))
        predicted = self.decoder(latent, groups.centers, mask)  # (B, M, K, 3)
        return patch_chamfer_loss(predicted, groups.neighborhoods, mask)

    # --- the API: training step, prediction, the self-supervised loss for test-time adaptation -----------
    def forward(self, batch: dict) -> dict:
        """batch {"points": (B, N, 3), "label": (B,)} -> {"loss", "cls_loss", "rec_loss", "acc", "logits"}."""
        if "label" not in batch:
            raise KeyError("MATE: the batch has no 'label' (joint training needs labels); "
                           "use model.reconstruction_loss(points) for unlabelled clouds")
        points = batch["points"]
        if self.training and self.augment is not None:
            points = self.augment(points)
        groups, tokens, pos = self.tokenize(points)
        out = classification_outputs(self.head(self.encoder, tokens, pos), batch, self.label_smoothing)
        rec_loss = self.masked_reconstruction(groups, tokens, pos)
        cls_loss = out.pop("loss")
        return {"loss": cls_loss + self.rec_weight * rec_loss, "cls_loss": cls_loss, "rec_loss": rec_loss, **out}

    def classify(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) -> logits (B, num_classes) from every patch (nothing masked, no augmentation)."""
        _, tokens, pos = self.tokenize(points)
        return self.head(self.encoder, tokens, pos)

    def reconstruction_loss(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Chamfer-L2 on the patches hidden at ``mask_ratio`` (drawn from ``generator``) -> scalar; no augmentation."""
        return self.masked_reconstruction(*self.tokenize(points), generator=generator)
