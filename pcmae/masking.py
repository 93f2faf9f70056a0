"""Choose which tokens are hidden. Every function returns ``mask: (B, T) bool``, True = masked."""
from __future__ import annotations

import torch


def num_masked(num_tokens: int, ratio: float) -> int:
    """Tokens hidden per sample: ``int(ratio * num_tokens)``, as Point-MAE counts them."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(ratio * num_tokens)


def random_mask(batch_size: int, num_tokens: int, ratio: float, device=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide exactly ``int(ratio * T)`` uniformly chosen tokens per sample -> (B, T) bool."""
    n_mask = num_masked(num_tokens, ratio)
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    rank = noise.argsort(dim=1).argsort(dim=1)  # rank of each token's noise
    return rank < n_mask


def block_mask(centers: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide the ``int(ratio * T)`` tokens nearest to one random token of each sample (Point-MAE 'block').

    centers: (B, T, 3) -> (B, T) bool.
    """
    b, t, _ = centers.shape
    n_mask = num_masked(t, ratio)
    seed_idx = torch.randint(0, t, (b,), generator=generator, device=centers.device)
    seed = centers[torch.arange(b, device=centers.device), seed_idx]  # (B, 3)
    dist = (centers - seed.unsqueeze(1)).norm(dim=-1)  # (B, T)
    rank = dist.argsort(dim=1, stable=True).argsort(dim=1)
    return rank < n_mask


def make_mask(kind: str, centers: torch.Tensor, ratio: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Dispatch on the config's ``mask_type`` ('rand' or 'block'); centers: (B, T, 3) -> (B, T) bool."""
    if kind == "rand":
        return random_mask(centers.shape[0], centers.shape[1], ratio, centers.device, generator)
    if kind == "block":
        return block_mask(centers, ratio, generator)
    raise ValueError(f"unknown mask_type {kind!r}; use 'rand' or 'block'")
