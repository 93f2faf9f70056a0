"""Input checks shared by the geometry kernels: one clear ValueError per bad argument."""
from __future__ import annotations

import warnings

import torch

_warned: set[str] = set()


def check_points(name: str, xyz: torch.Tensor) -> None:
    """Raise ValueError unless ``xyz`` is a finite floating tensor of shape (B, N, 3)."""
    if not isinstance(xyz, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, N, 3), got {type(xyz).__name__}")
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(xyz.shape)}")
    if not xyz.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {xyz.dtype}")
    if xyz.numel() and not bool(torch.isfinite(xyz).all()):
        raise ValueError(f"{name} contains NaN or inf values; remove or replace them first")


def check_mask(name: str, mask: torch.Tensor | None, like: torch.Tensor) -> None:
    """Raise ValueError unless ``mask`` is None or a bool tensor of shape like.shape[:2]."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor of shape {tuple(like.shape[:2])}, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if tuple(mask.shape) != tuple(like.shape[:2]):
        raise ValueError(f"{name} must have shape {tuple(like.shape[:2])}, got {tuple(mask.shape)}")
    if mask.device != like.device:
        raise ValueError(f"{name} is on {mask.device} but the points are on {like.device}")


def check_same_batch(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    """Raise ValueError unless a and b share batch size, device and dtype."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a_name} and {b_name} must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{a_name} is {a.dtype} but {b_name} is {b.dtype}; use one dtype")


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a RuntimeWarning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
