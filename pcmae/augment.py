"""Batched training augmentations on tensors (applied on the batch's device, as Point-MAE does)."""
from __future__ import annotations

import torch


def scale_and_translate(xyz: torch.Tensor, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0,
                        translate: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample anisotropic scale in [low, high] and shift in [-t, t] per axis; xyz: (B, N, 3)."""
    b = xyz.shape[0]
    opts = dict(device=xyz.device, dtype=xyz.dtype, generator=generator)
    scale = torch.rand(b, 1, 3, **opts) * (scale_high - scale_low) + scale_low
    shift = (torch.rand(b, 1, 3, **opts) * 2 - 1) * translate
    return xyz * scale + shift



def scale_and_shift(xyz: torch.Tensor, scale_low: float = 0.8, scale_high: float = 1.25, shift: float = 0.1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample isotropic scale in [low, high] and shift in [-s, s] per axis (Point-MAE's part segmentation
    training); xyz: (B, N, 3)."""
    b = xyz.shape[0]
    opts = dict(device=xyz.device, dtype=xyz.dtype, generator=generator)
    scale = torch.rand(b, 1, 1, **opts) * (scale_high - scale_low) + scale_low
    return xyz * scale + (torch.rand(b, 1, 3, **opts) * 2 - 1) * shift


AUGMENTATIONS = {"none": None, "scale_translate": scale_and_translate, "scale_shift": scale_and_shift}


def get_augmentation(name: str):
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose from {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]
