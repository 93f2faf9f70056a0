"""YAML configs: ``_base_`` inheritance, dotted ``key=value`` overrides, and a schema where every key is checked.

Top level (``CONFIG_SECTIONS``)::

    model:    {type: PointMAE, ...}          # kwargs checked against the registered class
    data:     {train: {type: ..., ...}, val: {type: ..., ...}}   # val optional
    train:    {epochs: 300, lr: 1e-3, ...}    # fields of TrainConfig
    probe:    {train: {type: ...}, test: {type: ...}}             # optional, tools/probe.py
    work_dir: work_dirs/x                     # optional

An unknown key anywhere raises ``ConfigError`` naming the dotted key and the closest valid ones.
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Optional, Tuple, get_type_hints

import yaml

from pcmae.engine.checkpoint import atomic_write
from pcmae.registry import ConfigError, Registry, check_kwargs, closest

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
CONFIG_SECTIONS = {
    "model": "the model: a dict with 'type' (a registered model) and its keyword arguments",
    "data": "datasets: 'train' (required) and 'val', each a dict with 'type'",
    "train": "engine settings (TrainConfig fields)",
    "probe": "linear-probe datasets: 'train' and 'test', each a dict with 'type'",
    "work_dir": "output folder",
    "tta": "test-time adaptation settings (tools/tta.py, pcmae.tta.TTAConfig fields)",
}
REQUIRED_SECTIONS = ("model", "data", "train")
DATASET_GROUPS = {"data": ("train", "val"), "probe": ("train", "test")}  # section -> its dataset keys
REQUIRED_DATASETS = {"data": ("train",), "probe": ("train", "test")}


@dataclass
class TrainConfig:
    """Engine settings (the ``train:`` section). ``batch_size`` is per process (per GPU under torchrun)."""

    epochs: int = 100
    batch_size: int = 32
    num_workers: int = 0
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    grad_clip: Optional[float] = None  # max global grad norm, None = no clipping
    amp: str = "none"  # "none" | "bf16" (autocast) | "fp16" (autocast + GradScaler, for GPUs without bf16)
    seed: int = 0
    deterministic: bool = False
    drop_last: bool = True  # drop the last incomplete batch of each epoch
    device: str = "auto"  # "auto" (CUDA when present) | "cpu" | "cuda"
    log_interval: int = 10  # optimizer steps between logged lines
    ckpt_interval: int = 1  # epochs between checkpoint_epoch{N}.pth files
    max_keep_ckpts: int = 0  # checkpoint_epoch{N}.pth files kept beside checkpoint_last/best; -1 keeps all
    epoch_ckpt_optimizer: bool = False  # per-epoch files also hold the optimizer state (2-3x larger)
    val_interval: int = 1  # epochs between validations on data.val (when the config has one)
    save_best: Optional[str] = None  # e.g. "val/acc": keep checkpoint_best.pth at the best value of this metric
    save_best_mode: str = "auto"  # "max" | "min" | "auto" (min for names containing "loss", else max)
    sync_bn: bool = False  # under DDP, convert every BatchNorm to SyncBatchNorm
    layer_decay: Optional[float] = None  # layer-wise lr decay (fine-tuning): block i of L gets lr * decay^(L - i)
    vis_samples: int = 4
    vis_interval: Optional[int] = None  # optimizer steps between pictures in TensorBoard (None: only at the end)
    max_steps: Optional[int] = None  # stop after this many optimizer steps (demos, tests); schedule unchanged

    def __post_init__(self):
        hints = get_type_hints(TrainConfig)
        for f in fields(self):
            setattr(self, f.name, _coerce(f"train.{f.name}", getattr(self, f.name), hints[f.name]))
        _require(self.optimizer == "adamw", "train.optimizer", f"only 'adamw' is supported, got {self.optimizer!r}")
        _require(self.amp in ("none", "bf16", "fp16"), "train.amp",
                 f"must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        _require(self.save_best_mode in ("auto", "max", "min"), "train.save_best_mode",
                 f"must be 'auto', 'max' or 'min', got {self.save_best_mode!r}")
        _require(self.save_best is None or self.save_best.startswith(("val/", "train/")), "train.save_best",
                 f"must name a logged metric such as 'val/acc' or 'val/loss', got {self.save_best!r}")
        for name in ("lr", "min_lr", "weight_decay", "warmup_epochs", "betas", "grad_clip", "layer_decay"):
            values = getattr(self, name)
            values = values if isinstance(values, tuple) else (values,)
            _require(all(v is None or math.isfinite(v) for v in values), f"train.{name}",
                     f"must be finite, got {getattr(self, name)!r}")
        _require(self.layer_decay is None or 0 < self.layer_decay <= 1, "train.layer_decay",
                 f"must be in (0, 1] or null, got {self.layer_decay!r}")
        _require(self.max_keep_ckpts >= -1, "train.max_keep_ckpts", f"must be >= -1, got {self.max_keep_ckpts}")
        _require(self.vis_interval is None or self.vis_interval >= 1, "train.vis_interval", "must be >= 1 or null")
        _require(self.device in ("auto", "cpu", "cuda"), "train.device",
                 f"must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        for name in ("epochs", "batch_size", "log_interval", "ckpt_interval", "val_interval"):
            _require(getattr(self, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "vis_samples", "lr", "min_lr", "weight_decay", "warmup_epochs"):
            _require(getattr(self, name) >= 0, f"train.{name}", f"must be >= 0, got {getattr(self, name)}")
        _require(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1 or null")
        _require(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip", "must be > 0 or null")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Like ``TrainConfig(**values)`` but an unknown key is a ConfigError with a suggestion."""
        valid = [f.name for f in fields(cls)]
        for key in values:
            if key not in valid:
                raise ConfigError(f"unknown config key 'train.{key}'{closest(key, valid)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _coerce(key: str, value: Any, hint) -> Any:
    """Check ``value`` against a TrainConfig type hint (int, float, bool, str, Optional[...], Tuple[float, ...])."""
    if value is None and type(None) in getattr(hint, "__args__", ()):
        return None
    if getattr(hint, "__args__", None) and type(None) in hint.__args__:
        hint = next(a for a in hint.__args__ if a is not type(None))
    if getattr(hint, "__origin__", None) is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(hint.__args__):
            raise ConfigError(f"{key}: expected a list of {len(hint.__args__)} numbers, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, hint.__args__)))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")


# --- reading ---------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_value(text: str, key: str = "value") -> Any:
    """A YAML scalar or flow collection: '1e-4' -> 1e-4, 'true' -> True, '[0.9, 0.95]' -> list, 'null' -> None."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {key}={text}: not valid YAML ({problem}); quote strings, close lists") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _load_with_bases(path: Path, chain: tuple) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{BASE_KEY} cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of them, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = merge_configs(merged, _load_with_bases(path.parent / base, (*chain, path)))
    return merge_configs(merged, data)


def merge_configs(base: dict, child: dict) -> dict:
    """Deep merge, child wins; a child dict with ``_delete_: true`` replaces the base value instead."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            replace = value.get(DELETE_KEY, False)
            if not isinstance(replace, bool):
                raise ConfigError(f"'{key}.{DELETE_KEY}' must be true or false, got {replace!r}")
            value = {k: v for k, v in value.items() if k != DELETE_KEY}
            if not replace and isinstance(out.get(key), dict):
                value = merge_configs(out[key], value)
            else:
                value = merge_configs({}, value)  # strip nested _delete_ markers
        out[key] = value
    return out


def apply_override(cfg: dict, item: str) -> None:
    """Apply one ``dotted.key=value`` in place; the path is checked against the schema."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. train.lr=1e-4")
    dotted, text = item.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key in {dotted!r}")
    _check_override_path(parts)
    node = cfg
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {item!r}: '{prefix}' is a {type(child).__name__}, not a section")
        node = child
    node[parts[-1]] = parse_value(text, dotted.strip())


def _check_override_path(parts: list) -> None:
    _check_keys([parts[0]], CONFIG_SECTIONS, "")
    section = parts[0]
    if section in ("train", "work_dir") and len(parts) > (2 if section == "train" else 1):
        raise ConfigError(f"unknown config key '{'.'.join(parts)}': '{'.'.join(parts[:-1])}' has no sub-keys")
    if section == "train" and len(parts) == 2:
        _check_keys(parts[1:], [f.name for f in fields(TrainConfig)], "train.")
    if section in DATASET_GROUPS and len(parts) >= 2:
        _check_keys(parts[1:2], DATASET_GROUPS[section], f"{section}.")


def load_config(path, overrides: Iterable[str] = ()) -> dict:
    """Read ``path`` (resolving ``_base_`` recursively), apply ``overrides`` and validate the result."""
    cfg = _load_with_bases(Path(path), ())
    for item in overrides:
        apply_override(cfg, item)
    try:
        validate_config(cfg)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return cfg


def dump_config(cfg: dict, path) -> Path:
    """Write the resolved config as YAML, atomically (each work_dir keeps the config it ran with)."""
    text = yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)
    return atomic_write(path, lambda f: f.write(text.encode()))


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- validation ------------------------------------------------------------------------------------

def _check_keys(keys, valid, prefix: str) -> None:
    for key in keys:
        if key not in valid:
            raise ConfigError(f"unknown config key '{prefix}{key}'{closest(str(key), valid)}; "
                              f"valid keys: {', '.join(prefix + v for v in valid)}")


def _check_typed(value, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"'{where}' must be a mapping with 'type', got {type(value).__name__}")
    if not isinstance(value.get("type"), str):
        raise ConfigError(f"'{where}' is missing the key '{where}.type' (a registered class name)")


def validate_config(cfg: dict, models: Optional[Registry] = None, datasets: Optional[Registry] = None) -> None:
    """Check the top level, ``train`` and the dataset groups; with registries, also every ``model`` /
    dataset keyword against the registered class signature (nothing is built)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping, got {type(cfg).__name__}")
    _check_keys(cfg, CONFIG_SECTIONS, "")
    for section in REQUIRED_SECTIONS:
        if section not in cfg:
            raise ConfigError(f"missing section '{section}' ({CONFIG_SECTIONS[section]})")
    _check_typed(cfg["model"], "model")
    if not isinstance(cfg["train"], dict):
        raise ConfigError(f"'train' must be a mapping, got {type(cfg['train']).__name__}")
    TrainConfig.from_dict(cfg["train"])
    if "work_dir" in cfg and not isinstance(cfg["work_dir"], str):
        raise ConfigError(f"'work_dir' must be a path string, got {cfg['work_dir']!r}")
    for section, names in DATASET_GROUPS.items():
        if section not in cfg:
            continue
        group = cfg[section]
        if not isinstance(group, dict):
            raise ConfigError(f"'{section}' must be a mapping with {' / '.join(names)}, got {type(group).__name__}")
        _check_keys(group, names, f"{section}.")
        for name in REQUIRED_DATASETS[section]:
            if name not in group:
                raise ConfigError(f"missing key '{section}.{name}' (a dataset with 'type')")
        for name, dataset in group.items():
            _check_typed(dataset, f"{section}.{name}")
            if datasets is not None:
                _check_signature(datasets, dataset, f"{section}.{name}")
    if models is not None:
        _check_signature(models, cfg["model"], "model")


def _check_signature(registry: Registry, section: dict, where: str) -> None:
    try:
        cls = registry.get(section["type"])
    except ConfigError as err:
        raise ConfigError(f"{where}.type: {err}") from None
    kwargs = {k: v for k, v in section.items() if k != "type"}
    check_kwargs(cls, kwargs, where)
    check_kwarg_types(cls, kwargs, where)


SCALAR_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _expected_scalar(param: inspect.Parameter, hints: dict):
    """bool / int / float / str when the parameter's annotation (else its default) says so plainly; else None."""
    hint = hints.get(param.name)
    if hint in SCALAR_TYPES:
        return hint
    if hint is None and param.default is not inspect.Parameter.empty and type(param.default) in SCALAR_TYPES:
        return type(param.default)
    return None


def _fits(value, expected) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, expected)


def check_kwarg_types(cls, kwargs: dict, where: str) -> None:
    """ConfigError naming ``where.key`` when a value cannot be what a plainly typed parameter expects
    (``model.depth=abc`` for ``depth: int``); parameters typed otherwise are left to the class."""
    try:
        params = inspect.signature(cls).parameters
        hints = get_type_hints(cls.__init__ if inspect.isclass(cls) else cls)
    except (TypeError, ValueError, NameError):
        return
    for key, value in kwargs.items():
        if key in params and value is not None:
            expected = _expected_scalar(params[key], hints)
            if expected is not None and not _fits(value, expected):
                raise ConfigError(f"{where}.{key}: expected {SCALAR_TYPES[expected]}, got {value!r} "
                                  f"({type(value).__name__})")
