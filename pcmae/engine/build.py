"""Build models and datasets from config sections. Importing this module fills the registries."""
from __future__ import annotations

import sys

import pcmae.data  # noqa: F401  (registers datasets)
import pcmae.downstream  # noqa: F401  (registers fine-tuning models)
import pcmae.pretrainers  # noqa: F401  (registers pre-training objectives)
from pcmae.engine.config import load_config, validate_config
from pcmae.registry import DATASETS, MODELS, ConfigError


def build_model(cfg: dict):
    return MODELS.build(cfg, where="model")


def build_dataset(cfg: dict, where: str = "data.train"):
    return DATASETS.build(cfg, where=where)


def load_checked_config(path, overrides=()) -> dict:
    """The resolved config, with every model / dataset key checked against its class before anything is built."""
    cfg = load_config(path, overrides)
    try:
        validate_config(cfg, MODELS, DATASETS)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return cfg


def command_line(main):
    """Run ``main`` so that a bad config or input ends with one clear line on stderr (exit status 2)."""
    def run():
        try:
            return main()
        except (ConfigError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    return run
