"""Adapt, then predict, one incoming sample at a time (not the epoch Trainer).

Protocols (``tta.protocol``):
  standard  the source weights are restored before every sample, then ``steps`` steps on ``copies`` copies of it
            (MATE-Standard);
  online    the weights carry over from sample to sample, ``steps`` steps on each (MATE-Online);
  stride    online, but only every ``stride``-th sample adapts (the others are only predicted).
BatchNorm statistics of the encoder (``tta.bn_stats``):
  source  the source model's running statistics, never changed;
  sample  the incoming sample's own statistics (its copies), in adaptation and prediction, never stored (BN-adapt);
  stream  MATE's: adaptation batches normalise with their own statistics and fold them into the running ones
          (momentum ``bn_momentum``); prediction uses the running statistics. Online, they become an average over
          the stream; standard restores the source ones with the weights.
Safety on long streams: the adaptation loss of each sample is compared with the mean over the first
``drift_warmup`` samples; after ``drift_patience`` samples in a row above ``drift_factor`` times that level the
weights go back to the source ones (logged as a reset). The loss alone does not see a classifier collapse (on the
embedded objects, MATE-online at lr 1e-4 came to answer one class for every sample while its reconstruction loss
stayed at its early level), so the predictions are watched too: each sample is also classified by the frozen
source model, and when over the last ``collapse_window`` samples the adapted model's predicted classes are much
less diverse than the source model's on the same samples (entropy of the class histogram below ``collapse_ratio``
times the source's), the weights go back as well. A stream that really is one class for a while leaves the source
model's histogram narrow too, so it does not trigger a reset. A sample that is empty, non-finite or unreadable is
reported and skipped; the stream goes on.
"""
from __future__ import annotations

import collections
import copy
import math
import time
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from pcmae.registry import ConfigError
from pcmae.tta.alignment import gradient_alignment
from pcmae.tta.methods import ADAPTED_PARAMETERS, TTA_METHODS, encoder_batchnorms

PROTOCOLS = ("standard", "online", "stride")
BN_STATS = ("source", "sample", "stream")


@dataclass
class TTAConfig:
    """The ``tta:`` section of a config."""

    method: str = "mate"
    protocol: str = "online"
    steps: int = 1                # gradient steps per adapted sample
    copies: int = 16              # batch of copies of the sample (each masked / seen differently)
    stride: int = 4               # protocol "stride": adapt on every stride-th sample
    lr: float = 1e-4
    bn_stats: Optional[str] = None  # source | sample | stream; None: the method's default
    bn_momentum: float = 0.1      # bn_stats "stream": weight of each adaptation batch in the running statistics
    adapt: Optional[str] = None   # which parameters step: encoder | norms | patch_embed; None: the method's choice
    num_points: int = 1024        # points per sample fed to the model (resampled)
    drift_factor: float = 3.0     # reset when the loss stays above drift_factor x its early level ...
    drift_patience: int = 20      # ... for this many adapted samples in a row
    drift_warmup: int = 20        # samples that set the early level
    collapse_window: int = 50     # samples whose predicted classes are compared with the source model's ...
    collapse_ratio: float = 0.5   # ... reset when their histogram entropy falls below this x the source's
    seed: int = 0

    @classmethod
    def from_dict(cls, cfg: dict) -> "TTAConfig":
        known = {f.name for f in fields(cls)}
        for key in cfg:
            if key not in known:
                raise ConfigError(f"unknown key 'tta.{key}'; valid: {', '.join(sorted(known))}")
        out = cls(**cfg)
        if out.method not in TTA_METHODS:
            raise ConfigError(f"'tta.method' must be one of {', '.join(TTA_METHODS.names())}, got {out.method!r}")
        if out.protocol not in PROTOCOLS:
            raise ConfigError(f"'tta.protocol' must be one of {', '.join(PROTOCOLS)}, got {out.protocol!r}")
        for key in ("steps", "copies", "stride", "num_points", "drift_patience", "drift_warmup", "collapse_window"):
            value = getattr(out, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"'tta.{key}' must be an int >= 1, got {value!r}")
        if out.adapt is not None and out.adapt not in ADAPTED_PARAMETERS:
            raise ConfigError(f"'tta.adapt' must be one of {', '.join(ADAPTED_PARAMETERS.names())}, got "
                              f"{out.adapt!r}")
        if out.bn_stats is not None and out.bn_stats not in BN_STATS:
            raise ConfigError(f"'tta.bn_stats' must be one of {', '.join(BN_STATS)}, got {out.bn_stats!r}")
        if not isinstance(out.bn_momentum, (int, float)) or not 0 < out.bn_momentum <= 1:
            raise ConfigError(f"'tta.bn_momentum' must be a number in (0, 1], got {out.bn_momentum!r}")
        if not isinstance(out.collapse_ratio, (int, float)) or not 0 < out.collapse_ratio <= 1:
            raise ConfigError(f"'tta.collapse_ratio' must be a number in (0, 1], got {out.collapse_ratio!r}")
        for key in ("lr", "drift_factor"):
            value = getattr(out, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"'tta.{key}' must be a finite number > 0, got {value!r}")
        return out


