#!/usr/bin/env python
"""Export a pcmae pre-training checkpoint for an mmdet3d detector, with a key report.

    python tools/export_mmdet3d.py work_dirs/rmae/checkpoint_last.pth second_pcmae.pth --config configs/mmdet3d/second_kitti.py

Builds the detector of ``--config`` (CPU), loads the pre-trained encoder parts into its encoder slots
(``middle_encoder`` / ``pts_middle_encoder``, and ``voxel_encoder`` for pcmae's PointNet tokenizer) and writes their
weights under the detector's own keys, with spconv's ``_metadata`` under the same prefixes and mmengine ``meta``
(``load_from=OUT`` in any config of that detector loads it). Prints per module: loaded / left random / unexpected /
shape mismatch. Exit status 1, and no file, when an encoder weight would stay random (``--allow-partial`` writes
anyway); 2 for a bad file, config or grid mismatch.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

# the OpenMMLab stack and spconv warn about their own deprecations at build time; not the user's concern here
for _module in ("mmdet3d", "mmdet", "mmengine", "mmcv", "spconv", "ccimport", "torch.jit"):
    warnings.filterwarnings("ignore", module=_module)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="pcmae pre-training checkpoint (tools/pretrain.py)")
    parser.add_argument("out", help="mmdet3d checkpoint to write")
    parser.add_argument("--config", required=True, help="the detector's mmdet3d config (configs/mmdet3d/*.py)")
    parser.add_argument("--allow-partial", action="store_true", help="write even if encoder weights stay random")
    parser.add_argument("--report", help="also write the key report as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # mmdet3d's spconv layers are exact on CPU only single-threaded
    try:
        from pcmae.integrations.mmdet3d import PretrainedWeightsError, export_checkpoint
        from pcmae.registry import ConfigError
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        reports = export_checkpoint(args.checkpoint, args.out, args.config, allow_partial=args.allow_partial)
    except PretrainedWeightsError as err:
        incomplete = "would stay random" in str(err)
        print(("error: " if not incomplete else "") + str(err), file=sys.stderr)
        return 1 if incomplete else 2
    except (ConfigError, FileNotFoundError, ValueError, KeyError, SyntaxError) as err:
        print(f"error: {args.config}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    for report in reports:
        print("\n".join(report.lines()))
    if args.report:
        from pcmae.io.atomic import atomic_write

        text = json.dumps([r.to_dict() for r in reports], indent=2)
        atomic_write(args.report, lambda f: f.write(text.encode()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
