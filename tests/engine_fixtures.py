"""A tiny model and dataset for the engine tests (also imported by the torchrun helper ``ddp_train.py``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pcmae.registry import DATASETS, MODELS


@DATASETS.register(name="EngineTestVectors")
class RandomVectors(Dataset):
    """``num_samples`` fixed random vectors with a linear target; ``jitter`` adds fresh noise per access
    (drawn from the torch RNG of the process or DataLoader worker)."""

    def __init__(self, num_samples: int = 24, dim: int = 4, jitter: float = 0.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_samples, dim, generator=g)
        self.y = self.x @ torch.linspace(-1, 1, dim) + 0.1
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        x = self.x[i] + self.jitter * torch.randn_like(self.x[i]) if self.jitter else self.x[i]
        return {"x": x, "y": self.y[i], "index": torch.tensor(i)}


@MODELS.register(name="EngineTestMLP")
class TinyMLP(nn.Module):
    """Regression MLP; in training, input noise (``noise``) and dropout make the result depend on the RNG."""

    def __init__(self, dim: int = 4, hidden: int = 16, noise: float = 0.1, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))
        self.token = nn.Parameter(torch.zeros(1, dim))
        self.noise = noise
        self.seen_dtypes: set = set()

    def no_weight_decay(self):
        return {"token"}

    def forward(self, batch: dict) -> dict:
        x = batch["x"] + self.token
        if self.training and self.noise:
            x = x + self.noise * torch.randn_like(x)
        pred = self.net(x).squeeze(-1)
        self.seen_dtypes.add(pred.dtype)
        loss = F.mse_loss(pred.float(), batch["y"])
        return {"loss": loss, "mae": (pred.float() - batch["y"]).abs().mean(), "pred": pred}


class IndexLoss(nn.Module):
    """loss = mean sample index of the batch (+ 0 * weight, to be differentiable): its logged means are known."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2, 2))

    def forward(self, batch: dict) -> dict:
        return {"loss": batch["index"].float().mean() + 0.0 * self.w.sum()}


def make_model(seed: int = 0, **kwargs) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP(**kwargs)
