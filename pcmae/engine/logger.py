"""Training logs: ``metrics.jsonl`` (one JSON object per logged step), ``log.txt``, TensorBoard scalars
under ``tb/``, and a tqdm bar on a terminal (plain lines otherwise). Only the main process writes."""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

from pcmae.engine.checkpoint import atomic_write


def format_metrics(metrics: dict) -> str:
    """``loss 0.0312 lr 4.1e-04 1.2 it/s``: every metric, then lr and speed."""
    parts = [f"{key} {value:.4g}" for key, value in metrics.items()
             if key not in ("lr", "time_per_step", "samples_per_s")]
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.1e}")
    if metrics.get("time_per_step"):
        parts.append(f"{1.0 / metrics['time_per_step']:.3g} it/s")
    return " ".join(parts)


def format_line(epoch: int, epochs: int, step: int, metrics: dict) -> str:
    """``epoch 3/10 step 120 loss 0.0312 lr 4.1e-04 1.2 it/s``."""
    return f"epoch {epoch}/{epochs} step {step} {format_metrics(metrics)}"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (by a run killed after its last checkpoint), and a half-written
    last line (a run killed while writing it). A damaged line before the last is an error naming it."""
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                warnings.warn(f"{path}: dropping its half-written last line {line.strip()[:60]!r}", stacklevel=2)
                continue
            raise ValueError(f"{path}:{number}: not a metrics record ({line.strip()[:60]!r}); "
                             "repair or move the file") from None
        if step <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        atomic_write(path, lambda f: f.write("".join(kept).encode()))


class TrainLogger:
    """Writes logged steps everywhere; a no-op object on non-main ranks (``enabled=False``)."""

    def __init__(self, work_dir, enabled: bool, epochs: int, total_steps: int, start_step: int = 0,
                 use_tqdm: bool | None = None):
        self.enabled, self.epochs = enabled, epochs
        self.work_dir = Path(work_dir)
        self.bar = self.tb = self.metrics_file = self.text_file = None
        if not enabled:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.work_dir / "metrics.jsonl", start_step)  # a fresh start (0) empties it
        self.metrics_file = open(self.work_dir / "metrics.jsonl", "a")
        self.text_file = open(self.work_dir / "log.txt", "a")
        self.tb = _summary_writer(self.work_dir / "tb", purge_step=start_step + 1)  # hides events of older runs
        if use_tqdm if use_tqdm is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def info(self, message: str) -> None:
        """A free-form line to the console and log.txt."""
        if not self.enabled:
            return
        self.text_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self.text_file.flush()
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def log(self, step: int, epoch: int, metrics: dict, prefix: str = "train") -> None:
        """One logged step: ``metrics`` maps names to floats (loss, lr, time_per_step, ...)."""
        if not self.enabled:
            return
        names = {key if prefix == "train" else f"{prefix}/{key}": value for key, value in metrics.items()}
        record = {"step": step, "epoch": epoch, **{k: _json_number(v) for k, v in names.items()}}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)
        line = format_line(epoch, self.epochs, step, metrics)
        line = line if prefix == "train" else f"{prefix}: {line}"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(format_metrics(metrics), refresh=False)
        self.text_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        self.text_file.flush()
        if self.bar is None:
            print(line, file=sys.stderr, flush=True)

    def image(self, tag: str, image, step: int) -> None:
        """An (H, W, 3) uint8 picture to TensorBoard."""
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        for handle in (self.bar, self.tb, self.metrics_file, self.text_file):
            if handle is not None:
                handle.close()
        self.bar = self.tb = self.metrics_file = self.text_file = None


def _json_number(value: float):
    """JSON has no NaN/inf: write them as strings so every line stays valid JSON."""
    return value if math.isfinite(value) else str(value)


def _summary_writer(folder: Path, purge_step):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard is a dependency; say so once if it is missing
        warnings.warn(f"TensorBoard logging is off: {err} (pip install tensorboard)", stacklevel=3)
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


class MetricMeter:
    """Weighted running means of scalar tensors; values stay on device until ``means()`` (one sync)."""

    def __init__(self):
        self.sums: dict = {}
        self.weight = 0.0
        self.samples = 0

    def add(self, values: dict, weight: float = 1.0, samples: int = 0) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * weight
        self.weight += weight
        self.samples += samples

    def means(self) -> dict:
        return {key: float(total) / self.weight for key, total in self.sums.items()} if self.weight else {}
