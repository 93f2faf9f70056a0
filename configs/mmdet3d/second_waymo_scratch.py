# second_waymo.py with the middle encoder at random initialisation (the baseline of tools/label_efficiency.py).
_base_ = ['./second_waymo.py']

model = dict(pts_middle_encoder=dict(init_cfg=None))
