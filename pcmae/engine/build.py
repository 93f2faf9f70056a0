"""Build models and datasets from config sections. Importing this module fills the registries."""
from __future__ import annotations

import pcmae.data  # noqa: F401  (registers datasets)
import pcmae.downstream  # noqa: F401  (registers fine-tuning models)
import pcmae.pretrainers  # noqa: F401  (registers pre-training objectives)
from pcmae.registry import DATASETS, MODELS


def build_model(cfg: dict):
    return MODELS.build(cfg, where="model")


def build_dataset(cfg: dict, where: str = "data.train"):
    return DATASETS.build(cfg, where=where)
