"""Learning-rate schedule (linear warm-up, then cosine, per optimizer step) and the AdamW parameter groups."""
from __future__ import annotations

import math
import re

import torch


def cosine_lr(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for 0-based ``step``: linear warm-up reaching ``base_lr`` at the last warm-up step,
    then a half cosine from ``base_lr`` (at ``warmup_steps``) down to ``min_lr`` (at ``total_steps``)."""
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's lr (times its optional ``lr_scale``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    """Two AdamW groups: decayed weights, and no decay for biases, 1-D params (norms) and the names
    returned by ``model.no_weight_decay()`` (tokens, position tables)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names = {name for name, _ in model.named_parameters()}
    unknown = sorted(skip - names)
    if unknown:
        raise ValueError(f"{type(model).__name__}.no_weight_decay() names no parameter: {unknown}")
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_ids(model: torch.nn.Module) -> tuple[dict, int]:
    """Parameter name -> layer id for layer-wise lr decay (as in BEiT / MAE fine-tuning), and the layer count.

    Transformer block ``i`` (a name containing ``blocks.<i>.``) is layer ``i + 1``; parameters used before
    the blocks (tokenizer, position embedding, cls token) are layer 0; everything after them (final norm,
    head) is the last layer. A model without ``blocks.<i>.`` parameters has nothing to decay."""
    names = [name for name, _ in model.named_parameters()]
    blocks = {name: int(m.group(1)) + 1 for name in names if (m := BLOCK_INDEX.search(name))}
    if not blocks:
        raise ValueError(f"train.layer_decay: {type(model).__name__} has no 'blocks.<i>.' parameters to decay")
    num_layers = max(blocks.values()) + 1
    first_block = names.index(next(iter(blocks)))
    last_block = max(names.index(name) for name in blocks)
    ids = {}
    for index, name in enumerate(names):
        ids[name] = blocks.get(name, 0 if index < first_block else num_layers if index > last_block else None)
        if ids[name] is None:
            raise ValueError(f"train.layer_decay: cannot place {name!r} between the blocks of {type(model).__name__}")
    return ids, num_layers


def decayed_groups(model: torch.nn.Module, groups: list, decay: float) -> list:
    """Split each group by layer; layer ``l`` of ``L`` gets ``lr_scale = decay ** (L - l)``."""
    ids, num_layers = layer_ids(model)
    layer_of = {id(param): ids[name] for name, param in model.named_parameters()}
    out = []
    for group in groups:
        by_layer: dict = {}
        for param in group["params"]:
            by_layer.setdefault(layer_of[id(param)], []).append(param)
        out += [{**group, "params": params, "lr_scale": decay ** (num_layers - layer)}
                for layer, params in sorted(by_layer.items())]
    return out


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (split per layer under ``cfg.layer_decay``); ``cfg`` is a TrainConfig."""
    groups = param_groups(model, cfg.weight_decay)
    if getattr(cfg, "layer_decay", None) is not None and groups:
        groups = decayed_groups(model, groups, cfg.layer_decay)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
