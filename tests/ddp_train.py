"""Helper of test_engine.py: ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_train.py DIR MODE``.

Runs of the tiny MLP with 2 processes (gloo, CPU); each rank saves its final weights to
``DIR/<run>/weights_rank<R>.pt``.
  MODE plain: one run of a deterministic model (no noise / dropout), 3 epochs; the Trainer creates and
              destroys the process group itself (the path tools/pretrain.py takes under torchrun).
  MODE noisy: the script creates the process group, then two runs of a noisy model share it:
              "noisy" (3 epochs uninterrupted) and "resumed" (stopped at step 5, mid-epoch, then
              continued by a new Trainer to the end).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pcmae.engine.config import TrainConfig  # noqa: E402
from pcmae.engine.trainer import Trainer  # noqa: E402
from tests.engine_fixtures import RandomVectors, make_model  # noqa: E402

DDP_TRAIN = dict(epochs=3, batch_size=3, lr=1e-2, warmup_epochs=1, log_interval=1, seed=5,  # batch per process
                 device="cpu")  # gloo, also on a machine with one GPU
STOP_STEP = 5


def run(work_dir: Path, noisy: bool, stop_step=None) -> torch.nn.Module:
    dataset = RandomVectors(num_samples=24)
    phases = [(False, stop_step), (True, None)] if stop_step else [(False, None)]
    for resume, max_steps in phases:
        model = make_model(seed=0, noise=0.1 if noisy else 0.0, dropout=0.2 if noisy else 0.0)
        Trainer(model, dataset, TrainConfig(**DDP_TRAIN, max_steps=max_steps), work_dir).fit(resume=resume)
    return model


def main(root: Path, mode: str) -> None:
    rank = int(os.environ["RANK"])
    runs = [("plain", False, None)] if mode == "plain" else [("noisy", True, None), ("resumed", True, STOP_STEP)]
    if mode != "plain":
        torch.distributed.init_process_group("gloo")
    for name, noisy, stop in runs:
        model = run(root / name, noisy, stop)
        torch.save(model.state_dict(), root / name / f"weights_rank{rank}.pt")
    if mode != "plain":
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