class BadSample(ValueError):
    """An incoming sample that cannot be classified (empty, non-finite, unreadable)."""


def prepare_points(points, num_points: int, generator: torch.Generator, device) -> torch.Tensor:
    """(N, >=3) array / tensor -> (num_points, 3) float32 on ``device``: x, y, z, centred and scaled into the unit
    sphere (ModelNet40's normalisation), resampled (a random subset, or all points and random repeats when there
    are fewer). Non-finite rows make the sample bad (BadSample), as do fewer than 3 points."""
    xyz = torch.as_tensor(np.asarray(points, dtype=np.float32) if not isinstance(points, torch.Tensor) else points)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise BadSample(f"expected (N, >=3) points, got shape {tuple(xyz.shape)}")
    xyz = xyz[:, :3].float()
    if not torch.isfinite(xyz).all():
        raise BadSample(f"{int((~torch.isfinite(xyz).all(1)).sum())} of {len(xyz)} points are NaN / inf")
    if len(xyz) < 3:
        raise BadSample(f"{len(xyz)} points")
    xyz = xyz - xyz.mean(0)
    xyz = xyz / xyz.norm(dim=1).max().clamp(min=1e-9)
    if len(xyz) >= num_points:
        pick = torch.randperm(len(xyz), generator=generator)[:num_points]
    else:
        pick = torch.cat([torch.arange(len(xyz)), torch.randint(0, len(xyz), (num_points - len(xyz),),
                                                                generator=generator)])
    return xyz[pick].to(device)


