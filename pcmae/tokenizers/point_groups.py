"""Point-MAE tokenizer: FPS centers + kNN patches, embedded by a mini-PointNet."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcmae.ops import farthest_point_sample, knn
from pcmae.structures import PointGroups


class TooFewPointsError(ValueError):
    """The cloud has fewer points than the tokenizer needs."""


class PointGrouper(nn.Module):
    """Split each cloud into ``num_groups`` patches of ``group_size`` points (no parameters).

    Centers come from farthest point sampling started at index 0; each patch holds the
    ``group_size`` nearest points of its center, made relative to that center (Point-MAE).
    """

    def __init__(self, num_groups: int = 64, group_size: int = 32):
        super().__init__()
        self.num_groups = num_groups
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor) -> PointGroups:
        """xyz: (B, N, 3) -> PointGroups with centers (B, G, 3), neighborhoods (B, G, K, 3)."""
        if xyz.dim() != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"expected points of shape (B, N, 3), got {tuple(xyz.shape)}")
        n = xyz.shape[1]
        if n < max(self.num_groups, self.group_size):
            raise TooFewPointsError(
                f"a cloud of {n} points is too small for {self.num_groups} groups of "
                f"{self.group_size} points; give at least {max(self.num_groups, self.group_size)} points"
            )
        xyz = xyz.contiguous()
        center_idx = farthest_point_sample(xyz, self.num_groups)  # (B, G)
        centers = torch.gather(xyz, 1, center_idx.unsqueeze(-1).expand(-1, -1, 3))
        _, neighbor_idx = knn(centers, xyz, self.group_size)  # (B, G, K)
        batch = torch.arange(xyz.shape[0], device=xyz.device).view(-1, 1, 1)
        neighborhoods = xyz[batch, neighbor_idx] - centers.unsqueeze(2)
        return PointGroups(centers=centers, neighborhoods=neighborhoods)


class MiniPointNet(nn.Module):
    """Embed each patch into one token: shared MLP, max-pool, concat global to each point, MLP, max-pool.

    neighborhoods (B, G, K, 3) -> tokens (B, G, embed_dim). Layer layout equals Point-MAE's ``Encoder``
    (``first_conv`` = Conv 3->128, BN, ReLU, Conv 128->256; ``second_conv`` = Conv 512->512, BN, ReLU,
    Conv 512->C on [pooled, point] features); the arithmetic is rearranged, the function is the same:

    * A 1x1 Conv1d is a matmul on channels-last points (on CPU ~1.4x faster than mkldnn's conv, forward +
      backward; BatchNorm1d's statistics over (M, C) equal those over (M / K, C, K)).
    * ``second_conv[0]`` on ``[pooled, x]`` splits into ``W_g pooled`` (once per patch) + ``W_x x`` (per point),
      and since ``x = W_2 r + b_2`` has no nonlinearity after it, ``W_x x = (W_x W_2) r + W_x b_2``: the per-point
      512 x 512 product becomes a 512 x 128 one: 26 of the 65 GFLOP of a paper-size forward (B 32, G 64, K 32)
      and twice that in the backward pass.
    """

    def __init__(self, embed_dim: int = 384):
        super().__init__()
        self.embed_dim = embed_dim
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, embed_dim, 1)
        )

    def forward(self, neighborhoods: torch.Tensor) -> torch.Tensor:
        """neighborhoods (B, G, K, 3) -> tokens (B, G, C) of every patch."""
        b, g, k, _ = neighborhoods.shape
        r, pooled = self._first(neighborhoods.reshape(b * g * k, 3), k)
        w_fold, per_patch = self._second_parts(pooled)
        h = (F.linear(r, w_fold).view(b * g, k, -1) + per_patch.unsqueeze(1)).view(b * g * k, -1)
        return self._last(self.second_conv[1](h), k).reshape(b, g, self.embed_dim)

    def forward_visible(self, neighborhoods: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Tokens of the kept patches only: neighborhoods (B, G, K, 3), keep (B, G) bool with the same count
        V per row -> (B, V, C), equal to ``forward(neighborhoods)`` restricted to ``keep`` (row order kept).

        In eval mode only the kept patches are computed. In train mode BatchNorm normalises with the statistics
        of ALL patches, as the full forward does (and updates the running statistics the same way): the first
        two layers (3 -> 128 -> 256, ~10 % of the work) run on every point, and the second BatchNorm's mean and
        variance over every point come in closed form from per-patch sums and the 128 x 128 covariance of the
        first layer's output, so the 512-wide layers (~90 % of the work) run on the kept points only.
        Gradients flow through those statistics as through BatchNorm's. Equal to the full forward up to
        float32 rounding (tests/test_models.py compares values, running statistics and gradients).
        """
        b, g, k, _ = neighborhoods.shape
        bn1, bn = self.first_conv[1], self.second_conv[1]
        if not (_batch_stats(bn1) or _batch_stats(bn)):
            return self.forward(select_patches(neighborhoods, keep))
        if not _batch_stats(bn) or isinstance(bn, nn.SyncBatchNorm):  # SyncBatchNorm: statistics across ranks,
            return select_patches(self.forward(neighborhoods), keep)   # which the closed form does not gather
        r, pooled = self._first(neighborhoods.reshape(b * g * k, 3), k)
        w_fold, per_patch = self._second_parts(pooled)  # (512, 128), (BG, 512)
        with torch.autocast(r.device.type, enabled=False):  # statistics in float32 at least, as BatchNorm
            dtype = torch.promote_types(bn.weight.dtype, torch.float32)
            mean, var = _folded_moments(r.to(dtype).view(b * g, k, -1), w_fold.to(dtype), per_patch.to(dtype))
        _update_running_stats(bn, mean, var, b * g * k)
        keep_flat = keep.reshape(b * g)
        r_kept = r.view(b * g, k, -1)[keep_flat]  # (BV, K, 128)
        # BatchNorm with the statistics of all patches, folded into the weights: (h - mean) * scale + bias
        scale = bn.weight * torch.rsqrt(var + bn.eps)
        shift = torch.addcmul(bn.bias - mean * scale, per_patch[keep_flat], scale)  # (BV, 512)
        h = F.linear(r_kept.view(-1, r.shape[-1]), w_fold * scale.unsqueeze(1))  # (BV * K, 512)
        h = (h.view(-1, k, h.shape[-1]) + shift.unsqueeze(1)).view(h.shape)
        return self._last(h, k).reshape(b, -1, self.embed_dim)

    def _first(self, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """points (M, 3) -> first ReLU output r (M, 128), patch max of first_conv's output (M / K, 256)."""
        conv1, bn1, relu1, conv2 = self.first_conv
        r = relu1(bn1(F.linear(points, conv1.weight.squeeze(-1), conv1.bias)))
        x = F.linear(r, conv2.weight.squeeze(-1), conv2.bias)
        return r, x.view(-1, k, x.shape[-1]).max(dim=1).values

    def _second_parts(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """second_conv[0]([pooled, W_2 r + b_2]) = r @ w_fold.T + per_patch -> w_fold (512, 128), per_patch (P, 512)."""
        conv2, conv3 = self.first_conv[3], self.second_conv[0]
        w2 = conv2.weight.squeeze(-1)  # (256, 128)
        w3 = conv3.weight.squeeze(-1)  # (512, 512): input channels [pooled (256), point (256)]
        w_pooled, w_point = w3[:, :w2.shape[0]], w3[:, w2.shape[0]:]
        per_patch = F.linear(pooled, w_pooled, torch.addmv(conv3.bias, w_point, conv2.bias))
        return w_point @ w2, per_patch

    def _last(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """normalised h (M, 512) -> ReLU, last conv, max over each patch's K points -> (M / K, C)."""
        relu, conv4 = self.second_conv[2], self.second_conv[3]
        x = F.linear(relu(h), conv4.weight.squeeze(-1), conv4.bias)
        return x.view(-1, k, self.embed_dim).max(dim=1).values


def select_patches(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x (B, G, ...), keep (B, G) bool with the same count V per row -> (B, V, ...), order kept."""
    return x[keep].reshape(x.shape[0], -1, *x.shape[2:])


def _folded_moments(r: torch.Tensor, w_fold: torch.Tensor, per_patch: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over all P*K points of h = r @ w_fold.T + per_patch[patch], without forming h.

    r (P, K, D), w_fold (C, D), per_patch (P, C) -> (C,), (C,). With r_c = r - mean(r) and q_c = per_patch -
    mean(per_patch): h - mean(h) = r_c @ w_fold.T + q_c, so n var = diag(W S W^T) + 2 sum_p q_c * (W s_p)
    + K sum_p q_c^2, where S is r_c's scatter matrix (D x D) and s_p the sum of r_c over patch p's points.
    """
    p, k, d = r.shape
    n = p * k
    r_mean = r.reshape(n, d).mean(dim=0)
    q_mean = per_patch.mean(dim=0)
    mean = F.linear(r_mean, w_fold) + q_mean
    rc = (r - r_mean).reshape(n, d)
    scatter = rc.t() @ rc  # (D, D)
    patch_sums = rc.view(p, k, d).sum(dim=1)  # (P, D)
    qc = per_patch - q_mean
    var = ((w_fold @ scatter) * w_fold).sum(dim=1) + 2 * (qc * F.linear(patch_sums, w_fold)).sum(dim=0) \
        + k * qc.square().sum(dim=0)
    return mean, (var / n).clamp_min(0.0)


def _batch_stats(bn: nn.BatchNorm1d) -> bool:
    """Whether ``bn`` normalises with the statistics of the batch (train mode, or no running statistics)."""
    return bn.training or bn.running_mean is None


@torch.no_grad()
def _update_running_stats(bn: nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """What BatchNorm1d does in train mode with batch mean / biased var of ``n`` samples."""
    if not bn.track_running_stats:
        return
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), momentum)
    bn.running_var.lerp_((var.detach() * n / max(n - 1, 1)).to(bn.running_var.dtype), momentum)
