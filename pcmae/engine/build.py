"""Build models and datasets from config sections. Importing this module fills the registries."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def default_work_dir(config_path, cfg: dict) -> Path:
    """The config's ``work_dir``, else ``work_dirs/<path below configs/>`` (``configs/voxel_mae/kitti.yaml`` ->
    ``work_dirs/voxel_mae/kitti``) so that two configs of one name never share a folder; else the file's stem."""
    if cfg.get("work_dir"):
        return Path(cfg["work_dir"])
    path = Path(config_path).resolve().with_suffix("")
    parts = path.parts
    if "configs" in parts:
        return Path("work_dirs", *parts[len(parts) - parts[::-1].index("configs"):])
    return Path("work_dirs") / path.name


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--work-dir, --resume [PATH], --load-from PATH, --overwrite: shared by the training tools."""
    parser.add_argument("--work-dir", help="output folder (default: the config's work_dir, else "
                                           "work_dirs/<config path below configs/>)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                        help="continue a run: from <work-dir>/checkpoint_last.pth, or from PATH")
    parser.add_argument("--load-from", metavar="PATH",
                        help="start from these weights (a pcmae checkpoint) with a fresh optimizer and schedule")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a work dir that holds another run (its checkpoints and metrics go)")


def check_run_arguments(args) -> None:
    if args.resume and args.load_from:
        raise ConfigError("--resume continues a run (weights, optimizer, position); --load-from starts a new one "
                          "from weights: give one of them")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: give one of them")


def command_line(main):
    """Run ``main`` so that a bad config, input or file ends with one clear line on stderr (exit status 2)."""
    def run():
        try:
            return main()
        except (ConfigError, OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    return run
