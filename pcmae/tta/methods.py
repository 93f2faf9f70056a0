"""What adapts a classifier to the test data it meets: registry entries of ``tta.method``.

Each method says which parameters take gradient steps, on which loss of a batch of copies of the incoming sample,
and which BatchNorm statistics the encoder uses by default (``bn_stats``: source | sample | stream, see
pcmae/tta/adapter.py):
  source   nothing adapts (the baseline);
  bn       BatchNorm statistics of the test sample, no gradient step (BN-adapt; with ``tta.bn_stats: stream`` the
           statistics of the stream so far, as MATE keeps them, without MATE's gradient step);
  tent     entropy of the predicted class distribution, BatchNorm affine parameters only (TENT, Wang et al. 2021);
  mate     Point-MAE's masked reconstruction loss of the joint model, every encoder parameter (MATE, Mirza et al.
           2023; needs ``model.reconstruction_loss``).
Models provide ``classify(points (B, N, 3)) -> logits (B, K)`` and an ``encoder`` module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pcmae.registry import Registry

TTA_METHODS = Registry("test-time adaptation method")
ADAPTED_PARAMETERS = Registry("adapted parameter set")  # ``tta.adapt``: overrides the method's own choice


@ADAPTED_PARAMETERS.register(name="encoder")
def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every encoder parameter: patch embedding, positions, blocks, norms (MATE's choice)."""
    return list(model.encoder.parameters())


@ADAPTED_PARAMETERS.register(name="norms")
def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine weights and biases of the encoder's BatchNorm and LayerNorm layers."""
    norms = [m for m in model.encoder.modules() if isinstance(m, (_BatchNorm, nn.LayerNorm))]
    return [p for m in norms for p in (m.weight, m.bias) if p is not None]


@ADAPTED_PARAMETERS.register(name="patch_embed")
def patch_embed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The mini-PointNet that turns each patch into a token (where local corruptions enter)."""
    return list(model.encoder.patch_embed.parameters())


def encoder_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model.encoder`` (per-point / per-patch statistics: a single sample has them; the
    classification head's BatchNorm normalises over the batch and keeps its source statistics)."""
    return [m for m in model.encoder.modules() if isinstance(m, _BatchNorm)]


class Method:
    """No adaptation."""

    bn_stats = "source"  # default for ``tta.bn_stats``

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return []

    def loss(self, model: nn.Module, copies: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


TTA_METHODS.register(Method, name="source")


@TTA_METHODS.register(name="bn")
class BatchNormAdapt(Method):
    bn_stats = "sample"


@TTA_METHODS.register(name="tent")
class Tent(Method):
    bn_stats = "sample"

    def parameters(self, model):
        return [p for m in encoder_batchnorms(model) for p in (m.weight, m.bias) if p is not None]

    def loss(self, model, copies, generator):
        logp = F.log_softmax(model.classify(copies).float(), dim=-1)
        return -(logp.exp() * logp).sum(-1).mean()


@TTA_METHODS.register(name="mate")
class Mate(Method):
    bn_stats = "stream"

    def parameters(self, model):
        if not hasattr(model, "reconstruction_loss"):
            raise TypeError(f"tta.method 'mate' needs a joint model with reconstruction_loss (type MATE), got "
                            f"{type(model).__name__}")
        return encoder_parameters(model)

    def loss(self, model, copies, generator):
        return model.reconstruction_loss(copies, generator=generator)
