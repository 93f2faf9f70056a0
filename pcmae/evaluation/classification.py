"""Classification accuracy of a model on a dataset."""
from __future__ import annotations

import torch


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, dataset, batch_size: int = 64) -> dict:
    """Overall and class-mean accuracy of ``model(batch)['logits']`` against ``batch['label']``."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    preds, labels = [], []
    for batch in loader:
        preds.append(model(batch)["logits"].argmax(-1))
        labels.append(batch["label"].reshape(-1))
    pred, label = torch.cat(preds), torch.cat(labels)
    per_class = [(pred[label == c] == c).float().mean() for c in label.unique()]
    return {"accuracy": (pred == label).float().mean().item(),
            "class_mean_accuracy": torch.stack(per_class).mean().item(), "num_samples": len(label)}
