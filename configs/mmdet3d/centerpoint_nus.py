# CenterPoint (voxel 0.1, SECOND + SECFPN, 10 classes) on nuScenes with pcmae's drop-in SparseEncoder, initialised
# from Voxel-MAE pre-training on the same grid and encoder settings (configs/voxel_mae/nuscenes_sparse_conv.yaml).
#   python -m data_converters.nuscenes --root data/nuscenes --out data/nuscenes_pcmae --version v1.0-trainval --split train
#   python -m data_converters.nuscenes --root data/nuscenes --out data/nuscenes_pcmae --version v1.0-trainval --split val
#   python tools/pretrain.py configs/voxel_mae/nuscenes_sparse_conv.yaml
#   python tools/finetune_det.py configs/mmdet3d/centerpoint_nus.py --pretrained work_dirs/voxel_mae/nuscenes_sparse_conv/checkpoint_last.pth
# Differences from mmdet3d's config: the converter's info files (points/ and sweeps/ of data/nuscenes_pcmae; the
# NuScenesMetric still reads the raw tables under data/nuscenes), and no ObjectSample in the train pipeline: the
# converter writes no GT-sampling database (nuscenes_dbinfos_train.pkl).
custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)
_base_ = ['mmdet3d::centerpoint/centerpoint_voxel01_second_secfpn_8xb4-cyclic-20e_nus-3d.py']

pretrained = 'work_dirs/voxel_mae/nuscenes_sparse_conv/checkpoint_last.pth'  # a pcmae checkpoint or an exported file
data_root = 'data/nuscenes_pcmae/'
nuscenes_root = 'data/nuscenes/'  # raw tables, for NuScenesMetric's devkit evaluation
data_prefix = dict(pts='points', img='', sweeps='sweeps')
class_names = ['car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier', 'motorcycle', 'bicycle',
               'pedestrian', 'traffic_cone']
point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]

model = dict(
    pts_middle_encoder=dict(type='PcmaeSparseEncoder', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5),
    dict(type='LoadPointsFromMultiSweeps', sweeps_num=9, use_dim=[0, 1, 2, 3, 4], pad_empty_sweeps=True,
         remove_close=True),
    dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True),
    # mmdet3d's ObjectSample (GT-sampling) would go here; it needs a database our converter does not write
    dict(type='GlobalRotScaleTrans', rot_range=[-0.3925, 0.3925], scale_ratio_range=[0.95, 1.05],
         translation_std=[0, 0, 0]),
    dict(type='RandomFlip3D', sync_2d=False, flip_ratio_bev_horizontal=0.5, flip_ratio_bev_vertical=0.5),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectNameFilter', classes=class_names),
    dict(type='PointShuffle'),
    dict(type='Pack3DDetInputs', keys=['points', 'gt_bboxes_3d', 'gt_labels_3d']),
]
train_dataloader = dict(dataset=dict(dataset=dict(
    data_root=data_root, ann_file='nuscenes_infos_train.pkl', data_prefix=data_prefix, pipeline=train_pipeline)))
val_dataloader = dict(dataset=dict(data_root=data_root, ann_file='nuscenes_infos_val.pkl', data_prefix=data_prefix))
test_dataloader = val_dataloader
val_evaluator = dict(data_root=nuscenes_root, ann_file=data_root + 'nuscenes_infos_val.pkl')
test_evaluator = val_evaluator
