"""Training engine: configs, schedule, checkpoints, logging, DDP and the Trainer (model-agnostic).

``pcmae.engine.build`` (model / dataset construction from configs) is imported on demand, not here; pictures are
drawn by the models (``model.picture``) with :mod:`pcmae.visualization`.
"""
from __future__ import annotations

from pcmae.engine.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from pcmae.engine.config import TrainConfig, dump_config, load_config, validate_config
from pcmae.engine.distributed import is_main_process
from pcmae.engine.rng import seed_everything
from pcmae.engine.schedule import build_optimizer, cosine_lr
from pcmae.engine.trainer import Trainer

__all__ = ["CheckpointError", "TrainConfig", "Trainer", "atomic_write", "build_optimizer", "cosine_lr",
           "dump_config", "is_main_process", "load_checkpoint", "load_config", "save_checkpoint",
           "seed_everything", "validate_config"]
