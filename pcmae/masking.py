"""Choose which tokens are hidden. Every function returns ``mask: (B, T) bool``, True = masked."""
from __future__ import annotations

import torch

from pcmae.registry import MASKINGS, ConfigError


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


# --- LiDAR: masks defined in metres and radians around each sample's sensor -----------------------
#
# Every rule is drawn per sample (not once per batch) and on geometry measured from the sensor origin
# of that sample, not in voxel-index units from the grid corner.


def rank_within_groups(group: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random order inside each group: (rank (T,) from 0 in each group, size of each item's group (T,))."""
    noise = torch.rand(group.shape[0], generator=generator, device=group.device, dtype=torch.float64)
    order = torch.argsort(group.double() * 2.0 + noise)  # groups stay contiguous, random inside
    sizes = torch.bincount(group)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.shape[0], device=group.device) - starts[group[order]]
    return rank, sizes[group]


def polar_coordinates(xyz: torch.Tensor, batch_idx: torch.Tensor, origins: torch.Tensor | None = None):
    """Horizontal range (metres) and azimuth in [0, 2 pi) of token centers around each sample's sensor.

    xyz: (T, 3) metres; batch_idx: (T,); origins: (B, 3) sensor positions, default the frame origin.
    """
    if origins is not None:
        xyz = xyz - origins[batch_idx]
    rng = torch.hypot(xyz[:, 0], xyz[:, 1])
    azimuth = torch.remainder(torch.atan2(xyz[:, 1], xyz[:, 0]), 2 * torch.pi)
    return rng, azimuth


def random_token_mask(batch_idx: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide ``int(ratio * n_b)`` tokens of each sample b, uniformly (Voxel-MAE: 0.7) -> (T,) bool."""
    num_masked(1, ratio)  # validates the ratio
    rank, sizes = rank_within_groups(batch_idx, generator)
    return rank < (sizes.double() * ratio).floor().long()


def range_aware_mask(xyz: torch.Tensor, batch_idx: torch.Tensor, range_bins, ratios,
                     origins: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A masking ratio per horizontal-range bin: ``range_bins`` = upper edges in metres (last may be inf).

    Tokens beyond the last edge use the last ratio. Exactly ``int(ratio * n)`` per (sample, bin) -> (T,) bool.
    """
    if len(range_bins) != len(ratios):
        raise ValueError(f"range_bins ({len(range_bins)}) and ratios ({len(ratios)}) differ in length")
    for r in ratios:
        num_masked(1, r)
    rng, _ = polar_coordinates(xyz, batch_idx, origins)
    edges = torch.tensor(list(range_bins), dtype=rng.dtype, device=rng.device)
    bin_idx = torch.bucketize(rng, edges, right=True).clamp(max=len(ratios) - 1)
    rank, sizes = rank_within_groups(batch_idx * len(ratios) + bin_idx, generator)
    ratio = torch.tensor(list(ratios), dtype=torch.float64, device=rng.device)[bin_idx]
    return rank < (sizes.double() * ratio).floor().long()


def radial_mask(xyz: torch.Tensor, batch_idx: torch.Tensor, batch_size: int, ratio: float,
                sector_deg: float = 1.0, origins: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """R-MAE: hide whole angular sectors of width ``sector_deg``; ``int(ratio * S)`` sectors per sample.

    Returns (token mask (T,) bool, sector mask (B, S) bool) — the latter tells the decoder which
    directions are hidden, e.g. to sample empty query voxels there.
    """
    num_masked(1, ratio)
    num_sectors = int(round(360.0 / sector_deg))
    if num_sectors < 2 or abs(num_sectors * sector_deg - 360.0) > 1e-6:
        raise ValueError(f"sector_deg={sector_deg} must divide 360 into at least 2 sectors")
    noise = torch.rand(batch_size, num_sectors, generator=generator, device=xyz.device)
    hidden_sectors = noise.argsort(dim=1).argsort(dim=1) < int(ratio * num_sectors)  # (B, S)
    _, azimuth = polar_coordinates(xyz, batch_idx, origins)
    sector = (azimuth / (2 * torch.pi) * num_sectors).long().clamp(max=num_sectors - 1)
    return hidden_sectors[batch_idx, sector], hidden_sectors


# --- LiDAR masking rules as registry entries (``model.masking: {type: random | range_aware | radial, ...}``) -----
#
# Each rule is built once from its config and called on the voxel tokens of a batch:
#   rule(centers (T, 3) metres, batch_idx (T,), batch_size, origins (B, 3) | None, generator) -> (T,) bool.


def _check_ratio(ratio, key: str) -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"'model.masking.{key}' must be in [0, 1), got {ratio!r}")


@MASKINGS.register(name="random")
class RandomTokenMasking:
    """Voxel-MAE: hide ``int(ratio * n_b)`` uniformly chosen tokens of each sample."""

    def __init__(self, ratio: float = 0.7):
        _check_ratio(ratio, "ratio")
        self.ratio = ratio

    def __call__(self, centers, batch_idx, batch_size, origins=None, generator=None) -> torch.Tensor:
        return random_token_mask(batch_idx, self.ratio, generator)


@MASKINGS.register(name="range_aware")
class RangeAwareMasking:
    """A ratio per horizontal-range bin around the sensor; ``range_bins`` are upper edges in metres."""

    def __init__(self, range_bins=(20.0, 40.0, float("inf")), ratios=(0.5, 0.7, 0.9)):
        if len(range_bins) != len(ratios):
            raise ConfigError(f"'model.masking.range_bins' ({len(range_bins)}) and 'model.masking.ratios' "
                              f"({len(ratios)}) differ in length")
        for r in ratios:
            _check_ratio(r, "ratios")
        self.range_bins, self.ratios = tuple(float(v) for v in range_bins), tuple(ratios)

    def __call__(self, centers, batch_idx, batch_size, origins=None, generator=None) -> torch.Tensor:
        return range_aware_mask(centers, batch_idx, self.range_bins, self.ratios, origins, generator)


@MASKINGS.register(name="radial")
class RadialMasking:
    """R-MAE: hide ``int(ratio * S)`` whole angular sectors of ``sector_deg`` degrees per sample."""

    def __init__(self, ratio: float = 0.8, sector_deg: float = 1.0):
        _check_ratio(ratio, "ratio")
        num_sectors = int(round(360.0 / sector_deg)) if isinstance(sector_deg, (int, float)) and sector_deg > 0 else 0
        if num_sectors < 2 or abs(num_sectors * sector_deg - 360.0) > 1e-6:
            raise ConfigError(f"'model.masking.sector_deg' = {sector_deg} must divide 360 into at least 2 sectors")
        self.ratio, self.sector_deg = ratio, sector_deg

    def __call__(self, centers, batch_idx, batch_size, origins=None, generator=None) -> torch.Tensor:
        return radial_mask(centers, batch_idx, batch_size, self.ratio, self.sector_deg, origins, generator)[0]
