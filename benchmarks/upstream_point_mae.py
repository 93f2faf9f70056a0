"""The original Point-MAE model (Pang et al., github.com/Pang-Yatian/Point-MAE) built from its own source on CPU.

``load_upstream(checkout)`` imports the checkout's ``models/Point_MAE.py`` (with its ``utils/`` and
``extensions/chamfer_dist/__init__.py``) unchanged. That code imports CUDA-only or absent packages; the small
CPU STAND-INS below take their place in ``sys.modules`` while it is imported. They are what a CPU user of
upstream would have to write, and they are not pcmae's model code:

* ``timm.models.layers``: ``DropPath`` (timm's per-sample form: ``x * x.new_empty((B, 1, ..)).bernoulli_(keep)
  / keep``) and ``trunc_normal_`` (``torch.nn.init.trunc_normal_``, the same sampler).
* ``pointnet2_ops.pointnet2_utils``: ``furthest_point_sample`` / ``gather_operation`` via pcmae's
  ``farthest_point_sample`` (first pick index 0, as the CUDA kernel) and ``torch.gather``.
* ``knn_cuda.KNN``: pcmae's exact ``knn`` (sorted by distance; KNN_CUDA returns Euclidean distances).
  FPS and kNN are the same code as pcmae's tokenizer, so a step-time comparison compares the model code.
* ``chamfer`` (the compiled extension behind ``extensions.chamfer_dist``): forward = per-point nearest squared
  distance and index from the dense (N, M) distances, backward = the CUDA kernel's formula.
* ``easydict`` (only where it is not installed): a dict with attribute access, for ``utils/config.py``.

A checkout: ``git clone https://github.com/Pang-Yatian/Point-MAE``, or from a bare mirror
``mkdir -p /tmp/upstream_point_mae && git -C MIRROR archive HEAD | tar -x -C /tmp/upstream_point_mae``.
Keep it outside the pcmae repository. Nothing here installs anything.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
import types
from pathlib import Path

import torch
from torch import nn

from pcmae.ops import farthest_point_sample, knn

# top-level module names the upstream import touches; restored afterwards so nothing leaks into the process
_TOUCHED = ("models", "utils", "extensions", "timm", "pointnet2_ops", "knn_cuda", "chamfer", "easydict")


class UpstreamCheckoutError(FileNotFoundError):
    """The given path is not a Point-MAE checkout."""


# ----------------------------------------------------------------------------- CPU stand-ins

class DropPath(nn.Module):
    """STAND-IN for timm's DropPath (per-sample stochastic depth, scaled by 1 / keep)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        random_tensor = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            random_tensor.div_(keep)
        return x * random_tensor


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """STAND-IN for timm's trunc_normal_ (the same inverse-CDF sampler as torch's)."""
    return nn.init.trunc_normal_(tensor, mean, std, a, b)


def furthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """STAND-IN for pointnet2_ops: xyz (B, N, 3) -> (B, npoint) int32 indices, first pick index 0."""
    return farthest_point_sample(xyz, npoint).int()


def gather_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """STAND-IN for pointnet2_ops: features (B, C, N), idx (B, M) -> (B, C, M)."""
    return torch.gather(features, 2, idx.long().unsqueeze(1).expand(-1, features.shape[1], -1))


class KNN(nn.Module):
    """STAND-IN for knn_cuda.KNN: forward(ref, query) -> dist, idx (B, M, k) in transpose_mode."""

    def __init__(self, k: int, transpose_mode: bool = False):
        super().__init__()
        if not transpose_mode:
            raise NotImplementedError("this stand-in implements transpose_mode=True (Point-MAE's use) only")
        self.k = k

    def forward(self, ref: torch.Tensor, query: torch.Tensor):
        dist2, idx = knn(query, ref, self.k)
        return dist2.sqrt(), idx


