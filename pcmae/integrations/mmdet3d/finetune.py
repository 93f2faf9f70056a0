"""Fine-tuning helpers for tools/finetune_det.py and tools/label_efficiency.py: mmengine configs of configs/mmdet3d/,
their pcmae encoders, label subsets, iteration limits, the main metric, KITTI's rotated IoU on CPU, atomic JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from pcmae.io.atomic import atomic_write
from pcmae.registry import ConfigError, closest

DATASET_WRAPPERS = ("RepeatDataset", "CBGSDataset", "ClassBalancedDataset")
# evaluator type -> the key of its headline metric (KITTI moderate 3D AP over classes; NDS; Waymo mAPH L2)
MAIN_METRICS = {
    "KittiMetric": "Kitti metric/pred_instances_3d/KITTI/Overall_3D_AP40_moderate",
    "NuScenesMetric": "NuScenes metric/pred_instances_3d_NuScenes/NDS",
    "WaymoMetric": "Waymo metric/Overall/L2 mAPH",
}


def load_det_config(path, overrides: Sequence[str] = ()):
    """mmengine Config of ``path`` with ``key=value`` overrides. An unknown key is a one-line ConfigError naming the
    closest valid keys (mmengine would add it silently); ``+key=value`` adds a key its parent does not have yet."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        from mmengine.config import Config, DictAction
    except ImportError as err:
        raise ConfigError(f"{path}: needs mmengine / mmdet3d (tools/install_mmdet3d.sh): {err}") from None
    try:
        cfg = Config.fromfile(str(path))
    except ImportError as err:  # custom_imports (the pcmae plugin) or an mmdet3d:: base
        raise ConfigError(f"{path}: {err}".replace("\n", " ")) from None
    options = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        adding = key.startswith("+")
        key = key[1:] if adding else key
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        _check_key(cfg, key.rpartition(".")[0] if adding else key, path)
        options[key] = DictAction._parse_iterable(value)
    cfg.merge_from_dict(options)
    return cfg


def _check_key(cfg, dotted: str, path) -> None:
    node, walked = dict(cfg.items()), []
    for part in dotted.split(".") if dotted else []:
        if isinstance(node, (list, tuple)):
            if not (part.isdigit() and int(part) < len(node)):
                raise ConfigError(f"{path}: '{'.'.join(walked)}' is a list of {len(node)}, no item {part!r}")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                raise ConfigError(f"{path}: unknown config key '{'.'.join(walked + [part])}'{closest(part, node)}")
            node = node[part]
        else:
            raise ConfigError(f"{path}: '{'.'.join(walked)}' is a {type(node).__name__}, it has no key {part!r}")
        walked.append(part)


def pcmae_modules(model_cfg, where: str = "model") -> Iterator[Tuple[str, dict]]:
    """(dotted path, dict) of every sub-config of the model whose ``type`` starts with 'Pcmae'."""
    if isinstance(model_cfg, dict):
        if str(model_cfg.get("type", "")).startswith("Pcmae"):
            yield where, model_cfg
        for key, value in model_cfg.items():
            yield from pcmae_modules(value, f"{where}.{key}")
    elif isinstance(model_cfg, (list, tuple)):
        for i, value in enumerate(model_cfg):
            yield from pcmae_modules(value, f"{where}.{i}")


def pretrained_modules(cfg) -> List[Tuple[str, dict]]:
    """The pcmae encoders of ``cfg.model`` that start from a checkpoint (``init_cfg`` of type Pretrained)."""
    return [(where, m) for where, m in pcmae_modules(cfg.model)
            if isinstance(m.get("init_cfg"), dict) and m["init_cfg"].get("type") == "Pretrained"]


