"""Name -> class registries so that YAML configs can say ``type: PointMAE``."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Mapping


class ConfigError(ValueError):
    """A config names an unknown key or type; the message names it and suggests close matches."""


def closest(name: str, candidates) -> str:
    """A ' (did you mean ...?)' suffix listing the closest valid names, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


class Registry:
    """Maps config ``type`` names to classes or functions."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, obj: Callable = None, *, name: str = None):
        def add(o):
            key = name or o.__name__
            if key in self._entries and self._entries[key] is not o:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = o
            return o

        return add(obj) if obj is not None else add

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self):
        return sorted(self._entries)

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} type {name!r}{closest(name, self._entries)}; "
                f"known: {', '.join(self.names())}"
            )
        return self._entries[name]

    def build(self, cfg: Mapping[str, Any], where: str = None, **extra) -> Any:
        """Build ``cfg['type']`` with the other keys as keyword arguments, checked against its signature."""
        where = where or self.kind
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"'{where}' must be a mapping with 'type' (one of {', '.join(self.names())}), "
                              f"got {cfg!r}")
        if "type" not in cfg:
            raise ConfigError(f"{where}: missing key '{where}.type' (one of {', '.join(self.names())})")
        try:
            cls = self.get(cfg["type"])
        except ConfigError as err:
            raise ConfigError(f"{where}.type: {err}") from None
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        for key in kwargs:
            if key in extra:
                raise ConfigError(f"'{where}.{key}' is set by the enclosing model, not in the config")
        check_kwargs(cls, kwargs, where)
        return cls(**kwargs, **extra)


def accepted_kwargs(fn: Callable) -> list | None:
    """Keyword names ``fn`` accepts; for a class whose ``__init__`` passes ``**kwargs`` on, its bases' too.

    None when anything goes (a function with ``**kwargs``).
    """
    chain = [c.__init__ for c in inspect.getmro(fn) if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    names = []
    for f in chain:
        params = inspect.signature(f).parameters
        names += [n for n, p in params.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
    return None


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError naming any key that ``fn`` does not accept."""
    valid = accepted_kwargs(fn)
    if valid is None:
        return
    moved = getattr(fn, "moved_keys", {})  # {old key: where it lives now}, for configs of earlier versions
    for key in kwargs:
        if key in moved:
            raise ConfigError(f"unknown config key '{where}.{key}': it moved to {moved[key]}")
        if key not in valid:
            raise ConfigError(f"unknown config key '{where}.{key}'{closest(key, valid)}")


MODELS = Registry("model")
DATASETS = Registry("dataset")
# parts of the LiDAR pre-training models, chosen by ``{type: ...}`` sub-configs (model.backbone, model.tokenizer,
# model.masking); entries are registered where they are defined (pcmae.backbones, pcmae.tokenizers, pcmae.masking)
BACKBONES = Registry("backbone")
TOKENIZERS = Registry("tokenizer")
MASKINGS = Registry("masking")
