"""spconv backbone: sparse convs against dense F.conv3d with 2 torch threads (catches spconv's CPU race),
the thread guard, and the mmdet3d-compatible SparseEncoder (shapes, gradients, state-dict keys)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pcmae.backbones import spconv_compat
from pcmae.backbones.spconv_compat import BackwardThreadGuard, single_threaded, spconv_available

# spconv's own SparseConvTensor.dense() (used here as a reference) indexes with a list; torch warns about it
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
needs_spconv = pytest.mark.skipif(not spconv_available(), reason=f"spconv missing: {spconv_compat.INSTALL_HINT}")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_threads():
    """Run the test with 2 torch threads (spconv's CPU kernels race with more than one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def random_sparse_input(seed: int, channels: int, shape, batch_size: int, density: float = 0.15):
    """features (N, C) float32 requiring grad, indices (N, 4) int32 (batch, z, y, x) in row-major order."""
    g = torch.Generator().manual_seed(seed)
    occupied = torch.rand((batch_size, *shape), generator=g) < density
    indices = occupied.nonzero().int().contiguous()
    features = torch.randn(len(indices), channels, generator=g).requires_grad_(True)
    return features, indices


def guarded_conv(conv, features, indices, shape, batch_size):
    """One spconv layer run the way SparseEncoder runs it: single-threaded forward and backward."""
    spconv = spconv_compat.require_spconv()
    guard = BackwardThreadGuard(active=True)
    with single_threaded():
        x = spconv.SparseConvTensor(guard.wrap_input(features), indices, list(shape), batch_size)
        y = conv(x)
        (out,) = guard.wrap_outputs(y.features)
    return y.replace_feature(out)


def assert_close_to_exact(got: torch.Tensor, exact: torch.Tensor):
    """float32 result vs float64 truth: within float32 rounding of sums of this size (1e-5 of the largest
    value); spconv's CPU race gives errors of the size of the values themselves."""
    scale = exact.abs().max().item()
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5 * scale)


def dense_reference(features, indices, weight, shape, batch_size, stride, padding):
    """Same conv with F.conv3d in float64 on the scattered dense grid (the exact answer; a float32 dense conv is
    itself off by ~1e-6 of the largest weight gradient); returns (dense output, dense input, dense weight)."""
    dense_in = torch.zeros(batch_size, features.shape[1], *shape, dtype=torch.float64)
    i = indices.long()
    dense_in[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]] = features.detach().double()
    dense_in.requires_grad_(True)
    dense_w = weight.detach().double().permute(0, 4, 1, 2, 3).contiguous().requires_grad_(True)  # (out, k, k, k, in) -> F
    return F.conv3d(dense_in, dense_w, stride=stride, padding=padding), dense_in, dense_w


@needs_spconv
@pytest.mark.parametrize("subm", [True, False], ids=["SubMConv3d", "SparseConv3d_stride2"])
def test_sparse_conv_matches_dense_conv3d(subm, two_threads):
    spconv = spconv_compat.require_spconv()
    shape, batch_size, c_in, c_out = (20, 40, 40), 2, 16, 32
    for seed in range(5):
        torch.manual_seed(seed)
        features, indices = random_sparse_input(seed, c_in, shape, batch_size)
        if subm:
            conv = spconv.SubMConv3d(c_in, c_out, 3, padding=1, bias=False)
        else:
            conv = spconv.SparseConv3d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        out = guarded_conv(conv, features, indices, shape, batch_size)
        ref, dense_in, dense_w = dense_reference(features, indices, conv.weight, shape, batch_size,
                                                 stride=1 if subm else 2, padding=1)
        o = out.indices.long()
        ref_at_out = ref[o[:, 0], :, o[:, 1], o[:, 2], o[:, 3]]
        assert_close_to_exact(out.features, ref_at_out)
        if subm:
            assert torch.equal(out.indices, indices)  # submanifold: output sites = input sites
        else:
            assert_close_to_exact(out.dense(), ref)  # no active site missed
        upstream = torch.randn(out.features.shape, generator=torch.Generator().manual_seed(100 + seed))
        (out.features * upstream).sum().backward()
        (ref_at_out * upstream.double()).sum().backward()
        i = indices.long()
        assert_close_to_exact(features.grad, dense_in.grad[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]])
        assert_close_to_exact(conv.weight.grad, dense_w.grad.permute(0, 2, 3, 4, 1))
        assert torch.get_num_threads() == 2


