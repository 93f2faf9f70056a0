"""Patch attention along space-filling curves: exact when one patch holds a sample, samples never mix."""
from __future__ import annotations

import torch

from pcmae.backbones.serialized_transformer import PatchLayout, SerializedPatchTransformer, z_order_key


def random_tokens(counts, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.cat([torch.full((n, 1), b), torch.randint(0, 50, (n, 3), generator=g)], 1)
                        for b, n in enumerate(counts)]).int()
    return torch.randn(len(coords), dim, generator=g), coords, torch.randn(len(coords), dim, generator=g)


def test_z_order_key_interleaves_bits_and_keeps_batches_apart():
    coords = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    assert z_order_key(coords).tolist() == [1, 2, 4, 1 << 48]
    assert z_order_key(coords, transpose=True).tolist() == [2, 1, 4, 1 << 48]


def test_layout_round_trips_and_pads_per_sample():
    x, coords, _ = random_tokens([5, 9, 1])
    layout = PatchLayout(coords, patch_size=4, transpose=False)
    patches = layout.to_patches(x)
    assert patches.shape == (2 + 3 + 1, 4, 16)  # ceil(5/4) + ceil(9/4) + ceil(1/4) patches
    assert torch.equal(layout.from_patches(patches), x)
    assert layout.attn_mask.sum() == 15


def test_one_patch_per_sample_equals_full_attention_per_sample():
    torch.manual_seed(0)
    model = SerializedPatchTransformer(dim=16, depth=2, num_heads=2, patch_size=64).eval()
    x, coords, pos = random_tokens([30, 17])
    out = model(x, coords, pos)
    for b in range(2):
        sel = coords[:, 0] == b
        xb, pb = x[sel][None], pos[sel][None]
        for block in model.blocks:  # full attention, no mask, no padding
            xb = block(xb + pb)
        torch.testing.assert_close(out[sel], model.norm(xb)[0], atol=1e-5, rtol=1e-5)


def test_samples_do_not_mix_and_gradients_flow():
    torch.manual_seed(0)
    model = SerializedPatchTransformer(dim=16, depth=3, num_heads=2, patch_size=8)
    x, coords, pos = random_tokens([40, 40])
    x.requires_grad_(True)
    out = model(x, coords, pos)
    x2 = x.detach().clone()
    x2[coords[:, 0] == 1] += 1.0
    out2 = model(x2, coords, pos)
    assert torch.equal(out[coords[:, 0] == 0], out2[coords[:, 0] == 0])
    assert not torch.allclose(out[coords[:, 0] == 1], out2[coords[:, 0] == 1])
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
