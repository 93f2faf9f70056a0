# second_kitti_shared.py with the middle encoder at random initialisation.
_base_ = ['./second_kitti_shared.py']

model = dict(middle_encoder=dict(init_cfg=None))
