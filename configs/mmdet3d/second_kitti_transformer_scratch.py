# second_kitti_transformer.py with both encoders at random initialisation (the baseline of tools/label_efficiency.py).
_base_ = ['./second_kitti_transformer.py']

model = dict(voxel_encoder=dict(init_cfg=None), middle_encoder=dict(init_cfg=None))
