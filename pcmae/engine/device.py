"""Where a batch meets a model: one helper moves it to the model's device, for every tool and evaluation."""
from __future__ import annotations

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def move_to_device(batch, device):
    """Move the tensors of a (nested) dict / list / tuple, or an object with ``.to`` (PointBatch), to ``device``."""
    device = torch.device(device)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=batch.is_pinned())
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch
