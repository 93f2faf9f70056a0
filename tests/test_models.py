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


# --- the faster paths of a Point-MAE step equal the plain ones and the independent reference -----------------

def _randomized_mini_pointnet(dim=48, seed=0):
    from tests.point_mae_reference import randomize_
    net = MiniPointNet(dim)
    randomize_(net, seed)
    return net


@pytest.mark.parametrize("train", [True, False])
def test_mini_pointnet_visible_only_equals_all_patches_then_select(train):
    """float64, so the closed-form BatchNorm statistics must agree to ~1e-12: values, running statistics and
    the gradient of every parameter (train mode normalises with the statistics of ALL patches)."""
    from pcmae.tokenizers.point_groups import select_patches
    full, visible = _randomized_mini_pointnet().double(), _randomized_mini_pointnet().double()
    full.train(train), visible.train(train)
    patches = torch.randn(3, 10, 8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.2
    keep = torch.rand(3, 10, generator=torch.Generator().manual_seed(2)).argsort(dim=1) < 4
    expected = select_patches(full(patches), keep)
    got = visible.forward_visible(patches, keep)
    assert got.shape == (3, 4, 48)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    for (name, a), b in zip(full.state_dict().items(), visible.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12, msg=name)
    weights = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, a), b in zip(full.named_parameters(), visible.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-10, rtol=1e-8, msg=name)
    assert full.second_conv[0].weight.grad.abs().max() > 0


def test_mini_pointnet_visible_only_takes_the_full_path_under_sync_batchnorm(monkeypatch):
    """SyncBatchNorm gathers statistics across ranks, which the closed form cannot: embed all, then select."""
    net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(_randomized_mini_pointnet()).train()
    assert isinstance(net.second_conv[1], torch.nn.SyncBatchNorm)
    calls = []
    monkeypatch.setattr(net, "forward", lambda patches: calls.append(patches.shape) or torch.zeros(2, 5, 48))
    keep = torch.tensor([[True, False, True, False, False]] * 2)
    out = net.forward_visible(torch.zeros(2, 5, 8, 3), keep)
    assert calls == [(2, 5, 8, 3)] and out.shape == (2, 2, 48)


def test_block_forward_tail_equals_the_last_tokens_of_forward():
    from pcmae.backbones.transformer import Block
    torch.manual_seed(0)
    block = Block(48, 3, drop_path=0.5).train()
    x = torch.randn(6, 10, 48, requires_grad=True)
    torch.manual_seed(1)
    expected = block(x)[:, -4:]
    torch.manual_seed(1)  # the same drop-path draws
    got = block.forward_tail(x, 4)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    gx_expected, = torch.autograd.grad(expected.sum(), x)
    gx, = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(gx, gx_expected, atol=1e-6, rtol=1e-6)
    assert gx[:, :6].abs().sum() > 0  # the other tokens still feed the kept ones through attention


def test_point_mae_train_mode_step_matches_the_reference():
    """Train mode (BatchNorm on batch statistics, as in pre-training): pcmae's visible-only embedding and
    last-block decoder give the reference's encoder output, reconstruction, Chamfer loss, gradients and
    BatchNorm running statistics."""
    from pcmae.integrations.point_mae_checkpoint import convert_state_dict
    from tests.point_mae_reference import RefPointMAE, randomize_
    ref = RefPointMAE(c=48, depth=2, heads=3, decoder_depth=2, num_group=16, group_size=8).train()
    randomize_(ref, seed=4)
    model = PointMAE(**{**SMALL, "decoder_depth": 2}, drop_path_rate=0.0, augment="none").train()
    model.load_state_dict(convert_state_dict(ref.state_dict())[0], strict=True)
    pts = cloud(b=4, seed=5)
    mask = torch.rand(4, 16, generator=torch.Generator().manual_seed(6)).argsort(dim=1) < 9

    ref_latent, ref_rebuild = ref(pts, mask)
    neighborhood, _ = ref.group_divider(pts)
    target = neighborhood[mask].float()
    d = (ref_rebuild.unsqueeze(2) - target.unsqueeze(1)).square().sum(-1)  # dense Chamfer-L2
    ref_loss = d.min(dim=2).values.mean() + d.min(dim=1).values.mean()
    latent, _, groups = model.forward_encoder(pts, mask)
    predicted = model.forward_decoder(latent, groups.centers, mask)
    loss = model.forward_loss(predicted, groups.neighborhoods, mask)
    torch.testing.assert_close(latent, ref_latent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predicted.reshape(ref_rebuild.shape), ref_rebuild, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)

    ref_loss.backward()
    loss.backward()
    ref_grads = convert_state_dict({k: p.grad for k, p in ref.named_parameters()})[0]
    for name, p in model.named_parameters():  # a bias right before train-mode BatchNorm has gradient 0 + noise
        scale = max(float(ref_grads[n].abs().max()) for n in {name, name.replace(".bias", ".weight")}
                    if n in ref_grads)
        torch.testing.assert_close(p.grad, ref_grads[name], atol=1e-4 * scale + 1e-7, rtol=1e-3, msg=name)
    ref_state = convert_state_dict(ref.state_dict())[0]
    for name, t in model.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(t, ref_state[name], atol=1e-6, rtol=1e-5, msg=name)
