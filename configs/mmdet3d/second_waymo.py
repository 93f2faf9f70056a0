# SECOND (3 classes) on Waymo (mmdet3d's second_hv_secfpn_sbn-all_16xb2-2x_waymoD5-3d-3class.py) with pcmae's
# drop-in SparseEncoder, initialised from Voxel-MAE pre-training on SECOND's Waymo grid: 0.08 x 0.08 x 0.1 m in
# [-76.8, 76.8] x [-51.2, 51.2] x [-2, 4], 5 point channels. configs/voxel_mae/waymo.yaml uses CenterPoint's grid
# (0.1 x 0.1 x 0.15 m in [-75.2, 75.2]^2), which does not fit this encoder: pre-train with waymo_second.yaml.
#   python -m data_converters.waymo --root data/waymo/waymo_format/training --out data/waymo_pcmae --split training
#   python -m data_converters.waymo --root data/waymo/waymo_format/validation --out data/waymo_pcmae --split validation
#   python tools/pretrain.py configs/voxel_mae/waymo_second.yaml
#   python tools/finetune_det.py configs/mmdet3d/second_waymo.py --pretrained work_dirs/voxel_mae/waymo_second/checkpoint_last.pth
# Our Waymo sweeps have 6 columns (x, y, z, intensity, elongation, no-label-zone flag), as mmdet3d's kitti_format
# velodyne files: load_dim 6, use_dim 5 unchanged. WaymoMetric needs Waymo's compute_detection_metrics_main and
# the ground-truth gt.bin of the validation split (mmdet3d's Waymo data preparation).
custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)
_base_ = ['mmdet3d::second/second_hv_secfpn_sbn-all_16xb2-2x_waymoD5-3d-3class.py']

pretrained = 'work_dirs/voxel_mae/waymo_second/checkpoint_last.pth'  # a pcmae checkpoint or an exported file
data_root = 'data/waymo_pcmae/'
data_prefix = dict(pts='points')

model = dict(
    pts_middle_encoder=dict(type='PcmaeSparseEncoder', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

train_dataloader = dict(dataset=dict(dataset=dict(
    data_root=data_root, ann_file='waymo_infos_training.pkl', data_prefix=data_prefix)))
val_dataloader = dict(dataset=dict(data_root=data_root, ann_file='waymo_infos_validation.pkl',
                                   data_prefix=data_prefix))
test_dataloader = val_dataloader
