"""Helper of test_mmdet3d_plugin.py: ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_mmdet3d_step.py DIR``.

Each rank builds pcmae's mmdet3d encoders with the same seed (PcmaeVoxelEncoder + PcmaeTransformerBEV, and
PcmaeSparseEncoder), wraps each in DistributedDataParallel (gloo, CPU, find_unused_parameters off: every parameter
must get a gradient), runs one SGD step on its own half of a real KITTI sweep and saves its weights to
``DIR/<name>_rank<R>.pt`` (and the initial ones to ``DIR/<name>_init.pt`` on rank 0).
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

GRID = dict(voxel_size=[0.4, 0.4, 0.2], point_cloud_range=[0.0, -40.0, -3.0, 70.4, 40.0, 1.0])


class TransformerRoute(torch.nn.Module):
    """Hard voxels -> PcmaeVoxelEncoder -> PcmaeTransformerBEV -> BEV."""

    def __init__(self):
        super().__init__()
        from pcmae.integrations.mmdet3d import PcmaeTransformerBEV, PcmaeVoxelEncoder

        self.voxel_encoder = PcmaeVoxelEncoder(4, 32, **GRID)
        self.middle_encoder = PcmaeTransformerBEV(32, 32, depth=2, num_heads=2, patch_size=32, bev_stride=2, **GRID)

    def forward(self, voxels, num_points, coors):
        return self.middle_encoder(self.voxel_encoder(voxels, num_points, coors), coors, 1)


class SparseRoute(torch.nn.Module):
    """Hard voxels -> point means (mmdet3d's HardSimpleVFE) -> a small PcmaeSparseEncoder -> BEV."""

    def __init__(self):
        super().__init__()
        from pcmae.integrations.mmdet3d import PcmaeSparseEncoder

        self.middle_encoder = PcmaeSparseEncoder(4, [21, 200, 176], base_channels=8,
                                                 encoder_channels=((8,), (16,), (16,)),
                                                 encoder_paddings=((1,), (1,), (1,)), output_channels=16)

    def forward(self, voxels, num_points, coors):
        mean = voxels.sum(1) / num_points.clamp(min=1).unsqueeze(1).to(voxels.dtype)
        return self.middle_encoder(mean, coors, 1)


def main(out: Path, sweep: Path) -> None:
    from mmcv.ops import Voxelization

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=120))  # a stuck collective raises
    rank = torch.distributed.get_rank()
    points = torch.from_numpy(np.fromfile(sweep, np.float32).reshape(-1, 4)[rank::2].copy())
    voxels, coors, num_points = Voxelization(max_num_points=16, max_voxels=60000, **GRID)(points)
    coors = torch.nn.functional.pad(coors, (1, 0))  # (batch, z, y, x)
    for name, route in (("transformer", TransformerRoute), ("sparse", SparseRoute)):
        torch.manual_seed(0)
        module = route()
        if rank == 0:
            torch.save(module.state_dict(), out / f"{name}_init.pt")
        ddp = torch.nn.parallel.DistributedDataParallel(module)  # find_unused_parameters off
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        ddp(voxels, num_points, coors).pow(2).mean().backward()
        optimizer.step()
        torch.save(module.state_dict(), out / f"{name}_rank{rank}.pt")
    # both ranks reach here before the group goes: once, rank 1 hung in destroy_process_group after rank 0 had left
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
