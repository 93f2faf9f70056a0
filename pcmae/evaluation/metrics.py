"""Binary classification metrics in torch: thresholded precision / recall / F1, and the threshold-free AUROC and
average precision of a score (a constant score cannot game these: its AUROC is 0.5 and its AP the positive rate).
"""
from __future__ import annotations

import torch


def _check(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.shape != labels.shape or scores.dim() != 1:
        raise ValueError(f"scores and labels must be (Q,) of one shape, got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    return scores.detach().double(), labels.detach().bool()


def precision_recall_f1(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """pred, labels: (Q,) bool / {0, 1}. Precision of no positive prediction is 0 (and so is F1)."""
    pred, labels = pred.bool(), labels.bool()
    tp = (pred & labels).sum().item()
    precision = tp / max(pred.sum().item(), 1)
    recall = tp / max(labels.sum().item(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}


def binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of scores (Q,) for labels (Q,): the probability that a random positive scores
    above a random negative, ties counting one half (Mann-Whitney U with mid-ranks). NaN without both classes."""
    scores, labels = _check(scores, labels)
    num_pos = int(labels.sum())
    num_neg = len(labels) - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)  # ascending
    first_rank = torch.cumsum(counts, 0) - counts + 1  # 1-based rank of each tie group's first member
    mid_rank = first_rank.double() + (counts.double() - 1) / 2
    rank_sum = mid_rank[inverse][labels].sum().item()
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision (Q,) -> float: sum over the distinct score thresholds t, from high to low, of
    (recall(t) - recall(previous t)) * precision(t), where a query counts as positive when its score >= t
    (scikit-learn's definition, no interpolation). NaN without a positive label."""
    scores, labels = _check(scores, labels)
    num_pos = int(labels.sum())
    if num_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, labels = scores[order], labels[order].double()
    tp = torch.cumsum(labels, 0)
    last_of_group = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
    last_of_group[:-1] = scores[1:] != scores[:-1]  # thresholds: the end of each tie group
    tp = tp[last_of_group]
    predicted = (torch.nonzero(last_of_group).squeeze(1) + 1).double()
    precision, recall = tp / predicted, tp / num_pos
    gain = torch.diff(recall, prepend=recall.new_zeros(1))
    return (gain * precision).sum().item()


def stratified_auroc(scores: torch.Tensor, labels: torch.Tensor, strata: torch.Tensor) -> float:
    """AUROC over the (positive, negative) pairs of the same stratum (Q,) int: the probability that a positive
    scores above a negative of its own stratum (ties one half). With strata = the visible-neighbour count, it is
    what a score knows beyond that count (the neighbour baseline itself gets 0.5). NaN without such a pair."""
    scores, labels = _check(scores, labels)
    total = weight = 0.0
    for stratum in torch.unique(strata):
        sel = strata == stratum
        pairs = float(labels[sel].sum()) * float((~labels[sel]).sum())
        if pairs > 0:
            total += binary_auroc(scores[sel], labels[sel]) * pairs
            weight += pairs
    return total / weight if weight else float("nan")


def score_metrics(scores: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """precision / recall / F1 of ``pred`` and AUROC / AP of ``scores`` for one predictor, all (Q,)."""
    return {**precision_recall_f1(pred, labels), "auroc": binary_auroc(scores, labels),
            "ap": average_precision(scores, labels)}
