"""The training loop, model-agnostic.

Contract: ``model(batch) -> dict`` with ``"loss"`` (scalar, differentiable) and optionally other scalar
tensors, which are logged; ``batch`` is what the DataLoader yields (dict of tensors). Augmentation lives
in the dataset or in the model's training forward.

Per optimizer step: cosine lr (linear warm-up, per-layer scales under ``layer_decay``), bf16 or fp16 autocast
if asked (fp16 with a GradScaler), backward, optional grad-norm clipping, AdamW. Under torchrun the model is
wrapped in DDP (``sync_bn`` converts its BatchNorms first) and the sampler shards by rank; only rank 0 logs
and writes.

Files in ``work_dir``: ``checkpoint_last.pth`` holds everything an exact resume needs (the data order is a
function of (seed, epoch), and the RNG states of every rank are saved, so a resumed run ends with the same
weights as an uninterrupted one). Every ``ckpt_interval`` epochs a ``checkpoint_epoch{N}.pth`` (weights only
unless ``epoch_ckpt_optimizer``) of which the newest ``max_keep_ckpts`` stay; with ``save_best`` a
``checkpoint_best.pth`` at the best validation value. A new run refuses a work dir that holds another run.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from pcmae.engine.checkpoint import load_checkpoint, save_checkpoint
from pcmae.engine.config import TrainConfig, dump_config
from pcmae.engine.device import move_to_device
from pcmae.engine.distributed import (ResumableSampler, all_gather_object, all_reduce_mean, barrier, cleanup,
                                      convert_sync_batchnorm, init_distributed)
from pcmae.engine.logger import MetricMeter, TrainLogger
from pcmae.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from pcmae.engine.schedule import build_optimizer, cosine_lr, set_lr
from pcmae.io.atomic import remove_stale_temp_files
from pcmae.registry import ConfigError

LAST_CHECKPOINT = "checkpoint_last.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"
RUN_FILES = (LAST_CHECKPOINT, "metrics.jsonl")  # a work dir with one of these (non-empty) holds a run


class WorkDirInUse(ValueError):
    """A new run was started in a work dir that holds another run's checkpoint or metrics."""


