"""Classification accuracy of a model on a dataset, under a named evaluation protocol.

``plain``: one forward pass per cloud on ``batch["points"]`` (B, N, 3).

``vote``: Point-MAE's voting (``validate_vote`` of its runner_finetune.py): the mean of the logits over ``votes``
(10) views of each cloud, each view ``N`` points chosen at random (one index set per batch and vote, as Point-MAE's
``np.random.choice(point_all, npoints, False)``) from ``batch["vote_points"]`` (B, point_all, 3), then scaled by
U(2/3, 3/2) per axis and shifted by U(-0.2, 0.2) per axis and sample. Datasets with ``sampling: upstream`` give
``vote_points``, the farthest point sample of point_all (1200 for 1024 points) points; for a batch without them the
views are drawn from ``batch["points"]`` itself (point_all = N: random point orders), which is what Point-MAE does
when a cloud has fewer than point_all points. All draws come from a generator seeded by ``seed``, so the number is
reproducible. Point-MAE's ``test`` reruns its vote 300 times and reports the best run; pcmae reports one seeded run.
"""
from __future__ import annotations

import torch

from pcmae.data.transforms import ScaleAndTranslate
from pcmae.engine.device import model_device, move_to_device


def plain_logits(model, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """batch["points"] (B, N, 3) -> logits (B, C)."""
    return model({"points": batch["points"]})["logits"]


def vote_logits(model, batch: dict, generator: torch.Generator, votes: int = 10) -> torch.Tensor:
    """Mean logits (B, C) over ``votes`` random N-point views of batch["vote_points"] (B, P, 3) (else of
    batch["points"] (B, N, 3)), each scaled and translated."""
    augment = ScaleAndTranslate()
    num_points = batch["points"].shape[1]
    pool = batch.get("vote_points", batch["points"])
    if pool.shape[1] < num_points:
        raise ValueError(f"vote: vote_points holds {pool.shape[1]} points per cloud, fewer than the {num_points} "
                         "of points")
    total = 0
    for _ in range(votes):
        pick = torch.randperm(pool.shape[1], generator=generator, device=generator.device)[:num_points]
        view = augment(pool[:, pick.to(pool.device)], generator=generator)
        total = total + model({"points": view})["logits"].float()
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
        preds.append(PROTOCOLS[protocol](model, batch, generator).argmax(-1).cpu())
        labels.append(batch["label"].reshape(-1).cpu())
    model.train(was_training)
    pred, label = torch.cat(preds), torch.cat(labels)
    per_class = [(pred[label == c] == c).float().mean() for c in label.unique()]
    return {"protocol": protocol, "accuracy": (pred == label).float().mean().item(),
            "class_mean_accuracy": torch.stack(per_class).mean().item(), "num_samples": len(label)}
