#!/usr/bin/env bash
# Install the real mmdet3d stack (mmengine 0.10.7, mmdet 3.3.0, mmdet3d 1.4.0, full mmcv 2.1.0 with CPU ops)
# into a virtualenv that already holds pcmae and torch. Usage: tools/install_mmdet3d.sh [VENV_BIN]
#
# mmcv 2.1.0 has no PyPI wheel for this torch: take the prebuilt wheel in ../shared/wheels after checking its
# sha256, or (absent, or another torch) build it once into a cache outside the repo (~14 min on 2 cores).
# The OpenMMLab packages go in with --no-deps: their declared deps pull opencv's GUI build, open3d, the
# lyft / nuscenes devkits, and mmdet3d's `mim` extra asks for mmdet<3.3.
set -euo pipefail
BIN=${1:-.venv/bin}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WHEEL_NAME=mmcv-2.1.0-cp311-cp311-linux_x86_64.whl
WHEEL_SHA256=0da6130e442d5f0d4bd0c09d7accd6e0f3935ca7c1226cc93d198b69018b2af5
SHARED_WHEELS=${PCMAE_SHARED_WHEELS:-$HERE/../shared/wheels}
CACHE=${PCMAE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pcmae/wheels}

torch_version=$("$BIN/python" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$BIN/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

# Runtime deps the OpenMMLab packages import (numpy, scipy, matplotlib, shapely, pycocotools, ... come with pcmae)
"$BIN/pip" install -q "setuptools<81" addict yapf termcolor rich terminaltables six numba trimesh plyfile \
    scikit-image pandas "opencv-python-headless" pyquaternion

wheel=""
if [ "$torch_version" = "2.13.0" ] && [ "$py_tag" = "cp311" ] && [ -f "$SHARED_WHEELS/$WHEEL_NAME" ]; then
    if echo "$WHEEL_SHA256  $SHARED_WHEELS/$WHEEL_NAME" | sha256sum --check --status; then
        wheel="$SHARED_WHEELS/$WHEEL_NAME"
    else
        echo "install_mmdet3d: $SHARED_WHEELS/$WHEEL_NAME does not match its sha256 $WHEEL_SHA256; building mmcv instead" >&2
    fi
fi
if [ -z "$wheel" ]; then
    built_dir="$CACHE/torch-$torch_version-$py_tag"
    wheel=$(ls "$built_dir"/mmcv-2.1.0-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ]; then
        echo "install_mmdet3d: building mmcv 2.1.0 with CPU ops for torch $torch_version ($py_tag) into $built_dir (~14 min on 2 cores)" >&2
        mkdir -p "$built_dir"
        "$BIN/pip" install -q wheel ninja
        MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} "$BIN/pip" wheel -q --no-deps --no-build-isolation \
            -w "$built_dir.tmp" mmcv==2.1.0
        mv "$built_dir.tmp"/mmcv-2.1.0-*.whl "$built_dir"/ && rmdir "$built_dir.tmp"
        wheel=$(ls "$built_dir"/mmcv-2.1.0-*.whl | head -n1)
    fi
fi
"$BIN/pip" install -q --no-deps "$wheel" mmengine==0.10.7 mmdet==3.3.0 mmdet3d==1.4.0
# mmdet3d.evaluation (KittiMetric, ...) imports the Lyft devkit; its declared deps pin old numpy / pandas
"$BIN/pip" install -q --no-deps lyft-dataset-sdk==0.0.8
"$BIN/python" -c 'import mmcv.ops, mmdet3d.models, mmdet3d.evaluation; print("install_mmdet3d: mmcv", mmcv.__version__, "with ops; mmdet3d", __import__("mmdet3d").__version__)'
