"""Every registered model (tiny settings) and every shipped config's model section (sizes shrunk, structure kept),
in the style of timm's model tests: forward + backward gives EVERY parameter a finite gradient, and two DDP steps
(2 gloo ranks, find_unused_parameters off, as ``torchrun ... tools/pretrain.py``) run and keep the ranks equal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcmae.backbones.spconv_compat import INSTALL_HINT, spconv_available
from pcmae.engine.build import build_model
from pcmae.registry import BACKBONES, MASKINGS, MODELS, TOKENIZERS
from tests.ddp_every_model import REGISTERED, all_cases, make_batch, needs_spconv, shipped_configs

REPO = Path(__file__).resolve().parents[1]
CASES = all_cases()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: threads only add overhead (and the DDP run uses one per rank)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_registered_part_has_a_tiny_case():
    """A model, backbone, tokenizer or masking rule registered later must get a case in REGISTERED."""
    def package_entries(registry):  # other tests register toy models of their own
        return {n for n in registry.names() if registry.get(n).__module__.startswith("pcmae.")}

    cfgs = REGISTERED.values()
    assert {c["type"] for c in cfgs} == package_entries(MODELS)
    assert {c["backbone"]["type"] for c in cfgs if "backbone" in c} == package_entries(BACKBONES)
    assert {c["tokenizer"]["type"] for c in cfgs if "tokenizer" in c} == package_entries(TOKENIZERS)
    lidar = [c for c in cfgs if c["type"] in ("VoxelMAE", "RadialMAE", "TemporalMAE")]
    rules = {(c.get("masking") or MODELS.get(c["type"]).default_masking)["type"] for c in lidar}
    assert rules == package_entries(MASKINGS)
    assert len(shipped_configs()) >= 20 and all(f"config:{p}" in CASES for p in shipped_configs())


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward_reaches_every_parameter(name):
    cfg = CASES[name]
    if needs_spconv(cfg) and not spconv_available():
        pytest.skip(f"spconv missing: {INSTALL_HINT}")
    torch.manual_seed(0)
    model = build_model(dict(cfg)).train()
    out = model(make_batch(cfg, seed=0))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == [], f"parameters without a gradient (DDP stops at step 2): {no_grad}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert bad == []


def test_two_rank_ddp_steps_of_every_model(tmp_path):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                          str(REPO / "tests" / "ddp_every_model.py"), str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == set(CASES)
    failed = {k: v for k, v in results.items() if v != "ok" and not v.startswith("skipped")}
    assert failed == {}