def _nearest(xyz1: torch.Tensor, xyz2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = (xyz1.unsqueeze(2) - xyz2.unsqueeze(1)).square().sum(-1)  # (B, N, M)
    dist, idx = d.min(dim=2)
    return dist, idx.int()


def chamfer_forward(xyz1: torch.Tensor, xyz2: torch.Tensor):
    """STAND-IN for the chamfer extension: -> dist1 (B, N), dist2 (B, M), idx1, idx2 (int32)."""
    dist1, idx1 = _nearest(xyz1, xyz2)
    dist2, idx2 = _nearest(xyz2, xyz1)
    return dist1, dist2, idx1, idx2


def chamfer_backward(xyz1, xyz2, idx1, idx2, grad_dist1, grad_dist2):
    """STAND-IN for the chamfer extension: the CUDA kernel's gradient of dist1 / dist2."""
    def one_way(x, y, idx, grad):
        nearest = torch.gather(y, 1, idx.long().unsqueeze(-1).expand(-1, -1, 3))
        g = 2 * (x - nearest) * grad.unsqueeze(-1)
        return g, torch.zeros_like(y).scatter_add_(1, idx.long().unsqueeze(-1).expand(-1, -1, 3), -g)

    g1, g2_from_1 = one_way(xyz1, xyz2, idx1, grad_dist1)
    g2, g1_from_2 = one_way(xyz2, xyz1, idx2, grad_dist2)
    return g1 + g1_from_2, g2 + g2_from_1


class EasyDict(dict):
    """STAND-IN for easydict.EasyDict: a dict whose keys are also attributes (nested dicts converted)."""

    def __init__(self, d=None, **kwargs):
        super().__init__()
        for key, value in {**(d or {}), **kwargs}.items():
            self[key] = value

    def __setitem__(self, key, value):
        if isinstance(value, dict) and not isinstance(value, EasyDict):
            value = EasyDict(value)
        super().__setitem__(key, value)

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    __setattr__ = __setitem__


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name, f"CPU stand-in for {name} (benchmarks/upstream_point_mae.py)")
    module.__dict__.update(attrs)
    return module


def _stand_ins() -> dict[str, types.ModuleType]:
    timm = _module("timm")
    timm.models = _module("timm.models")
    timm.models.layers = _module("timm.models.layers", DropPath=DropPath, trunc_normal_=trunc_normal_)
    pointnet2_ops = _module("pointnet2_ops")
    pointnet2_ops.pointnet2_utils = _module("pointnet2_ops.pointnet2_utils",
                                            furthest_point_sample=furthest_point_sample,
                                            gather_operation=gather_operation)
    mods = {"timm": timm, "timm.models": timm.models, "timm.models.layers": timm.models.layers,
            "pointnet2_ops": pointnet2_ops, "pointnet2_ops.pointnet2_utils": pointnet2_ops.pointnet2_utils,
            "knn_cuda": _module("knn_cuda", KNN=KNN),
            "chamfer": _module("chamfer", forward=chamfer_forward, backward=chamfer_backward)}
    try:
        importlib.import_module("easydict")
    except ImportError:
        mods["easydict"] = _module("easydict", EasyDict=EasyDict)
    return mods


# ----------------------------------------------------------------------------- loading and building

def _touched(name: str) -> bool:
    return name.split(".")[0] in _TOUCHED


def load_upstream(checkout: str | Path) -> types.ModuleType:
    """Import ``<checkout>/models/Point_MAE.py`` with the stand-ins; returns that module (``Point_MAE`` class).

    ``sys.modules`` and ``sys.path`` are restored afterwards (the returned module keeps its own references).
    """
    root = Path(checkout).expanduser().resolve()
    missing = [p for p in ("models/Point_MAE.py", "utils/misc.py", "extensions/chamfer_dist/__init__.py")
               if not (root / p).is_file()]
    if missing:
        raise UpstreamCheckoutError(f"{root}: not a Point-MAE checkout (missing {', '.join(missing)})")
    saved = {name: mod for name, mod in sys.modules.items() if _touched(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(_stand_ins())
    sys.path.insert(0, str(root))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module("models.Point_MAE")
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if _touched(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def upstream_config(num_groups: int = 64, group_size: int = 32, embed_dim: int = 384, depth: int = 12,
                    num_heads: int = 6, drop_path_rate: float = 0.1, decoder_depth: int = 4,
                    decoder_num_heads: int = 6, mask_ratio: float = 0.6, mask_type: str = "rand") -> EasyDict:
    """Upstream's ``cfgs/pretrain.yaml`` model section, with pcmae's PointMAE argument names."""
    return EasyDict(NAME="Point_MAE", group_size=group_size, num_group=num_groups, loss="cdl2",
                    transformer_config=dict(mask_ratio=mask_ratio, mask_type=mask_type, trans_dim=embed_dim,
                                            encoder_dims=embed_dim, depth=depth, drop_path_rate=drop_path_rate,
                                            num_heads=num_heads, decoder_depth=decoder_depth,
                                            decoder_num_heads=decoder_num_heads))


def build_upstream(module: types.ModuleType, **cfg) -> nn.Module:
    """Upstream's ``Point_MAE(config)`` (its construction log silenced); cfg: :func:`upstream_config` arguments."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return module.Point_MAE(upstream_config(**cfg))


def upstream_mask(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """The (B, G) mask upstream's forward draws next from numpy's global RNG (call with the same numpy state)."""
    with torch.no_grad():
        _, center = model.group_divider(points)
    return model.MAE_encoder._mask_center_rand(center) if model.MAE_encoder.mask_type == "rand" \
        else model.MAE_encoder._mask_center_block(center)