def set_pretrained(cfg, config_path, checkpoint: Optional[str]) -> Optional[str]:
    """Point every pretrained pcmae encoder at ``checkpoint`` (default: the config's own path); the path used, or
    None for a scratch config. A checkpoint for a scratch config, or a missing file, is an error."""
    modules = pretrained_modules(cfg)
    if not modules:
        if checkpoint:
            raise ConfigError(f"{config_path}: no pcmae encoder with init_cfg type 'Pretrained' (a scratch config?); "
                              f"drop --pretrained")
        return None
    checkpoint = checkpoint or modules[0][1]["init_cfg"].get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {checkpoint} (pre-train first or pass "
                                f"--pretrained)")
    for _, module in modules:
        module["init_cfg"]["checkpoint"] = str(checkpoint)
    cfg.pretrained = str(checkpoint)
    return str(checkpoint)


def scratch_twin(config_path) -> Path:
    """configs/mmdet3d/x.py -> configs/mmdet3d/x_scratch.py (must exist)."""
    config_path = Path(config_path)
    if config_path.stem.endswith("_scratch"):
        raise ConfigError(f"{config_path}: give the pretrained config; its _scratch twin is found from its name")
    twin = config_path.with_name(f"{config_path.stem}_scratch{config_path.suffix}")
    if not twin.is_file():
        raise FileNotFoundError(f"scratch twin of {config_path} not found: {twin}")
    return twin


def train_dataset_cfg(cfg) -> dict:
    """The innermost dataset config of ``train_dataloader`` (under RepeatDataset / CBGSDataset / ...)."""
    dataset = cfg.train_dataloader.dataset
    while dataset.get("type") in DATASET_WRAPPERS:
        dataset = dataset.dataset
    return dataset


def label_subset(cfg, fraction: float, seed: int) -> Tuple[int, int]:
    """Keep a seeded subset of the training frames (``indices=`` of the innermost dataset); (kept, total).

    The subset is the first ``max(1, round(fraction * total))`` frames of one permutation per seed, so for a seed
    the frames of a smaller fraction are part of every larger one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--label-fraction must be in (0, 1], got {fraction}")
    dataset = train_dataset_cfg(cfg)
    if "indices" in dataset and fraction < 1:
        raise ConfigError("the train dataset sets 'indices' already; --label-fraction would replace them")
    total = count_frames(cfg, dataset)
    kept = max(1, int(round(fraction * total)))
    if kept < total:
        order = np.random.default_rng(seed).permutation(total)
        dataset["indices"] = sorted(int(i) for i in order[:kept])
    return kept, total


def count_frames(cfg, dataset_cfg: dict) -> int:
    """Frames of a dataset config as mmdet3d reads them (after load_interval etc.), without its pipeline."""
    from mmengine.registry import DATASETS, init_default_scope

    init_default_scope(cfg.get("default_scope", "mmdet3d"))
    probe = {**dataset_cfg, "pipeline": []}
    ann = Path(probe.get("data_root") or "") / probe["ann_file"]
    if not ann.is_file():
        raise FileNotFoundError(f"training info file not found: {ann}")
    return len(DATASETS.build(probe))


def limit_iterations(cfg, max_iters: int) -> None:
    """Train for ``max_iters`` iterations (IterBasedTrainLoop, validation and checkpoint at the end); the
    learning-rate schedule is the config's, cut short."""
    if max_iters < 1:
        raise ValueError(f"--max-iters must be >= 1, got {max_iters}")
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
    hooks = cfg.setdefault("default_hooks", {})
    if "logger" in hooks:
        hooks["logger"]["interval"] = min(hooks["logger"].get("interval", 50), max_iters)
    if "checkpoint" in hooks:
        hooks["checkpoint"]["by_epoch"] = False
    if "log_processor" in cfg:
        cfg.log_processor["by_epoch"] = False


ROTATE_IOU_MODULE = "mmdet3d.evaluation.functional.kitti_utils.rotate_iou"


