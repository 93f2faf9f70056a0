# second_kitti.py with the middle encoder at random initialisation (the baseline of tools/label_efficiency.py).
_base_ = ['./second_kitti.py']

model = dict(middle_encoder=dict(init_cfg=None))
