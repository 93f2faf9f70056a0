# CenterPoint on nuScenes with pcmae's transformer in place of the voxel feature / sparse-conv encoders: a PointNet
# per 0.2 x 0.2 x 8 m pillar (PcmaeVoxelEncoder), the patch-attention transformer over the pillars
# (PcmaeTransformerBEV) scattered to a 128 x 128 BEV map of 0.8 m cells (bev_stride 4: the map CenterPoint
# voxel-0.1's sparse encoder gives), then mmdet3d's 2D SECOND + SECFPN + CenterHead. The head's grid follows the
# pillars: grid_size 512 x 512 / out_size_factor 4 = 128, the BEV size. Both encoders start from Voxel-MAE
# pre-training with the same pillars and sizes (configs/voxel_mae/nuscenes_transformer_det.yaml):
#   python tools/pretrain.py configs/voxel_mae/nuscenes_transformer_det.yaml
#   python tools/finetune_det.py configs/mmdet3d/centerpoint_nus_transformer.py --pretrained work_dirs/voxel_mae/nuscenes_transformer_det/checkpoint_last.pth
# Data as centerpoint_nus.py (converter output, 10 sweeps, no ObjectSample).
custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)
_base_ = ['./centerpoint_nus.py']

pretrained = 'work_dirs/voxel_mae/nuscenes_transformer_det/checkpoint_last.pth'  # a pcmae checkpoint or an exported file
voxel_size = [0.2, 0.2, 8.0]
point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
embed_dim = 128
out_size_factor = 4

model = dict(
    data_preprocessor=dict(voxel_layer=dict(max_num_points=32, voxel_size=voxel_size, max_voxels=(30000, 40000))),
    pts_voxel_encoder=dict(
        _delete_=True, type='PcmaeVoxelEncoder', in_channels=5, feat_channels=embed_dim, hidden_channels=64,
        voxel_size=voxel_size, point_cloud_range=point_cloud_range,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    pts_middle_encoder=dict(
        _delete_=True, type='PcmaeTransformerBEV', in_channels=embed_dim, embed_dim=embed_dim, depth=4, num_heads=4,
        patch_size=64, drop_path_rate=0.0, voxel_size=voxel_size, point_cloud_range=point_cloud_range, bev_stride=4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    pts_backbone=dict(in_channels=embed_dim),
    pts_bbox_head=dict(bbox_coder=dict(voxel_size=voxel_size[:2], out_size_factor=out_size_factor)),
    train_cfg=dict(pts=dict(grid_size=[512, 512, 1], voxel_size=voxel_size, out_size_factor=out_size_factor)),
    test_cfg=dict(pts=dict(voxel_size=voxel_size[:2], out_size_factor=out_size_factor)))
