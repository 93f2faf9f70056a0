"""Optional mmdet3d integration checks: import mmdet3d's datasets (or skip saying what to install) and build one."""
from __future__ import annotations

import pytest


def import_mmdet3d_datasets():
    """mmdet3d.datasets, or skip: an optional integration check (mmdet3d 1.x, whose box classes import mmcv.ops)."""
    try:
        import mmdet3d  # noqa: F401
    except (ImportError, AssertionError) as err:  # mmdet3d asserts a compatible mmcv / mmdet on import
        pytest.skip(f"mmdet3d is not importable ({err}); optional: mmengine, mmdet==3.3.0, mmdet3d==1.4.0 with "
                    f"--no-deps and mmcv 2.1.0 built with ops")
    try:
        import mmcv.ops  # noqa: F401
    except ImportError as err:
        pytest.skip(f"mmdet3d's datasets need mmcv with compiled ops (mmcv-lite has none): {err}")
    import mmdet3d.datasets

    return mmdet3d.datasets


def build_mmdet3d_dataset(name: str, **kwargs):
    """mmdet3d.datasets.<name>(**kwargs), its pipeline's transform names looked up in mmdet3d's registry."""
    datasets = import_mmdet3d_datasets()
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmdet3d"):
        return getattr(datasets, name)(**kwargs)