def small_encoder(**kwargs):
    from pcmae.backbones.sparse_encoder import SparseEncoder

    torch.manual_seed(0)
    return SparseEncoder(4, [41, 64, 48], **kwargs)


def small_input(seed=0, batch_size=2, n=600):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(batch_size * 41 * 64 * 48, generator=g)[:n]
    coords = torch.stack([keys // (41 * 64 * 48), keys // (64 * 48) % 41, keys // 48 % 64, keys % 48], 1).int()
    return torch.randn(n, 4, generator=g), coords


@needs_spconv
def test_encoder_bev_shape_and_gradients(two_threads):
    enc = small_encoder()
    features, coords = small_input()
    features.requires_grad_(True)
    bev, stages = enc.forward_features(features, coords, 2)
    # z: 41 -> 21 -> 11 -> 5 (stage 4 pads z by 0) -> conv_out (3,1,1)/(2,1,1) -> 2; y, x: / 8
    assert bev.shape == (2, 128 * 2, 8, 6)
    assert [s.spatial_shape for s in stages] == [[41, 64, 48], [21, 32, 24], [11, 16, 12], [5, 8, 6]]
    assert [s.features.shape[1] for s in stages] == [16, 32, 64, 64]
    loss = bev.square().mean() + sum(s.features.mean() for s in stages)
    loss.backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert torch.get_num_threads() == 2


@needs_spconv
def test_bev_equals_spconv_dense_view():
    from pcmae.backbones.sparse_encoder import _bev

    spconv = spconv_compat.require_spconv()
    features, indices = random_sparse_input(0, 3, (4, 6, 5), batch_size=2)
    x = spconv.SparseConvTensor(features, indices, [4, 6, 5], 2)
    expected = x.dense()  # (B, C, D, H, W)
    torch.testing.assert_close(_bev(features, indices, [4, 6, 5], 2), expected.reshape(2, 3 * 4, 6, 5))


@needs_spconv
def test_encoder_with_two_threads_equals_process_wide_single_thread(two_threads):
    enc = small_encoder()
    features, coords = small_input(seed=1)

    def run():
        enc.zero_grad()
        bev = enc(features, coords, 2)
        (bev * torch.arange(bev.numel()).view_as(bev).sin()).sum().backward()
        return bev.detach(), [p.grad.clone() for p in enc.parameters()]

    torch.set_num_threads(1)
    bev_1, grads_1 = run()
    torch.set_num_threads(2)
    for _ in range(3):
        bev_2, grads_2 = run()
        torch.testing.assert_close(bev_2, bev_1, rtol=1e-5, atol=1e-5)
        for g2, g1 in zip(grads_2, grads_1):
            torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-4)


@needs_spconv
def test_thread_guard_single_threads_spconv_and_restores(two_threads, monkeypatch):
    ops = spconv_compat.require_spconv().ops
    seen = []
    for name in ("indice_conv", "indice_conv_backward", "get_indice_pairs"):
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _f=original, _n=name, **k: (seen.append((_n, torch.get_num_threads())),
                                                                              _f(*a, **k))[1])
    enc = small_encoder()
    features, coords = small_input()
    bev = enc(features, coords, 2)
    assert torch.get_num_threads() == 2  # restored after forward
    bev.sum().backward()
    assert torch.get_num_threads() == 2  # restored after backward
    names = {n for n, _ in seen}
    assert names == {"indice_conv", "indice_conv_backward", "get_indice_pairs"}
    assert all(threads == 1 for _, threads in seen), seen
    # a backward that stops before the encoder input (only conv_out's weight asked for) still restores
    seen.clear()
    bev = enc(features, coords, 2)
    torch.autograd.grad(bev.sum(), [enc.conv_out[0].weight])
    assert torch.get_num_threads() == 2 and seen and all(t == 1 for _, t in seen)
    with torch.no_grad():
        enc(features, coords, 2)
    assert torch.get_num_threads() == 2


@needs_spconv
def test_single_threaded_restores_on_error(two_threads):
    with pytest.raises(RuntimeError, match="boom"):
        with single_threaded():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