def rotate_iou_cpu(boxes, query_boxes, criterion=-1, device_id=0):
    """mmdet3d's ``rotate_iou_gpu_eval`` (KITTI BEV / 3D AP) on the CPU, polygon clipping by shapely (GEOS).

    boxes (N, 5), query_boxes (K, 5): [x, y, dx, dy, angle] in the camera BEV, corners turned as mmdet3d's kernel
    turns them -> (N, K) float32: IoU (criterion -1), intersection over the query box's area (0) or the box's (1),
    or the intersection area (any other value). Only pairs whose bounding circles meet are clipped. (mmcv's CPU
    ``box_iou_rotated`` is no substitute: for about 2 % of box pairs that differ by 1e-5 it returns 0.3-0.99.)"""
    import shapely

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    query_boxes = np.asarray(query_boxes, dtype=np.float64).reshape(-1, 5)
    out = np.zeros((len(boxes), len(query_boxes)), dtype=np.float32)
    if out.size == 0:
        return out
    centre_gap = np.hypot(boxes[:, None, 0] - query_boxes[None, :, 0], boxes[:, None, 1] - query_boxes[None, :, 1])
    reach = np.hypot(boxes[:, 2], boxes[:, 3])[:, None] / 2 + np.hypot(query_boxes[:, 2], query_boxes[:, 3])[None] / 2
    i, k = np.nonzero(centre_gap <= reach)
    if len(i) == 0:
        return out
    inter = shapely.area(shapely.intersection(_bev_polygons(boxes)[i], _bev_polygons(query_boxes)[k]))
    area_box, area_query = boxes[i, 2] * boxes[i, 3], query_boxes[k, 2] * query_boxes[k, 3]
    if criterion == -1:
        inter = inter / (area_box + area_query - inter)
    elif criterion == 0:
        inter = inter / area_query
    elif criterion == 1:
        inter = inter / area_box
    out[i, k] = inter
    return out


def _bev_polygons(boxes: np.ndarray):
    """[x, y, dx, dy, angle] -> shapely polygons, corners (+-dx/2, +-dy/2) turned by [[cos, sin], [-sin, cos]]."""
    import shapely

    x, y, dx, dy, angle = boxes.T
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    local_x = np.stack([-dx, -dx, dx, dx], axis=1) / 2
    local_y = np.stack([-dy, dy, dy, -dy], axis=1) / 2
    corners = np.stack([cos * local_x + sin * local_y + x[:, None], -sin * local_x + cos * local_y + y[:, None]], -1)
    return shapely.polygons(corners)


def use_cpu_rotate_iou() -> bool:
    """Without CUDA, give KittiMetric a CPU ``rotate_iou_gpu_eval``: mmdet3d's module compiles a numba CUDA kernel
    when imported and fails on machines without a GPU. True when the CPU version is (now) in place."""
    import sys
    import types

    import torch

    if torch.cuda.is_available():
        return False
    module = sys.modules.get(ROTATE_IOU_MODULE)
    if module is None:
        module = types.ModuleType(ROTATE_IOU_MODULE, "CPU stand-in installed by pcmae.integrations.mmdet3d.finetune")
        sys.modules[ROTATE_IOU_MODULE] = module
    module.rotate_iou_gpu_eval = rotate_iou_cpu
    return True


def main_metric_key(cfg) -> Optional[str]:
    """Key of the headline metric of the config's val_evaluator, None when it has no known one."""
    evaluator = cfg.get("val_evaluator")
    types = [e.get("type") for e in evaluator] if isinstance(evaluator, (list, tuple)) else \
        [evaluator.get("type")] if isinstance(evaluator, dict) else []
    return next((MAIN_METRICS[t] for t in types if t in MAIN_METRICS), None)


def to_float(value):
    """JSON-safe number (numpy / torch scalars -> float, nan / inf -> None)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def write_json(path, data) -> Path:
    """JSON written atomically (temp file + rename)."""
    text = json.dumps(data, indent=2, sort_keys=False).encode()
    return atomic_write(path, lambda f: f.write(text))
