"""benchmarks/upstream_point_mae.py (upstream Point-MAE on CPU via stand-ins) and the side-by-side train benchmark.

The stand-ins are checked against pcmae's ops and the dense formulas; with an upstream checkout (env
PCMAE_UPSTREAM_POINT_MAE, or /work/upstream/Point-MAE) upstream's own model code is built and its train-mode
loss and gradients are compared with pcmae's on the same weights, batch, mask and seed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import train as train_bench
from benchmarks import upstream_point_mae as up
from pcmae.backbones.transformer import DropPath
from pcmae.integrations.point_mae_checkpoint import convert_state_dict
from pcmae.ops import chamfer_distance, farthest_point_sample
from pcmae.pretrainers import PointMAE

TINY = dict(num_groups=16, group_size=8, embed_dim=48, depth=2, num_heads=3, decoder_depth=2,
            decoder_num_heads=3, drop_path_rate=0.1)


def upstream_checkout() -> Path:
    path = Path(os.environ.get("PCMAE_UPSTREAM_POINT_MAE", "/work/upstream/Point-MAE"))
    if not (path / "models" / "Point_MAE.py").is_file():
        pytest.skip(f"no Point-MAE checkout at {path} (set PCMAE_UPSTREAM_POINT_MAE to one)")
    return path


def test_chamfer_stand_in_matches_pcmae_and_the_dense_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 3, generator=g, requires_grad=True)
    y = torch.randn(3, 15, 3, generator=g, requires_grad=True)
    dist1, dist2, idx1, idx2 = up.chamfer_forward(x, y)
    assert idx1.dtype == torch.int32 and dist1.shape == (3, 20) and dist2.shape == (3, 15)
    torch.testing.assert_close(dist1.mean() + dist2.mean(), chamfer_distance(x, y, norm=2))
    g1, g2 = torch.rand(3, 20, generator=g), torch.rand(3, 15, generator=g)
    grad_x, grad_y = up.chamfer_backward(x, y, idx1, idx2, g1, g2)
    d = (x.unsqueeze(2) - y.unsqueeze(1)).square().sum(-1)
    ex, ey = torch.autograd.grad((d.min(2).values * g1).sum() + (d.min(1).values * g2).sum(), (x, y))
    torch.testing.assert_close(grad_x, ex)
    torch.testing.assert_close(grad_y, ey)


def test_tokenizer_and_drop_path_stand_ins():
    xyz = torch.randn(2, 100, 3, generator=torch.Generator().manual_seed(1))
    idx = up.furthest_point_sample(xyz, 10)
    assert idx.dtype == torch.int32 and torch.equal(idx.long(), farthest_point_sample(xyz, 10))
    gathered = up.gather_operation(xyz.transpose(1, 2).contiguous(), idx)
    torch.testing.assert_close(gathered.transpose(1, 2), torch.stack([xyz[b, idx[b].long()] for b in range(2)]))
    centers = gathered.transpose(1, 2)
    dist, nn_idx = up.KNN(k=5, transpose_mode=True)(xyz, centers)
    exact = torch.cdist(centers.double(), xyz.double()).topk(5, largest=False)
    torch.testing.assert_close(dist.double(), exact.values, atol=1e-6, rtol=1e-6)
    assert torch.equal(nn_idx, exact.indices)
    with pytest.raises(NotImplementedError, match="transpose_mode=True"):
        up.KNN(k=5)
    x = torch.randn(8, 4, 6)
    theirs, ours = up.DropPath(0.3).train(), DropPath(0.3).train()
    torch.manual_seed(2)
    a = theirs(x)
    torch.manual_seed(2)
    torch.testing.assert_close(a, ours(x))
    assert (a == 0).all(dim=(1, 2)).any()  # some samples dropped


def test_a_folder_that_is_not_a_checkout_is_one_clear_error(tmp_path):
    with pytest.raises(up.UpstreamCheckoutError, match=f"{tmp_path}: not a Point-MAE checkout .*models/Point_MAE.py"):
        up.load_upstream(tmp_path)


def test_upstream_model_code_gives_pcmae_s_train_loss_and_gradients():
    module = up.load_upstream(upstream_checkout())
    assert not any(k.split(".")[0] in ("models", "utils", "timm", "knn_cuda", "chamfer") for k in sys.modules)
    torch.manual_seed(0)
    upstream = up.build_upstream(module, **TINY).train()
    state = convert_state_dict(upstream.state_dict())[0]
    model = PointMAE(**TINY, augment="none").train()
    model.load_state_dict(state, strict=True)
    pts = torch.rand(4, 256, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    np.random.seed(7)
    mask = up.upstream_mask(upstream, pts)
    np.random.seed(7)  # upstream's forward draws the same mask again
    torch.manual_seed(11)  # and both draw the same drop-path samples
    loss_upstream = upstream(pts)
    torch.manual_seed(11)
    latent, mask, groups = model.forward_encoder(pts, mask)
    loss = model.forward_loss(model.forward_decoder(latent, groups.centers, mask), groups.neighborhoods, mask)
    torch.testing.assert_close(loss, loss_upstream, atol=1e-6, rtol=1e-5)
    loss_upstream.backward()
    loss.backward()
    grads = convert_state_dict({k: p.grad for k, p in upstream.named_parameters()})[0]
    for name, p in model.named_parameters():  # a bias right before train-mode BatchNorm has gradient 0 + noise
        scale = max(float(grads[n].abs().max()) for n in {name, name.replace(".bias", ".weight")} if n in grads)
        torch.testing.assert_close(p.grad, grads[name], atol=1e-4 * scale + 1e-7, rtol=1e-3, msg=name)


def test_train_benchmark_rows_compare_codes_with_a_computed_loss_difference(monkeypatch):
    monkeypatch.setattr(train_bench, "PAPER", TINY)
    monkeypatch.setattr(train_bench, "DEMO", {**TINY, "depth": 1, "decoder_depth": 1})
    monkeypatch.setattr(train_bench, "BATCH", 2)
    args = argparse.Namespace(steps=1, threads=[1], device="cpu", upstream=None, before="HEAD")
    rows = train_bench.bench_train(args)
    assert [r["code"] for r in rows[:2]] == ["pcmae", "pcmae HEAD"]
    assert rows[0]["vs pcmae before"].endswith("x") and rows[1]["vs pcmae before"] == "1.00x"
    assert float(rows[0]["train loss |diff|"]) == 0.0 and float(rows[1]["train loss |diff|"]) < 1e-5
    assert [r["precision"] for r in rows[2:]] == ["bf16 autocast", "float32"]
    assert all(float(r["steps / s"]) > 0 for r in rows)


def test_train_benchmark_bad_revision_is_one_clear_error():
    with pytest.raises(RuntimeError, match="--before no-such-rev: cannot read pcmae at that revision"):
        train_bench.load_pcmae_class("no-such-rev")
    with pytest.raises(SystemExit):
        train_bench.parse_args(["--threads", "a"])