@needs_spconv
def test_encoder_is_strided_coords_safe_and_switches_algo_on_cpu():
    spconv = spconv_compat.require_spconv()
    enc = small_encoder().eval()
    features, coords = small_input(seed=2)
    with torch.no_grad():
        expected = enc(features, coords, 2)
        strided = coords.t().contiguous().t()  # same values, column-major memory
        assert not strided.is_contiguous()
        torch.testing.assert_close(enc(features, strided.long(), 2), expected)
        for layer in enc.modules():  # as a CUDA build of spconv would construct them
            if isinstance(layer, spconv.conv.SparseConvolution):
                layer.algo = spconv.ConvAlgo.MaskImplicitGemm
        torch.testing.assert_close(enc(features, coords, 2), expected)
    assert all(layer.algo == spconv.ConvAlgo.Native for layer in enc.modules()
               if isinstance(layer, spconv.conv.SparseConvolution))


def mmdet3d_second_keys():
    """State-dict layout of mmdet3d's SparseEncoder(in_channels=4) with SECOND's defaults, written from its spec."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    convs = {"conv_input": (16, (3, 3, 3), 4)}
    stage_io = [[(16, 16)], [(16, 32), (32, 32), (32, 32)], [(32, 64), (64, 64), (64, 64)],
                [(64, 64), (64, 64), (64, 64)]]
    for s, blocks in enumerate(stage_io, start=1):
        for b, (c_in, c_out) in enumerate(blocks):
            convs[f"encoder_layers.encoder_layer{s}.{b}"] = (c_out, (3, 3, 3), c_in)
    convs["conv_out"] = (128, (3, 1, 1), 64)
    keys = {}
    for prefix, (c_out, kernel, c_in) in convs.items():
        keys[f"{prefix}.0.weight"] = (c_out, *kernel, c_in)
        for name in bn:
            keys[f"{prefix}.1.{name}"] = () if name == "num_batches_tracked" else (c_out,)
    return keys


@needs_spconv
def test_state_dict_matches_mmdet3d_layout():
    enc = small_encoder()
    state = enc.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == mmdet3d_second_keys()
    assert state._metadata["conv_out.0"]["version"] == 2  # mmdet3d permutes sparse-conv weights otherwise
    bn = enc.conv_input[1]
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.eps == 1e-3 and bn.momentum == 0.01


@needs_spconv
def test_centerpoint_basicblock_config():
    enc = small_encoder(encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
                        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
                        block_type="basicblock")
    state = enc.state_dict()
    assert tuple(state["encoder_layers.encoder_layer1.0.conv1.weight"].shape) == (16, 3, 3, 3, 16)
    assert tuple(state["encoder_layers.encoder_layer1.1.bn2.running_var"].shape) == (16,)
    assert tuple(state["encoder_layers.encoder_layer1.2.0.weight"].shape) == (32, 3, 3, 3, 16)
    assert tuple(state["encoder_layers.encoder_layer4.1.conv2.weight"].shape) == (128, 3, 3, 3, 128)
    assert tuple(state["conv_out.0.weight"].shape) == (128, 3, 1, 1, 128)
    features, coords = small_input(seed=3)
    bev = enc(features, coords, 2)
    assert bev.shape == (2, 128 * 2, 8, 6)
    bev.mean().backward()
    assert enc.encoder_layers.encoder_layer1[0].conv1.weight.grad.abs().sum() > 0


@needs_spconv
def test_encoder_rejects_bad_input():
    enc = small_encoder()
    features, coords = small_input()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        enc(features[:, :3], coords, 2)
    with pytest.raises(ValueError, match="coors"):
        enc(features, coords[:, :3], 2)
    with pytest.raises(ValueError, match="must lie in"):
        enc(features, coords, 1)  # batch index 1 with batch_size 1
    with pytest.raises(ValueError, match="no voxel"):
        enc(features[:0], coords[:0], 2)
    with pytest.raises(ValueError, match="norm_cfg.type"):
        small_encoder(norm_cfg={"type": "GN"})
    with pytest.raises(ValueError, match="order"):
        small_encoder(order=("conv", "act"))
    with pytest.raises(ValueError, match="basic block"):
        small_encoder(encoder_channels=((32,), (32, 64)), encoder_paddings=((1,), (1, 1)), block_type="basicblock")


def test_clear_error_and_importable_without_spconv():
    code = (
        "import sys\n"
        "sys.modules['spconv'] = None; sys.modules['spconv.pytorch'] = None\n"
        "import pcmae.backbones\n"
        "from pcmae.backbones.sparse_encoder import SparseEncoder\n"
        "from pcmae.backbones.spconv_compat import spconv_available\n"
        "assert not spconv_available()\n"
        "try:\n"
        "    SparseEncoder(4, [41, 64, 48])\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install spconv (CPU) or spconv-cu12x" in result.stdout
    assert "sparse-conv backbone needs it" in result.stdout
