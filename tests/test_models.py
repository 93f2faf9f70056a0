"""Point-MAE tokenizer, masking, pre-trainer and classifier: shapes, masks, gradients, errors."""
from __future__ import annotations

import pytest
import torch

from pcmae.downstream import PointClassifier
from pcmae.masking import block_mask, make_mask, random_mask
from pcmae.pretrainers import PointMAE
from pcmae.tokenizers import MiniPointNet, PointGrouper, TooFewPointsError

SMALL = dict(num_groups=16, group_size=8, embed_dim=48, depth=2, num_heads=3, decoder_depth=1, decoder_num_heads=3)


def cloud(b=2, n=256, seed=0):
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


def test_grouper_patches_are_nearest_points_around_fps_centers():
    xyz = cloud()
    groups = PointGrouper(num_groups=16, group_size=8)(xyz)
    assert groups.centers.shape == (2, 16, 3) and groups.neighborhoods.shape == (2, 16, 8, 3)
    assert torch.equal(groups.centers[:, 0], xyz[:, 0])  # FPS starts at index 0
    # each patch = the 8 nearest points of its center, made relative
    d = torch.cdist(groups.centers, xyz, compute_mode="donot_use_mm_for_euclid_dist")  # exact
    expected = d.topk(8, largest=False).values
    got = groups.neighborhoods.norm(dim=-1).sort(dim=-1).values
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_grouper_rejects_too_few_points():
    with pytest.raises(TooFewPointsError, match="20 points is too small for 16 groups of 32"):
        PointGrouper(16, 32)(cloud(n=20))


def test_mini_pointnet_is_permutation_invariant_within_a_patch():
    net = MiniPointNet(32).eval()
    patches = torch.randn(2, 4, 10, 3)
    perm = torch.randperm(10)
    torch.testing.assert_close(net(patches), net(patches[:, :, perm]))


@pytest.mark.parametrize("ratio", [0.0, 0.6, 0.9])
def test_random_mask_hides_exact_count(ratio):
    mask = random_mask(5, 64, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (5, 64)
    assert (mask.sum(1) == int(ratio * 64)).all()
    if ratio:
        assert not torch.equal(mask[0], mask[1])


def test_block_mask_hides_the_nearest_tokens_of_one_seed():
    centers = torch.rand(3, 64, 3)
    mask = block_mask(centers, 0.5, generator=torch.Generator().manual_seed(0))
    assert (mask.sum(1) == 32).all()
    for b in range(3):  # every hidden token is closer to the hidden set's seed than every visible one
        hidden, shown = centers[b][mask[b]], centers[b][~mask[b]]
        seed = hidden[torch.cdist(hidden, hidden).max(1).values.argmin()]
        assert torch.cdist(seed[None], hidden).max() <= torch.cdist(seed[None], shown).min() + 0.5


def test_bad_mask_settings_are_errors():
    with pytest.raises(ValueError, match="mask ratio"):
        random_mask(1, 10, 1.0)
    with pytest.raises(ValueError, match="unknown mask_type 'grid'"):
        make_mask("grid", torch.rand(1, 10, 3), 0.5)


def test_point_mae_forward_backward():
    torch.manual_seed(0)
    model = PointMAE(**SMALL)
    out = model({"points": cloud()})
    assert out["loss"].ndim == 0 and out["loss"] > 0
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_point_mae_reconstruction_shapes_and_masking():
    model = PointMAE(**SMALL, mask_ratio=0.75).eval()
    rec = model.reconstruct(cloud(b=3))
    assert rec["visible"].shape == (3, 4 * 8, 3)  # 16 groups, 12 hidden, 4 visible x 8 points
    assert rec["reconstruction"].shape == (3, 12 * 8, 3)
    assert rec["latent"].shape == (3, 4, 48)
    assert model.encode(cloud(b=3)).shape == (3, 16, 48)


def test_point_mae_learns_to_reconstruct():
    torch.manual_seed(0)
    model = PointMAE(**SMALL, drop_path_rate=0.0, augment="none")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch = {"points": cloud(b=4, n=256, seed=1)}
    losses = []
    for _ in range(40):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_encoder_sees_only_visible_tokens():
    """The latent equals the encoder run on the visible tokens alone, in their original order."""
    model = PointMAE(**SMALL).eval()
    xyz = cloud(b=2, n=256)
    latent, mask, groups = model.forward_encoder(xyz)
    tokens, pos = model.encoder.embed(groups.neighborhoods, groups.centers)
    for b in range(2):
        alone = model.encoder(tokens[b][~mask[b]][None], pos[b][~mask[b]][None])
        torch.testing.assert_close(latent[b:b + 1], alone)


def test_classifier_logits_loss_and_encoder_transfer():
    torch.manual_seed(0)
    pre = PointMAE(**SMALL)
    with torch.no_grad():  # random values everywhere: a fresh LayerNorm (all ones) would match without any transfer
        for p in pre.encoder.parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(1)
    cls_kwargs = {k: v for k, v in SMALL.items() if not k.startswith("decoder")}
    clf = PointClassifier(num_classes=5, **cls_kwargs)
    want, before = pre.encoder.state_dict(), {k: v.clone() for k, v in clf.encoder.state_dict().items()}
    for name, _ in pre.encoder.named_parameters():
        assert not torch.equal(before[name], want[name]), name
    clf.load_encoder_from_pretrainer(pre.state_dict())
    got = clf.encoder.state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name
    out = clf({"points": cloud(b=4), "label": torch.tensor([0, 1, 2, 3])})
    assert out["logits"].shape == (4, 5) and out["loss"] > 0
    out["loss"].backward()
    assert clf.head.cls_token.grad is not None
    with pytest.raises(ValueError, match="no 'encoder"):
        clf.load_encoder_from_pretrainer({"head.0.weight": torch.zeros(1)})


def test_point_mae_trains_under_bf16_autocast():
    model = PointMAE(**SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model({"points": cloud()})["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # Chamfer runs in float32 under autocast
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_point_mae_picture_is_an_rgb_image_and_leaves_rng_and_mode_alone():
    import numpy as np

    model = PointMAE(**SMALL).train()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    image = model.picture({"points": cloud(b=2)})
    assert torch.equal(torch.get_rng_state(), state) and model.training
    assert image.dtype == np.uint8 and image.shape[2] == 3 and image.shape[0] == 600 and image.shape[1] == 900
    assert (image < 200).any() and (image == 255).any()
    assert np.array_equal(model.picture({"points": cloud(b=2)}), image)
