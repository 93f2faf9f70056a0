# SECOND (3 classes) on KITTI with pcmae's drop-in SparseEncoder, initialised from R-MAE pre-training on SECOND's
# grid (0.05 x 0.05 x 0.1 m in [0, 70.4] x [-40, 40] x [-3, 1], mean-of-points voxel features).
#   python -m data_converters.kitti --root data/kitti --out data/kitti_pcmae --split train   # and --split val
#   python tools/pretrain.py configs/radial_mae/kitti.yaml --work-dir work_dirs/radial_mae_kitti
#   python tools/finetune_det.py configs/mmdet3d/second_kitti.py --pretrained work_dirs/radial_mae_kitti/checkpoint_last.pth
# Differences from mmdet3d's config: the converter's info files and full 360-degree sweeps (points/, not
# velodyne_reduced/; PointsRangeFilter keeps x >= 0 anyway), and no ObjectSample in the train pipeline: the
# converter writes no GT-sampling database (kitti_dbinfos_train.pkl).
custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)
_base_ = ['mmdet3d::second/second_hv_secfpn_8xb6-80e_kitti-3d-3class.py']

pretrained = 'work_dirs/radial_mae_kitti/checkpoint_last.pth'  # a pcmae checkpoint or an exported file
data_root = 'data/kitti_pcmae/'
data_prefix = dict(pts='points')
class_names = ['Pedestrian', 'Cyclist', 'Car']
point_cloud_range = [0, -40, -3, 70.4, 40, 1]

model = dict(
    middle_encoder=dict(type='PcmaeSparseEncoder', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4, use_dim=4),
    dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True),
    # mmdet3d's ObjectSample (GT-sampling) would go here; it needs a database our converter does not write
    dict(type='ObjectNoise', num_try=100, translation_std=[1.0, 1.0, 0.5], global_rot_range=[0.0, 0.0],
         rot_range=[-0.78539816, 0.78539816]),
    dict(type='RandomFlip3D', flip_ratio_bev_horizontal=0.5),
    dict(type='GlobalRotScaleTrans', rot_range=[-0.78539816, 0.78539816], scale_ratio_range=[0.95, 1.05]),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='PointShuffle'),
    dict(type='Pack3DDetInputs', keys=['points', 'gt_bboxes_3d', 'gt_labels_3d']),
]
train_dataloader = dict(dataset=dict(dataset=dict(
    data_root=data_root, ann_file='kitti_infos_train.pkl', data_prefix=data_prefix, pipeline=train_pipeline)))
val_dataloader = dict(dataset=dict(data_root=data_root, ann_file='kitti_infos_val.pkl', data_prefix=data_prefix))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'kitti_infos_val.pkl')
test_evaluator = val_evaluator
