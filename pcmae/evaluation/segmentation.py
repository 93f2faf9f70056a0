"""Part segmentation scores as Point-MAE (and PointNet++ before it) report them on ShapeNetPart.

Each shape is scored only over the parts of its category: the prediction is the arg-max over the category's
part logits, and the shape's IoU is the mean over the category's parts of |pred & label| / |pred | label|, where
a part absent from both prediction and label counts as IoU 1. Instance mIoU = mean over shapes; class mIoU = mean
over categories (those with shapes) of the mean IoU of their shapes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from pcmae.engine.device import model_device, move_to_device

PROTOCOLS = ("plain",)  # one forward pass per cloud (Point-MAE's part segmentation evaluation has no voting)


def part_mask(category_parts: Sequence[Sequence[int]], num_parts: int) -> torch.Tensor:
    """(C, P) bool: ``mask[c, p]`` is True when part ``p`` belongs to category ``c``."""
    mask = torch.zeros(len(category_parts), num_parts, dtype=torch.bool)
    for c, parts in enumerate(category_parts):
        if not parts or min(parts) < 0 or max(parts) >= num_parts:
            raise ValueError(f"category {c}: parts {list(parts)} are not a non-empty subset of 0..{num_parts - 1}")
        mask[c, list(parts)] = True
    return mask


def restricted_prediction(logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits (S, N, P), category label (S,), part mask (C, P) -> (S, N) arg-max over the category's parts."""
    allowed = mask.to(logits.device)[label].unsqueeze(1)  # (S, 1, P)
    return logits.masked_fill(~allowed, float("-inf")).argmax(-1)


def shape_ious(pred: torch.Tensor, seg: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, seg (S, N) part labels, category label (S,), part mask (C, P) -> (S,) float64 mean part IoU of each
    shape over its category's parts (a part in neither pred nor seg counts as 1)."""
    num_shapes, num_parts = pred.shape[0], mask.shape[1]
    offset = torch.arange(num_shapes, device=pred.device).unsqueeze(1) * num_parts
    size = num_shapes * num_parts

    def counts(keys):
        return torch.bincount(keys.reshape(-1), minlength=size).view(num_shapes, num_parts).double()

    inter = counts((offset + seg)[pred == seg])
    union = counts(offset + pred) + counts(offset + seg) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    own = mask.to(pred.device)[label].double()  # (S, P)
    return ((iou * own).sum(1) / own.sum(1)).cpu()


def miou_summary(ious: torch.Tensor, label: torch.Tensor, categories: Sequence[str]) -> dict:
    """ious (S,), category label (S,) -> instance mIoU, class mIoU (over categories with shapes), per category."""
    label = label.cpu()
    per_category = {categories[c]: ious[label == c].mean().item() for c in sorted(set(label.tolist()))}
    return {"instance_miou": ious.mean().item(), "class_miou": sum(per_category.values()) / len(per_category),
            "per_category": per_category, "num_shapes": len(ious)}


@torch.no_grad()
def evaluate_part_segmentation(model: torch.nn.Module, dataset, batch_size: int = 16,
                               protocol: str = "plain") -> dict:
    """Instance / class mIoU and point accuracy of ``model(batch)["logits"]`` (B, N, P) on a dataset of
    ``{"points", "label", "seg"}`` items with ``dataset.categories`` and ``dataset.category_parts``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"part segmentation has no evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if len(dataset) == 0:
        raise ValueError("evaluate_part_segmentation: the dataset is empty")
    mask = part_mask(dataset.category_parts, dataset.num_parts)
    was_training = model.training
    model.eval()
    device = model_device(model)
    ious, labels, correct, seen = [], [], 0, 0
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = move_to_device(batch, device)
        label, seg = batch["label"].reshape(-1), batch["seg"]
        logits = model(batch)["logits"]
        if logits.shape[-1] != dataset.num_parts:
            raise ValueError(f"the model predicts {logits.shape[-1]} parts, the dataset has {dataset.num_parts}")
        pred = restricted_prediction(logits, label, mask)
        ious.append(shape_ious(pred, seg, label, mask))
        labels.append(label.cpu())
        correct += int((pred == seg).sum())
        seen += seg.numel()
    model.train(was_training)
    return {"protocol": protocol, **miou_summary(torch.cat(ious), torch.cat(labels), dataset.categories),
            "accuracy": correct / seen}


def most_frequent_parts(dataset) -> torch.Tensor:
    """(C,) int64: the most frequent part among the points of each category's shapes in ``dataset`` (-1 for a
    category without shapes); the constant answer a segmenter has to beat."""
    counts = torch.zeros(len(dataset.category_parts), dataset.num_parts, dtype=torch.long)
    for item in dataset:
        counts[int(item["label"])] += torch.bincount(item["seg"].reshape(-1), minlength=dataset.num_parts)
    return torch.where(counts.sum(1) > 0, counts.argmax(1), torch.full_like(counts[:, 0], -1))


def constant_part_scores(dataset, parts: torch.Tensor) -> dict:
    """Scores of predicting part ``parts[c]`` (C,) for every point of every shape of category ``c``."""
    mask = part_mask(dataset.category_parts, dataset.num_parts)
    ious, labels, correct, seen = [], [], 0, 0
    for item in dataset:
        label, seg = item["label"].reshape(1), item["seg"].reshape(1, -1)
        if parts[label] < 0:
            raise ValueError(f"no constant part for category {dataset.categories[int(label)]} (no training shape)")
        pred = parts[label].expand_as(seg)
        ious.append(shape_ious(pred, seg, label, mask))
        labels.append(label)
        correct += int((pred == seg).sum())
        seen += seg.numel()
    return {**miou_summary(torch.cat(ious), torch.cat(labels), dataset.categories), "accuracy": correct / seen}


def describe(result: dict) -> str:
    """One line: instance and class mIoU, point accuracy (percent)."""
    return (f"instance mIoU {100 * result['instance_miou']:.2f} %, class mIoU {100 * result['class_miou']:.2f} %, "
            f"point accuracy {100 * result['accuracy']:.2f} %")
