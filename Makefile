# Two entry points: `make demo` (pre-train Point-MAE on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORK_DIR ?= work_dirs/point_mae_demo

.PHONY: venv venv-mmdet3d demo probe test benchmark clean

$(BIN)/activate: pyproject.toml
	$(PY) -m venv $(VENV)
	# CPU torch first: a later `torch>=2.1` requirement is then already met (no CUDA download).
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	# Waymo's Frame protos without TensorFlow (its declared dependencies pull TF 2.13 and numpy 1.23: 2.8 GB)
	$(BIN)/pip install -q --no-deps "waymo-open-dataset-tf-2-12-0==1.6.7"
	# nuscenes-devkit pins numpy<2; its real dependencies come with the extras above
	$(BIN)/pip install -q --no-deps "nuscenes-devkit==1.2.0"
	# ouster-sdk pins rosbags==0.9.23 (the bag converter needs >=0.11) and flask==3.0; its .osf/.pcap readers need
	# only numpy and rosbags, which come with the extras above
	$(BIN)/pip install -q --no-deps "ouster-sdk==1.0.1"
	touch $@

venv: $(BIN)/activate

# The real mmdet3d stack (mmengine, mmdet, mmdet3d, full mmcv with CPU ops) for the detector integration and its tests
$(VENV)/.mmdet3d-installed: $(BIN)/activate tools/install_mmdet3d.sh
	bash tools/install_mmdet3d.sh $(BIN)
	touch $@

venv-mmdet3d: $(VENV)/.mmdet3d-installed

demo: venv
	$(BIN)/python tools/pretrain.py configs/point_mae/demo.yaml --work-dir $(WORK_DIR) --overwrite
	$(BIN)/python tools/probe.py configs/point_mae/demo.yaml --checkpoint $(WORK_DIR)/checkpoint_last.pth

# Two pytest workers with one thread each: measured 456 s against 614 s for one worker with torch's default threads
# on the same 2 loaded cores (a second OpenMP thread mostly spins when the other core is busy)
test: venv venv-mmdet3d
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

benchmark: venv
	$(BIN)/python tools/benchmark.py

clean:
	rm -rf $(VENV) work_dirs
