"""Will a self-supervised step help the classifier? The cosine between the adaptation loss's gradient and the
gradient of the true-label cross-entropy on the adapted parameters (Sun et al., "Test-Time Training", ICML 2020:
a self-supervised step helps to the extent that the two gradients point the same way).

A positive mean cosine over labelled corrupted samples says the step moves the weights towards what the labels
would have asked; near zero or negative says it moves them elsewhere, and adaptation can only cost accuracy.
Adam's first step from a fresh optimizer (every step of the standard protocol) is ``lr * sign(gradient)``, whatever
each gradient entry's size, so its direction is reported too: cos(sign(adaptation gradient), label gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def flat_grad(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def gradient_alignment(model: nn.Module, method, params: list[nn.Parameter], points: torch.Tensor, label: int,
                       copies: int, generator: torch.Generator | None = None) -> dict:
    """{"gradient": cos(grad of ``method.loss`` on ``copies`` copies of ``points`` (N, 3), grad of the true
    ``label``'s cross-entropy), "adam_step": the same with sign(grad of method.loss)} over ``params``; the model's
    modes are left as the caller set them."""
    batch = points.unsqueeze(0).expand(copies, -1, -1).contiguous()
    adapt = flat_grad(method.loss(model, batch, generator), params)
    logits = model.classify(points.unsqueeze(0))
    supervised = flat_grad(F.cross_entropy(logits.float(), torch.tensor([label], device=logits.device)), params)
    return {"gradient": F.cosine_similarity(adapt, supervised, dim=0).item(),
            "adam_step": F.cosine_similarity(adapt.sign(), supervised, dim=0).item()}