class StreamAdapter:
    """``adapter(points, label=None) -> record``: adapt on the sample per the protocol, then predict it.

    model: a classifier with ``classify`` and ``encoder`` (PointClassifier, MATE); it is adapted in place (only the
    method's parameters keep requires_grad) and ``reset()`` restores the weights it had when the adapter was made."""

    def __init__(self, model: nn.Module, cfg: TTAConfig):
        self.model, self.cfg = model, cfg
        self.method = TTA_METHODS.get(cfg.method)()
        self.bn_stats = self.method.bn_stats if cfg.bn_stats is None else cfg.bn_stats
        self.params = self.method.parameters(model)  # also checks that the model suits the method
        if cfg.adapt is not None and self.params:
            self.params = ADAPTED_PARAMETERS.get(cfg.adapt)(model)
        adapted = {id(p) for p in self.params}
        for p in model.parameters():  # no gradient work (or piling-up .grad) for what does not adapt
            p.requires_grad_(id(p) in adapted)
        self.source_state = copy.deepcopy(model.state_dict())
        self.source_model = copy.deepcopy(model).eval() if self.params and cfg.protocol != "standard" else None
        self.recent: collections.deque = collections.deque(maxlen=cfg.collapse_window)  # (adapted, source) preds
        self.device = next(model.parameters()).device
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.device_generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.optimizer = self._new_optimizer()
        self.index = 0
        self.early_losses: list[float] = []
        self.above = 0
        self.resets = 0

    def _new_optimizer(self):
        return torch.optim.Adam(self.params, lr=self.cfg.lr) if self.params else None

    def reset(self) -> None:
        """Back to the source weights (and a fresh optimizer); the prediction watch starts over."""
        self.model.load_state_dict(self.source_state)
        self.optimizer = self._new_optimizer()
        self.recent.clear()

    def _modes(self, adapting: bool) -> None:
        """eval everywhere except the encoder's BatchNorm layers, per ``bn_stats`` (module docstring)."""
        self.model.eval()
        for bn in encoder_batchnorms(self.model):
            if self.bn_stats == "sample":  # batch statistics, running ones untouched
                bn.train(True)
                bn.track_running_stats = False
            else:
                bn.train(self.bn_stats == "stream" and adapting)
                bn.track_running_stats = True
                bn.momentum = self.cfg.bn_momentum

    def _adapt(self, x: torch.Tensor) -> Optional[float]:
        copies = x.unsqueeze(0).expand(self.cfg.copies, -1, -1).contiguous()
        self._modes(adapting=True)
        if not self.params:  # bn_stats "stream" alone: the copies only pass through to update the statistics
            with torch.no_grad():
                self.model.classify(copies)
            return None
        loss_value = None
        for _ in range(self.cfg.steps):
            loss = self.method.loss(self.model, copies, self.device_generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"adaptation loss is {loss.item()} at sample {self.index}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_value = loss.item() if loss_value is None else loss_value  # the loss before this sample's steps
        return loss_value

    def _watch_drift(self, loss: Optional[float]) -> bool:
        """True when the loss has drifted long enough: the weights were reset."""
        if loss is None:
            return False
        if len(self.early_losses) < self.cfg.drift_warmup:
            self.early_losses.append(loss)
            return False
        level = sum(self.early_losses) / len(self.early_losses)
        self.above = self.above + 1 if loss > self.cfg.drift_factor * level else 0
        if self.above >= self.cfg.drift_patience:
            self.reset()
            self.above, self.resets = 0, self.resets + 1
            return True
        return False

    def _watch_collapse(self, pred: int, x: torch.Tensor) -> bool:
        """True when the adapted predictions have collapsed against the source model's: the weights were reset."""
        if self.source_model is None:
            return False
        with torch.no_grad():
            self.recent.append((pred, int(self.source_model.classify(x.unsqueeze(0))[0].argmax())))
        if len(self.recent) < self.cfg.collapse_window:
            return False
        adapted, source = zip(*self.recent)
        if class_entropy(adapted) < self.cfg.collapse_ratio * class_entropy(source):
            self.reset()
            self.resets += 1
            return True
        return False

    def alignment(self, points, label: int) -> dict:
        """Cosines of this method's adaptation gradient (and of Adam's first step) with the true label's
        cross-entropy gradient on the source weights (pcmae.tta.alignment), in the modes adaptation runs in; the
        source state is restored."""
        if not self.params:
            raise ValueError(f"tta.method {self.cfg.method!r} takes no gradient step: nothing to align")
        x = prepare_points(points, self.cfg.num_points, self.generator, self.device)
        self.reset()
        self._modes(adapting=True)
        cosine = gradient_alignment(self.model, self.method, self.params, x, int(label), self.cfg.copies,
                                    self.device_generator)
        self.reset()
        return cosine

    def __call__(self, points, label: Optional[int] = None) -> dict:
        """One sample (N, >=3) -> {index, pred, label, correct, loss, adapted, reset, reset_reason, adapt_ms,
        latency_ms (adapt + predict), watch_ms (the source model's prediction for the collapse watch, after)}."""
        start = time.perf_counter()
        x = prepare_points(points, self.cfg.num_points, self.generator, self.device)
        protocol = self.cfg.protocol
        adapts = ((bool(self.params) or self.bn_stats == "stream")
                  and (protocol != "stride" or self.index % self.cfg.stride == 0))
        if protocol == "standard":
            self.reset()
        loss = self._adapt(x) if adapts else None
        reset = "drift" if protocol != "standard" and self._watch_drift(loss) else None
        adapted = time.perf_counter()
        self._modes(adapting=False)
        with torch.no_grad():
            logits = self.model.classify(x.unsqueeze(0))[0]
        pred = int(logits.argmax())
        done = time.perf_counter()
        if self._watch_collapse(pred, x):  # after the prediction: the next sample starts from the source weights
            reset = "collapse"
        watched = time.perf_counter()
        record = {"index": self.index, "pred": pred, "label": label,
                  "correct": None if label is None else bool(pred == int(label)), "loss": loss, "adapted": adapts,
                  "reset": reset is not None, "reset_reason": reset, "adapt_ms": 1000 * (adapted - start),
                  "latency_ms": 1000 * (done - start), "watch_ms": 1000 * (watched - done)}
        self.index += 1
        return record


def class_entropy(preds) -> float:
    """Entropy (nats) of the histogram of predicted classes."""
    counts = np.bincount(np.asarray(preds, dtype=np.int64))
    p = counts[counts > 0] / len(preds)
    return float(-(p * np.log(p)).sum())


def run_stream(adapter: StreamAdapter, samples: Iterable[Any], log=None) -> Iterator[dict]:
    """Feed ``samples`` (StreamSample-like: .name, .points, .label, .error) through ``adapter``; a bad one yields a
    record with "skipped" and its reason (and is printed once through ``log``), never stops the stream."""
    for sample in samples:
        if getattr(sample, "error", None) is None:
            try:
                record = adapter(sample.points, sample.label)
                record["name"] = sample.name
                yield record
                continue
            except BadSample as err:
                reason = str(err)
        else:
            reason = sample.error
        if log is not None:
            log(f"skipped {sample.name}: {reason}")
        yield {"name": sample.name, "skipped": reason}
