# centerpoint_nus.py with the middle encoder at random initialisation (the baseline of tools/label_efficiency.py).
_base_ = ['./centerpoint_nus.py']

model = dict(pts_middle_encoder=dict(init_cfg=None))
