"""Linear probe of frozen features: how linearly separable are the classes in an encoder's tokens?

Protocol (fixed, so numbers compare across runs):
- features: the encoder on all tokens (nothing masked), eval mode; pooled per cloud as
  concat(max over tokens, mean over tokens) -> (2C,); standardised with the training set's mean / std;
- classifier: a linear SVM (scikit-learn ``LinearSVC``); C is chosen from ``C_GRID`` on a stratified
  validation split (20 %) of the training set, then refit on the whole training set;
- score: accuracy on the held-out test split; repeated over seeds (validation split and SVM seed),
  reported as mean +- std.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from pcmae.engine.device import model_device, move_to_device

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


@torch.no_grad()
def extract_features(model: torch.nn.Module, dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pooled frozen features (num_samples, 2C) and labels (num_samples,) of every item in ``dataset``."""
    model.eval()
    device = model_device(model)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    for batch in loader:
        tokens = model.encode(move_to_device(batch["points"], device)).float()  # (B, G, C)
        feats.append(torch.cat([tokens.max(dim=1).values, tokens.mean(dim=1)], dim=-1).cpu().numpy())
        labels.append(batch["label"].reshape(-1).numpy())
    return np.concatenate(feats), np.concatenate(labels)


def fit_probe(train_x, train_y, test_x, test_y, seed: int) -> tuple[float, float]:
    """(test accuracy, chosen C) of a linear SVM with C picked on a validation split."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    fit_x, val_x, fit_y, val_y = train_test_split(train_x, train_y, test_size=0.2, stratify=train_y,
                                                  random_state=seed)

    def svm(c):
        return LinearSVC(C=c, max_iter=5000, random_state=seed)

    val_acc = [svm(c).fit(fit_x, fit_y).score(val_x, val_y) for c in C_GRID]
    best_c = C_GRID[int(np.argmax(val_acc))]
    return svm(best_c).fit(train_x, train_y).score(test_x, test_y), best_c


def linear_probe(model, train_set, test_set, seeds=(0, 1, 2)) -> dict:
    """Accuracy mean / std over seeds, with per-seed values and chosen C."""
    train_x, train_y = extract_features(model, train_set)
    test_x, test_y = extract_features(model, test_set)
    runs = [fit_probe(train_x, train_y, test_x, test_y, s) for s in seeds]
    accs = np.array([a for a, _ in runs])
    return {"mean": float(accs.mean()), "std": float(accs.std()), "accuracy": accs.tolist(),
            "C": [c for _, c in runs], "num_train": len(train_y), "num_test": len(test_y)}
