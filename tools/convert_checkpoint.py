#!/usr/bin/env python
"""Convert a checkpoint released by Point-MAE's authors into a pcmae checkpoint.

    python tools/convert_checkpoint.py pretrain.pth pcmae_point_mae.pth --num-groups 64
    python tools/convert_checkpoint.py scan_hardest.pth scan.pth --config configs/point_mae/scanobjectnn_pb_t50_rs.yaml
    python tools/convert_checkpoint.py modelnet_1k.pth mn40.pth --num-groups 64 --group-size 32

Point-MAE files do not store the number of groups (64 for pretrain.pth and ModelNet40 1k, 128 for ScanObjectNN,
512 for ModelNet40 8k), nor the group size of a classifier: give them, or the config the checkpoint belongs to
(its model section is used, and what the weights' shapes reveal - width, depth, group size of a pre-training
file, number of classes - must agree with it). The output holds ``model`` (pcmae state dict) and
``config.model`` (the architecture), and loads with ``tools/finetune.py --pretrained`` or ``tools/probe.py
--checkpoint``. Any key that does not fit is an error.
"""
from __future__ import annotations

import argparse

from pcmae.engine.build import build_model, command_line, load_checked_config
from pcmae.engine.checkpoint import save_checkpoint
from pcmae.integrations.point_mae_checkpoint import convert_point_mae_file, load_strict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="Point-MAE .pth (pretrain.pth or a fine-tuned classifier)")
    parser.add_argument("output", help="pcmae checkpoint to write")
    parser.add_argument("--config", help="pcmae config the checkpoint belongs to (its model section is used)")
    parser.add_argument("--num-groups", type=int, help="groups per cloud (not stored in the file)")
    parser.add_argument("--group-size", type=int, help="points per group (stored only in pre-training files)")
    parser.add_argument("--num-heads", type=int, help="attention heads (not stored in the file; default 6)")
    args = parser.parse_args(argv)
    values = {"num_groups": args.num_groups, "group_size": args.group_size, "num_heads": args.num_heads}
    if args.config and any(v is not None for v in values.values()):
        parser.error("give either --config or --num-groups / --group-size / --num-heads")

    if args.config:
        config, state = convert_point_mae_file(args.source, config=load_checked_config(args.config)["model"])
    else:
        config, state = convert_point_mae_file(args.source, **values)
    model = build_model(config)
    load_strict(model, state, args.source)  # proves every key fits before anything is written
    save_checkpoint(args.output, {"model": model.state_dict(), "config": {"model": config}})
    print(f"wrote {args.output}: {config['type']} with {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{config['num_groups']} groups x {config['group_size']} points")


if __name__ == "__main__":
    command_line(main)()
