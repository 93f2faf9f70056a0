#!/usr/bin/env python
"""Convert a checkpoint released by Point-MAE's authors into a pcmae checkpoint.

    python tools/convert_checkpoint.py pretrain.pth pcmae_point_mae.pth [--num-groups 64]

The output holds ``model`` (pcmae state dict) and ``config.model`` (the architecture), and loads with
``tools/finetune.py --pretrained`` or ``tools/probe.py --checkpoint``. Any key that does not fit is an error.
"""
from __future__ import annotations

import argparse

from pcmae.engine.checkpoint import save_checkpoint
from pcmae.engine.build import build_model, command_line
from pcmae.integrations.point_mae_checkpoint import convert_point_mae_file, load_strict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="Point-MAE .pth (pretrain.pth or a fine-tuned classifier)")
    parser.add_argument("output", help="pcmae checkpoint to write")
    parser.add_argument("--num-groups", type=int, default=64, help="groups per cloud (not stored in the file)")
    parser.add_argument("--num-heads", type=int, default=6, help="attention heads (not stored in the file)")
    args = parser.parse_args(argv)

    config, state = convert_point_mae_file(args.source, args.num_groups, args.num_heads)
    model = build_model(config)
    load_strict(model, state, args.source)  # proves every key fits before anything is written
    save_checkpoint(args.output, {"model": model.state_dict(), "config": {"model": config}})
    print(f"wrote {args.output}: {config['type']} with {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    command_line(main)()
