"""Point-MAE (Pang et al., ECCV 2022): mask point patches, encode the visible ones, rebuild the hidden ones.

The decoder is its own module (pcmae/backbones/point_mae_parts.py, shared with the joint model MATE).
Read top to bottom: grouping ->
masking -> encoder on visible tokens -> light decoder on [visible, mask tokens] -> points of each masked patch
-> Chamfer-L2 against the true patch.
Defaults are the paper's ShapeNet-55 configuration (64 x 32 patches, width 384, 12 + 4 blocks).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pcmae.augment import get_augmentation
from pcmae.backbones.point_mae_parts import (LEGACY_DECODER_KEYS, PointMAEDecoder, legacy_keys_hook,
                                             patch_chamfer_loss, rename_legacy_keys, select_tokens)
from pcmae.backbones.transformer import PointTransformerEncoder, init_vit_weights
from pcmae.masking import make_mask
from pcmae.registry import MODELS
from pcmae.tokenizers.point_groups import PointGrouper


@MODELS.register
class PointMAE(nn.Module):
    def __init__(self, num_groups: int = 64, group_size: int = 32, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, drop_path_rate: float = 0.1, decoder_depth: int = 4,
                 decoder_num_heads: int = 6, mask_ratio: float = 0.6, mask_type: str = "rand",
                 augment: str = "scale_translate", embed_visible_only: bool = True):
        super().__init__()
        self.mask_ratio = mask_ratio
        # True: the mini-PointNet embeds only the visible patches (MiniPointNet.forward_visible; BatchNorm still
        # normalises with the statistics of all patches); False: all patches, then the visible ones are kept,
        # Point-MAE's order of operations. Equal up to float32 rounding; True does ~45 % of the embedding work.
        self.embed_visible_only = embed_visible_only
        self.mask_type = mask_type
        self.augment = get_augmentation(augment)
        self.grouper = PointGrouper(num_groups, group_size)
        self.encoder = PointTransformerEncoder(embed_dim, depth, num_heads, drop_path_rate)
        self.encoder.apply(init_vit_weights)
        self.decoder = PointMAEDecoder(embed_dim, group_size, decoder_depth, decoder_num_heads, drop_path_rate)
        self.register_load_state_dict_pre_hook(legacy_keys_hook(LEGACY_DECODER_KEYS))

    def upgrade_state_dict(self, state_dict: dict) -> dict:
        """A copy of ``state_dict`` with old key names renamed (what ``load_state_dict`` will see)."""
        return rename_legacy_keys(dict(state_dict), LEGACY_DECODER_KEYS)

    def no_weight_decay(self):
        return {"decoder.mask_token"}

    def forward_encoder(self, points: torch.Tensor, mask: torch.Tensor | None = None,
                        generator: torch.Generator | None = None):
        """points: (B, N, 3) -> latent of visible tokens (B, V, C), mask (B, G), groups."""
        groups = self.grouper(points)
        if mask is None:
            mask = make_mask(self.mask_type, groups.centers, self.mask_ratio, generator)
        keep = ~mask
        if self.embed_visible_only:  # the same tokens, without embedding the hidden patches
            tokens = self.encoder.patch_embed.forward_visible(groups.neighborhoods, keep)  # (B, V, C)
        else:
            tokens = select_tokens(self.encoder.patch_embed(groups.neighborhoods), keep)
        latent = self.encoder(tokens, self.encoder.pos_embed(select_tokens(groups.centers, keep)))
        return latent, mask, groups

    def forward_decoder(self, latent: torch.Tensor, centers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent (B, V, C) + centers (B, G, 3) -> predicted patches of the masked tokens (B, M, K, 3)."""
        return self.decoder(latent, centers, mask)

    def forward_loss(self, predicted: torch.Tensor, neighborhoods: torch.Tensor, mask: torch.Tensor):
        """Chamfer-L2 between predicted (B, M, K, 3) and true masked patches, averaged over patches."""
        return patch_chamfer_loss(predicted, neighborhoods, mask)

    def forward(self, batch: dict) -> dict:
        points = batch["points"]
        if self.training and self.augment is not None:
            points = self.augment(points)
        latent, mask, groups = self.forward_encoder(points)
        predicted = self.forward_decoder(latent, groups.centers, mask)
        return {"loss": self.forward_loss(predicted, groups.neighborhoods, mask)}

    @torch.no_grad()
    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """All tokens, nothing masked: points (B, N, 3) -> features (B, G, C), e.g. for linear probes."""
        groups = self.grouper(points)
        return self.encoder(*self.encoder.embed(groups.neighborhoods, groups.centers))

    @torch.no_grad()
    def reconstruct(self, points: torch.Tensor, mask: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> dict:
        """For pictures and evaluation: absolute-coordinate visible and predicted points per sample."""
        latent, mask, groups = self.forward_encoder(points, mask, generator)
        predicted = self.forward_decoder(latent, groups.centers, mask)  # (B, M, K, 3)
        visible = groups.neighborhoods[~mask] + groups.centers[~mask].unsqueeze(1)  # (B*V, K, 3)
        rebuilt = predicted + select_tokens(groups.centers, mask).unsqueeze(2)
        b = points.shape[0]
        return {"input": points, "visible": visible.reshape(b, -1, 3), "reconstruction": rebuilt.reshape(b, -1, 3),
                "mask": mask, "latent": latent}

    @torch.no_grad()
    def picture(self, batch: dict, seed: int = 0) -> np.ndarray:
        """input | visible | reconstruction + visible for each cloud of ``batch`` (the dataset's collate output,
        on the model's device) -> uint8 image (H, W, 3). The mask is drawn from a generator seeded with ``seed``
        (the global RNG is left alone); train / eval mode is restored."""
        from pcmae.visualization import figure_to_array, reconstruction_figure, reconstruction_samples

        points = batch["points"]
        generator = torch.Generator(device=points.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            rec = self.reconstruct(points, generator=generator)
        finally:
            self.train(was_training)
        return figure_to_array(reconstruction_figure(reconstruction_samples(rec)))
