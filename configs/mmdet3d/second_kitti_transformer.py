# SECOND's detector on KITTI with pcmae's transformer in place of the voxel feature / sparse-conv encoders:
# a PointNet per 0.2 x 0.2 x 4 m pillar (PcmaeVoxelEncoder), the patch-attention transformer over the pillars
# (PcmaeTransformerBEV) scattered to a 176 x 200 BEV map of 0.4 m cells (bev_stride 2: the map SECOND's sparse
# encoder gives), then mmdet3d's 2D SECOND + SECFPN + Anchor3DHead. Both encoders start from Voxel-MAE
# pre-training with the same pillars and sizes (configs/voxel_mae/kitti_transformer_det.yaml):
#   python tools/pretrain.py configs/voxel_mae/kitti_transformer_det.yaml
#   python tools/finetune_det.py configs/mmdet3d/second_kitti_transformer.py --pretrained work_dirs/voxel_mae/kitti_transformer_det/checkpoint_last.pth
# Data as second_kitti.py (converter output, no ObjectSample).
custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)
_base_ = ['./second_kitti.py']

pretrained = 'work_dirs/voxel_mae/kitti_transformer_det/checkpoint_last.pth'  # a pcmae checkpoint or an exported file
voxel_size = [0.2, 0.2, 4.0]
point_cloud_range = [0, -40, -3, 70.4, 40, 1]
embed_dim = 128

model = dict(
    data_preprocessor=dict(voxel_layer=dict(max_num_points=32, voxel_size=voxel_size, max_voxels=(16000, 40000))),
    voxel_encoder=dict(
        _delete_=True, type='PcmaeVoxelEncoder', in_channels=4, feat_channels=embed_dim, hidden_channels=64,
        voxel_size=voxel_size, point_cloud_range=point_cloud_range,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    middle_encoder=dict(
        _delete_=True, type='PcmaeTransformerBEV', in_channels=embed_dim, embed_dim=embed_dim, depth=4, num_heads=4,
        patch_size=64, drop_path_rate=0.0, voxel_size=voxel_size, point_cloud_range=point_cloud_range, bev_stride=2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    backbone=dict(in_channels=embed_dim))
