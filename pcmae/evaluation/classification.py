"""Classification accuracy of a model on a dataset, under a named evaluation protocol.

``plain``: one forward pass per cloud. ``vote``: Point-MAE's ModelNet40 voting, the mean of the logits over
``votes`` random scale-and-translate copies of each cloud (scale U(2/3, 3/2) per axis, shift U(-0.2, 0.2)),
drawn from a seeded generator so that the number is reproducible.
"""
from __future__ import annotations

import torch

from pcmae.data.transforms import ScaleAndTranslate
from pcmae.engine.device import model_device, move_to_device


def plain_logits(model, points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """points (B, N, 3) -> logits (B, C)."""
    return model({"points": points})["logits"]


def vote_logits(model, points: torch.Tensor, generator: torch.Generator, votes: int = 10) -> torch.Tensor:
    """points (B, N, 3) -> mean logits (B, C) over ``votes`` scale-and-translate copies."""
    augment = ScaleAndTranslate()
    total = 0
    for _ in range(votes):
        total = total + model({"points": augment(points, generator=generator)})["logits"].float()
    return total / votes


PROTOCOLS = {"plain": plain_logits, "vote": vote_logits}


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, dataset, batch_size: int = 64, protocol: str = "plain",
                      seed: int = 0) -> dict:
    """Overall and class-mean accuracy of the protocol's logits against ``batch['label']``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    was_training = model.training
    model.eval()
    device = model_device(model)
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    preds, labels = [], []
    for batch in loader:
        batch = move_to_device(batch, device)
        preds.append(PROTOCOLS[protocol](model, batch["points"], generator).argmax(-1).cpu())
        labels.append(batch["label"].reshape(-1).cpu())
    model.train(was_training)
    pred, label = torch.cat(preds), torch.cat(labels)
    per_class = [(pred[label == c] == c).float().mean() for c in label.unique()]
    return {"protocol": protocol, "accuracy": (pred == label).float().mean().item(),
            "class_mean_accuracy": torch.stack(per_class).mean().item(), "num_samples": len(label)}
