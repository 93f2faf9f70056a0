"""pcmae's pre-trained encoders inside mmdet3d detectors. In a detector config, one line:

    custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)

registers in ``mmdet3d.registry.MODELS`` (configs run with ``default_scope='mmdet3d'``):

- ``PcmaeSparseEncoder``: mmdet3d's ``SparseEncoder`` (SECOND / CenterPoint ``middle_encoder``), same call and keys;
- ``PcmaeVoxelEncoder``: pcmae's PointNet voxel tokenizer as a ``voxel_encoder`` over hard voxels;
- ``PcmaeTransformerBEV``: the serialized patch transformer as a ``middle_encoder`` that scatters its tokens into a
  dense BEV map for mmdet3d's 2D backbone, neck and head;

each accepting ``init_cfg=dict(type='Pretrained', checkpoint=<pcmae checkpoint or exported file>)``. Weights are
loaded with spconv's layout metadata and a key report (``weights.py``); ``export.py`` writes detector checkpoints.
"""
try:
    import mmdet3d.registry  # noqa: F401
    import mmengine.model  # noqa: F401
except (ImportError, AssertionError) as err:  # mmdet3d asserts compatible mmcv / mmdet versions on import
    raise ImportError(
        f"pcmae.integrations.mmdet3d needs mmdet3d 1.4.0, mmdet 3.3.0, mmengine 0.10.7 and full mmcv 2.1.0 with ops "
        f"({type(err).__name__}: {err}); install them with `make venv-mmdet3d` (tools/install_mmdet3d.sh)") from None

from pcmae.integrations.mmdet3d.encoders import PcmaeSparseEncoder, PcmaeTransformerBEV, PcmaeVoxelEncoder
from pcmae.integrations.mmdet3d.export import export_checkpoint
from pcmae.integrations.mmdet3d.weights import KeyReport, PretrainedWeightsError, load_part, read_part

__all__ = ["PcmaeSparseEncoder", "PcmaeTransformerBEV", "PcmaeVoxelEncoder", "export_checkpoint", "KeyReport",
           "PretrainedWeightsError", "load_part", "read_part"]
