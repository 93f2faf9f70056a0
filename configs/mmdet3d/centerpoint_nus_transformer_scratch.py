# centerpoint_nus_transformer.py with both encoders at random initialisation (the baseline of tools/label_efficiency.py).
_base_ = ['./centerpoint_nus_transformer.py']

model = dict(pts_voxel_encoder=dict(init_cfg=None), pts_middle_encoder=dict(init_cfg=None))
