"""The parts that Point-MAE's models compose: the light decoder and the classification head.

``PointMAEDecoder``: [visible latent, mask tokens] + center positions -> points of each masked patch.
``ClassificationHead``: cls token + cls position through the encoder -> MLP -> logits.
PointMAE (decoder), PointClassifier (head) and MATE (both) build the same grouper / encoder and these parts.
``rename_legacy_keys`` / ``legacy_keys_hook`` let checkpoints written before these modules existed load strictly.
"""
from __future__ import annotations

import torch
from torch import nn

from pcmae.backbones.transformer import TransformerStack, init_vit_weights, position_mlp
from pcmae.ops import chamfer_distance


def select_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x: (B, T, C), keep: (B, T) bool with the same count per row -> (B, T_keep, C), order kept."""
    return x[keep].reshape(x.shape[0], -1, x.shape[-1])


class PointMAEDecoder(nn.Module):
    """Point-MAE's light decoder: [visible latent, mask tokens] + center positions -> points of each masked patch.

    Parameters in the released order: ``mask_token``, ``pos_embed`` (center MLP), ``blocks`` + ``norm``
    (a TransformerStack's layout), ``head`` (one token -> ``group_size`` points).
    """

    def __init__(self, embed_dim: int = 384, group_size: int = 32, depth: int = 4, num_heads: int = 6,
                 drop_path_rate: float = 0.1):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = position_mlp(embed_dim)
        stack = TransformerStack(embed_dim, depth, num_heads, drop_path_rate)
        self.blocks, self.norm = stack.blocks, stack.norm  # keys decoder.blocks.* / decoder.norm.* as released
        self.head = nn.Linear(embed_dim, 3 * group_size)
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, centers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent (B, V, C) of the visible tokens, centers (B, G, 3), mask (B, G) True = hidden
        -> predicted patches of the masked tokens (B, M, K, 3), relative to their centers."""
        b, _, c = latent.shape
        pos_visible = self.pos_embed(select_tokens(centers, ~mask))
        pos_masked = self.pos_embed(select_tokens(centers, mask))
        num_masked = pos_masked.shape[1]
        x = torch.cat([latent, self.mask_token.expand(b, num_masked, c)], dim=1)
        pos = torch.cat([pos_visible, pos_masked], dim=1)
        if not len(self.blocks):
            return self.head(self.norm(x)[:, -num_masked:]).reshape(b, num_masked, -1, 3)
        for block in self.blocks[:-1]:  # the position is added before every block, as in the encoder
            x = block(x + pos)
        x = self.blocks[-1].forward_tail(x + pos, num_masked)  # only the masked tokens' outputs are read
        return self.head(self.norm(x)).reshape(b, num_masked, -1, 3)


# pcmae checkpoints written before the decoder was its own module: flat key prefix -> prefix under ``decoder.``
LEGACY_DECODER_KEYS = {"mask_token": "decoder.mask_token", "decoder_pos_embed.": "decoder.pos_embed.",
                       "reconstruction_head.": "decoder.head."}


def rename_legacy_keys(state_dict: dict, renames: dict, prefix: str = "") -> dict:
    """Rename, in place, keys ``prefix + old...`` to ``prefix + new...`` for each (old, new) of ``renames``
    (first match wins); returns ``state_dict``. Used by load_state_dict pre-hooks for old checkpoints."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        new = next((dst + rest[len(src):] for src, dst in renames.items() if rest.startswith(src)), None)
        if new is not None:
            state_dict[prefix + new] = state_dict.pop(key)
    return state_dict


def legacy_keys_hook(renames: dict):
    """A ``register_load_state_dict_pre_hook`` hook renaming old keys (``renames``) before a strict load."""
    def hook(module, state_dict, prefix, *args):
        rename_legacy_keys(state_dict, renames, prefix)
    return hook


def patch_chamfer_loss(predicted: torch.Tensor, neighborhoods: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Chamfer-L2 between predicted (B, M, K, 3) and true masked patches (``neighborhoods`` (B, G, K, 3) where
    ``mask`` (B, G)), averaged over patches."""
    target = neighborhoods[mask].float()  # (B*M, K, 3)
    # float32 even under bf16 autocast: squared distances of ~1e-3 lose too much in bf16
    return chamfer_distance(predicted.reshape(target.shape[0], -1, 3).float(), target, norm=2)


class ClassificationHead(nn.Module):
    """cls token + cls position run through the encoder with the patch tokens, then the MLP on
    concat(cls output, max over patch outputs). Keys: ``cls_token``, ``cls_pos``, ``mlp.*``."""

    def __init__(self, embed_dim: int = 384, num_classes: int = 40, dropout: float = 0.5):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.mlp = nn.Sequential(
            nn.Linear(2 * embed_dim, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def features(self, encoder: nn.Module, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``encoder`` over [cls, tokens (B, G, C)] with [cls_pos, pos (B, G, C)] -> (B, 2C) =
        concat(cls token output, max over patch token outputs)."""
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), pos], dim=1)
        x = encoder(x, pos)
        return torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)

    def forward(self, encoder: nn.Module, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens, pos (B, G, C) of every patch -> logits (B, num_classes)."""
        return self.mlp(self.features(encoder, tokens, pos))