class Trainer:
    """Trains ``model`` on ``train_dataset`` with the settings of a TrainConfig; see the module docstring."""

    def __init__(self, model: torch.nn.Module, train_dataset, cfg: TrainConfig, work_dir,
                 val_dataset=None, collate_fn: Optional[Callable] = None, config: Optional[dict] = None,
                 picture_dataset=None):
        """``cfg``: the ``train`` section (TrainConfig or dict); ``config``: the whole resolved config,
        saved as ``<work_dir>/config.yaml`` and inside checkpoints; ``picture_dataset``: its first
        ``vis_samples`` items are drawn by ``model.picture(batch)`` into TensorBoard every ``vis_interval`` steps."""
        self.cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(dict(cfg))
        self.work_dir, self.config = Path(work_dir), config
        self.dist = init_distributed(self.cfg.device)
        self.device = self.dist.device
        seed_everything(self.cfg.seed + self.dist.rank, self.cfg.deterministic)
        if self.cfg.sync_bn and self.dist.world_size > 1:
            model = convert_sync_batchnorm(model, self.device)
        self.model = model.to(self.device)
        self.train_model = self.model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.amp == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)
        self.sampler = ResumableSampler(train_dataset, self.dist.world_size, self.dist.rank, seed=self.cfg.seed)
        self.generator = torch.Generator()  # reseeded per epoch: worker seeds follow (seed, epoch, rank)
        self.loader = self._loader(train_dataset, collate_fn, sampler=self.sampler, drop_last=self.cfg.drop_last,
                                   generator=self.generator)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_dataset)} training samples over {self.dist.world_size} process(es) make "
                             f"no full batch of train.batch_size={self.cfg.batch_size}; lower it or set "
                             "train.drop_last=false")
        self.total_steps = self.cfg.epochs * self.steps_per_epoch
        self.warmup_steps = round(self.cfg.warmup_epochs * self.steps_per_epoch)
        self.val_loader = None
        if val_dataset is not None:  # each rank evaluates its own shard, no padding
            shard = Subset(val_dataset, range(self.dist.rank, len(val_dataset), self.dist.world_size))
            self.val_loader = self._loader(shard, collate_fn, shuffle=False, drop_last=False)
        self.picture_batch = None  # drawn by model.picture(batch): TensorBoard every vis_interval steps, save_picture
        if picture_dataset is not None and self.cfg.vis_samples > 0:
            if not callable(getattr(self.model, "picture", None)):
                raise ConfigError(f"{type(self.model).__name__} draws no pictures (no picture method); pass no "
                                  "picture_dataset, or set train.vis_samples=0")
            items = [picture_dataset[i] for i in range(min(self.cfg.vis_samples, len(picture_dataset)))]
            self.picture_batch = (collate_fn or torch.utils.data.default_collate)(items)
        self.best = None  # (metric value, epoch) of checkpoint_best.pth
        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # optimizer steps done in the current epoch
        self.step = 0  # optimizer steps done in total
        self._saved_step = -1
        self._meter, self._tic = MetricMeter(), time.perf_counter()
        self.last_metrics: dict = {}

    def _loader(self, dataset, collate_fn, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers,
                          collate_fn=collate_fn, pin_memory=self.device.type == "cuda", **kwargs)

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, resume=False, overwrite: bool = False) -> dict:
        """Train to ``cfg.epochs`` (or ``cfg.max_steps``). ``resume``: True continues from checkpoint_last of the
        work dir, a path from that checkpoint. A work dir that holds another run is refused unless ``overwrite``.
        Returns {"final_loss", "steps", "epochs", "seconds"}. Tears down a process group it created."""
        if self.dist.is_main:
            remove_stale_temp_files(self.work_dir, "checkpoint*")
        if resume:
            self.load(self.work_dir / LAST_CHECKPOINT if resume is True else Path(resume))
        else:
            self._check_work_dir(overwrite)
        log = TrainLogger(self.work_dir, self.dist.is_main, self.cfg.epochs, self.total_steps, self.step)
        if self.dist.is_main:
            dump_config(self.config or {"train": self.cfg.to_dict()}, self.work_dir / "config.yaml")
        log.info(f"{'resuming' if resume else 'starting'} at step {self.step}/{self.total_steps} "
                 f"(epoch {self.epoch}/{self.cfg.epochs}, {self.steps_per_epoch} steps per epoch), "
                 f"{self.dist.world_size} process(es) on {self.device}")
        start, start_step = time.perf_counter(), self.step
        self._tic = start
        try:
            while self.epoch < self.cfg.epochs and not self._should_stop():
                self._train_epoch(log)
                if self.batch_in_epoch < self.steps_per_epoch:
                    break  # stopped by max_steps inside the epoch
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                val = {}
                if self.val_loader is not None and (self.epoch % self.cfg.val_interval == 0
                                                    or self.epoch == self.cfg.epochs):
                    val = self.validate()
                    log.log(self.step, self.epoch, val, prefix="val")
                if self.epoch % self.cfg.ckpt_interval == 0 or self.epoch == self.cfg.epochs:
                    self.save(log, keep_epoch=True)
                self._keep_best(log, {**{f"val/{k}": v for k, v in val.items()},
                                      **{f"train/{k}": v for k, v in self.last_metrics.items()}})
            if self.step != self._saved_step and self.step > start_step:
                self.save(log)
        finally:
            log.close()
        barrier()
        cleanup(self.dist)
        return {"final_loss": self.last_metrics.get("loss"), "steps": self.step, "epochs": self.epoch,
                "seconds": time.perf_counter() - start}

    def _check_work_dir(self, overwrite: bool) -> None:
        """Refuse to start a new run over another one's files (its metrics.jsonl would be emptied at once)."""
        found = [name for name in RUN_FILES if (self.work_dir / name).is_file()
                 and (self.work_dir / name).stat().st_size > 0]
        if found and not overwrite:
            raise WorkDirInUse(f"{self.work_dir} already holds a run ({', '.join(found)}); pass --resume to continue "
                               "it, --overwrite to start over, or another --work-dir")
        if found and self.dist.is_main:
            for name in (*RUN_FILES, BEST_CHECKPOINT):
                (self.work_dir / name).unlink(missing_ok=True)
            for old in self.work_dir.glob("checkpoint_epoch*.pth"):
                old.unlink()

    def _should_stop(self) -> bool:
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    def _train_epoch(self, log: TrainLogger) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.start_index = self.batch_in_epoch * self.cfg.batch_size
        self.generator.manual_seed(self.cfg.seed + 1_000_003 * self.epoch + 7_919 * self.dist.rank)
        self.model.train()
        for batch in self.loader:  # fit() checks max_steps before the epoch, this loop after each step
            self._meter.add(self.train_step(batch), samples=batch_size_of(batch) * self.dist.world_size)
            if self.step % self.cfg.log_interval == 0 or self.step == self.total_steps or self._should_stop():
                self._log_step(log)
            if self.picture_batch is not None and self.cfg.vis_interval and self.step % self.cfg.vis_interval == 0:
                log.image("picture", self.picture(), self.step)
            if self._should_stop():
                break  # before the loader fetches (and draws random numbers for) another batch

    def _log_step(self, log: TrainLogger) -> None:
        """Means since the last logged step (over ranks too), speed; non-finite values stop the run."""
        elapsed = time.perf_counter() - self._tic
        metrics = all_reduce_mean(self._meter.means())
        metrics.update(time_per_step=elapsed / self._meter.weight, samples_per_s=self._meter.samples / elapsed)
        check_finite(metrics, self.step, self.epoch + 1)
        log.log(self.step, self.epoch + 1, metrics)
        self.last_metrics, self._meter, self._tic = metrics, MetricMeter(), time.perf_counter()

    def picture(self):
        """``model.picture`` of the picture batch, (H, W, 3) uint8, in eval mode; the training RNG is untouched."""
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed)  # the same masks in every picture of a run
            image = self.model.picture(move_to_device(self.picture_batch, self.device))
        self.model.train(was_training)
        return image

    def save_picture(self, path) -> Path:
        """Write ``picture()`` as a PNG (atomically)."""
        from pcmae.visualization import save_png  # matplotlib only when a picture is drawn

        if self.picture_batch is None:
            raise ValueError("no picture batch: the Trainer was built without picture_dataset or with vis_samples=0")
        return save_png(self.picture(), path)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train_step(self, batch) -> dict:
        """One optimizer step; returns the detached scalar outputs (+ lr, grad_norm)."""
        lr = cosine_lr(self.step, self.cfg.lr, self.cfg.min_lr, self.warmup_steps, self.total_steps)
        set_lr(self.optimizer, lr)
        batch = move_to_device(batch, self.device)
        with self.autocast():
            out = self.train_model(batch)
        loss = check_output(out)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        scalars = scalar_outputs(out)
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            scalars["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)  # skips the step (and lowers the scale) when fp16 gradients overflowed
        self.scaler.update()
        self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
        return {**scalars, "lr": lr}

    @torch.no_grad()
    def validate(self) -> dict:
        """Sample-weighted means of the model's scalar outputs on the validation set (training RNG untouched)."""
        meter = MetricMeter()
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for batch in self.val_loader:
                with self.autocast():
                    out = self.model(move_to_device(batch, self.device))
                meter.add(scalar_outputs(out), weight=batch_size_of(batch))
        self.model.train()
        return all_reduce_mean(meter.means())

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resume needs (collective under DDP: every rank must call it)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "best": self.best,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "rng": all_gather_object(capture_rng_state()),
                "data_order": {"seed": self.cfg.seed, "batch_size": self.cfg.batch_size,
                               "world_size": self.dist.world_size, "steps_per_epoch": self.steps_per_epoch},
                "train_config": self.cfg.to_dict(), "config": self.config}

    def save(self, log: TrainLogger, keep_epoch: bool = False) -> None:
        state = self.state_dict()
        if self.dist.is_main:
            save_checkpoint(self.work_dir / LAST_CHECKPOINT, state)
            if keep_epoch and self.cfg.max_keep_ckpts != 0:
                save_checkpoint(self.work_dir / f"checkpoint_epoch{self.epoch}.pth", self._weights_state(state))
                self._drop_old_epoch_checkpoints()
            log.info(f"saved {self.work_dir / LAST_CHECKPOINT} (epoch {self.epoch}, step {self.step})")
        self._saved_step = self.step
        barrier()

    def _weights_state(self, state: dict) -> dict:
        """A per-epoch / best file: the weights, position and configs; the optimizer only if asked."""
        keep = ("model", "epoch", "step", "train_config", "config", "best")
        if self.cfg.epoch_ckpt_optimizer:
            return state
        return {key: state[key] for key in keep}

    def _drop_old_epoch_checkpoints(self) -> None:
        if self.cfg.max_keep_ckpts < 0:
            return
        files = sorted(self.work_dir.glob("checkpoint_epoch*.pth"),
                       key=lambda f: int(f.stem[len("checkpoint_epoch"):] or -1))
        for old in files[:-self.cfg.max_keep_ckpts]:
            old.unlink(missing_ok=True)

    def _keep_best(self, log: TrainLogger, metrics: dict) -> None:
        """Write checkpoint_best.pth when ``save_best``'s metric improved (all ranks see the same value)."""
        name = self.cfg.save_best
        if name is None or name not in metrics:
            return
        value = float(metrics[name])
        lower = self.cfg.save_best_mode == "min" or (self.cfg.save_best_mode == "auto" and "loss" in name)
        if not math.isfinite(value) or (self.best is not None
                                        and (value >= self.best[0] if lower else value <= self.best[0])):
            return
        self.best = (value, self.epoch)
        state = self.state_dict()  # collective under DDP
        if self.dist.is_main:
            save_checkpoint(self.work_dir / BEST_CHECKPOINT, self._weights_state(state))
            log.info(f"saved {self.work_dir / BEST_CHECKPOINT} ({name} {value:.4g} at epoch {self.epoch})")
        barrier()

    def load(self, path) -> None:
        """Restore a ``state_dict()`` checkpoint: weights, optimizer, position in the data, RNG states."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {path} (run without --resume to start)")
        state = load_checkpoint(path)  # on CPU; load_state_dict copies to the device
        if "optimizer" not in state or "rng" not in state:
            raise ValueError(f"{path}: holds weights only (a per-epoch or best file), not a run to resume; "
                             "resume from checkpoint_last.pth, or start from these weights with --load-from")
        order = state.get("data_order", {})
        if order.get("steps_per_epoch") != self.steps_per_epoch:
            raise ValueError(f"{path}: written with {order.get('steps_per_epoch')} steps per epoch "
                             f"(batch_size {order.get('batch_size')}, {order.get('world_size')} process(es)); this "
                             f"run has {self.steps_per_epoch}: resume with the same batch size and process count")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.best = tuple(state["best"]) if state.get("best") else None
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self._saved_step = self.step
        if len(state["rng"]) == self.dist.world_size:
            restore_rng_state(state["rng"][self.dist.rank])
        else:
            warnings.warn(f"{path}: RNG states of {len(state['rng'])} process(es), running {self.dist.world_size}; "
                          "random streams restart from the seed", stacklevel=2)


def batch_size_of(batch) -> int:
    """Leading dimension of the first tensor found in the batch (1 if none)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    return next((batch_size_of(v) for v in values if isinstance(v, (torch.Tensor, dict, list, tuple))), 1)


def check_output(out) -> torch.Tensor:
    """The model's loss, after checking the output contract."""
    if not isinstance(out, dict) or "loss" not in out:
        found = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise TypeError(f"the model must return a dict with a 'loss' entry, got {found}")
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise TypeError("model output 'loss' must be a scalar tensor that requires grad, got "
                        f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
    return loss.reshape(())


def scalar_outputs(out: dict) -> dict:
    """The one-element tensors / numbers of a model output, detached (logged)."""
    return {key: value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else float(value)
            for key, value in out.items()
            if (isinstance(value, torch.Tensor) and value.numel() == 1)
            or (isinstance(value, (int, float)) and not isinstance(value, bool))}


def check_finite(metrics: dict, step: int, epoch: int) -> None:
    bad = {k: v for k, v in metrics.items() if v != v or v in (float("inf"), float("-inf"))}
    if bad:
        raise FloatingPointError(f"non-finite {bad} at step {step} (epoch {epoch}); lower train.lr, "
                                 "set train.grad_clip or check the data")
