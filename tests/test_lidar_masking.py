"""LiDAR masks: drawn per sample, measured in metres / radians around each sample's sensor."""
from __future__ import annotations

import math

import pytest
import torch

from pcmae.masking import polar_coordinates, radial_mask, random_token_mask, range_aware_mask


def sweep_tokens(counts, seed=0, extent=60.0):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.cat([(torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([extent, extent, 2.0]) for n in counts])
    batch_idx = torch.cat([torch.full((n,), b) for b, n in enumerate(counts)])
    return xyz, batch_idx


def test_random_token_mask_ratio_per_sample():
    xyz, batch_idx = sweep_tokens([1000, 333, 0, 50])
    mask = random_token_mask(batch_idx, 0.7, generator=torch.Generator().manual_seed(0))
    per_sample = torch.bincount(batch_idx[mask], minlength=4)
    assert per_sample.tolist() == [700, 233, 0, 35]


def test_range_aware_mask_matches_ratio_per_bin_and_sample():
    xyz, batch_idx = sweep_tokens([5000, 4000])
    bins, ratios = [20.0, 40.0, math.inf], [0.5, 0.7, 0.9]
    mask = range_aware_mask(xyz, batch_idx, bins, ratios, generator=torch.Generator().manual_seed(1))
    rng, _ = polar_coordinates(xyz, batch_idx)
    lower = [0.0] + bins[:-1]
    for b in range(2):
        for lo, hi, ratio in zip(lower, bins, ratios):
            sel = (batch_idx == b) & (rng >= lo) & (rng < hi)
            assert sel.sum() > 100
            assert abs(mask[sel].float().mean().item() - ratio) < 0.02


def test_range_is_measured_from_each_samples_sensor():
    xyz, batch_idx = sweep_tokens([3000])
    origin = torch.tensor([[100.0, 0.0, 0.0]])
    shifted = xyz + origin  # the same sweep, sensor moved 100 m along x
    m1 = range_aware_mask(xyz, batch_idx, [30.0, math.inf], [0.0, 0.9], generator=torch.Generator().manual_seed(3))
    m2 = range_aware_mask(shifted, batch_idx, [30.0, math.inf], [0.0, 0.9], origins=origin,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(m1, m2)
    near = torch.hypot(xyz[:, 0], xyz[:, 1]) < 30
    assert not m1[near].any()


@pytest.mark.parametrize("ratio,sector", [(0.8, 1.0), (0.9, 5.0)])
def test_radial_mask_hides_whole_sectors_per_sample(ratio, sector):
    xyz, batch_idx = sweep_tokens([20000, 20000], seed=2)
    mask, hidden = radial_mask(xyz, batch_idx, 2, ratio, sector_deg=sector, generator=torch.Generator().manual_seed(0))
    num_sectors = round(360 / sector)
    assert hidden.shape == (2, num_sectors)
    assert abs(hidden.float().mean(1) - ratio).max() < 0.02
    assert not torch.equal(hidden[0], hidden[1])  # drawn per sample
    _, az = polar_coordinates(xyz, batch_idx)
    sector_idx = (az / (2 * math.pi) * num_sectors).long()
    assert torch.equal(mask, hidden[batch_idx, sector_idx])
    assert abs(mask.float().mean().item() - ratio) < 0.02


def test_radial_mask_rejects_bad_settings():
    xyz, batch_idx = sweep_tokens([10])
    with pytest.raises(ValueError, match="sector_deg=7.0"):
        radial_mask(xyz, batch_idx, 1, 0.8, sector_deg=7.0)
    with pytest.raises(ValueError, match="mask ratio"):
        random_token_mask(batch_idx, 1.5)


@pytest.mark.parametrize("cfg, reference", [
    ({"type": "random", "ratio": 0.6}, lambda xyz, b, g: random_token_mask(b, 0.6, g)),
    ({"type": "range_aware", "range_bins": [20.0, math.inf], "ratios": [0.3, 0.8]},
     lambda xyz, b, g: range_aware_mask(xyz, b, [20.0, math.inf], [0.3, 0.8], generator=g)),
    ({"type": "radial", "ratio": 0.5, "sector_deg": 5.0},
     lambda xyz, b, g: radial_mask(xyz, b, 2, 0.5, 5.0, generator=g)[0]),
])
def test_registered_rules_equal_the_mask_functions(cfg, reference):
    from pcmae.registry import MASKINGS

    xyz, batch_idx = sweep_tokens([800, 600])
    rule = MASKINGS.build(cfg, "model.masking")
    got = rule(xyz, batch_idx, 2, None, torch.Generator().manual_seed(3))
    assert torch.equal(got, reference(xyz, batch_idx, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("cfg, message", [
    ({"type": "radial", "sector_deg": 7.0}, r"'model\.masking\.sector_deg' = 7\.0 must divide 360"),
    ({"type": "radial", "sector_deg": 0.0}, r"'model\.masking\.sector_deg' = 0\.0 must divide 360"),
    ({"type": "random", "ratio": 1.0}, r"'model\.masking\.ratio' must be in \[0, 1\), got 1\.0"),
    ({"type": "range_aware", "range_bins": [10.0], "ratios": [0.5, 0.6]}, "'model.masking.range_bins' .* differ"),
    ({"type": "range_aware", "range_bins": [10.0], "ratios": ["x"]}, r"'model\.masking\.ratios' must be in"),
])
def test_bad_rule_settings_fail_when_the_model_is_built(cfg, message):
    from pcmae.registry import MASKINGS, ConfigError

    with pytest.raises(ConfigError, match=message):
        MASKINGS.build(cfg, "model.masking")
