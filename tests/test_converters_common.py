"""The shared converter framework (data_converters.common) with a tiny converter defined here.

The fake converter's frame i has ``i + 1`` points whose values are ``i * 100 + arange``, so every output file
can be checked against values computed independently of the framework.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_converters.common import (ConversionError, FrameResult, FrameTask, remove_stale_temp_files,
                                    run_conversion)

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("x", "y", "z", "intensity")


def expected_points(i: int) -> np.ndarray:
    return (i * 100 + np.arange((i + 1) * 4, dtype=np.float32)).reshape(i + 1, 4)


def make_tasks(n: int, **payload) -> list:
    # two scenes, frame order inside a scene opposite to key order, to check the info file's sort
    return [FrameTask(key=f"fake_{i:03d}", source=f"raw/src_{i}.bin", index=i,
                      payload={"i": i, "scene": f"scene_{i % 2}", "frame_index": n - i, **payload})
            for i in range(n)]


def fake_convert(task: FrameTask) -> FrameResult:
    i = task.payload["i"]
    if i in task.payload.get("fail", ()):
        raise ValueError(f"corrupt record {i}")
    if task.payload.get("sleep"):
        time.sleep(task.payload["sleep"])
    ego2global = np.eye(4)
    ego2global[:3, 3] = (i, 0, 0)
    lidar2ego = np.eye(4)
    lidar2ego[2, 3] = 1.5
    sweep_info = {"timestamp": i - 0.05, "ego2global": ego2global.tolist(), "lidar_points": {}}
    info = {"sample_idx": i, "token": task.key, "timestamp": float(i), "ego2global": ego2global.tolist(),
            "lidar_points": {"lidar2ego": lidar2ego.tolist()}, "instances": [],
            "scene": task.payload["scene"], "frame_index": task.payload["frame_index"]}
    sweeps = [(f"{task.key}_prev", expected_points(i)[:, :] + 0.5, sweep_info)]
    return FrameResult(points=expected_points(i), info=info, sweeps=sweeps)


def failing_convert(task: FrameTask) -> FrameResult:
    raise AssertionError(f"convert_one called for {task.key}, which is already done")


def wrong_width_convert(task: FrameTask) -> FrameResult:
    return FrameResult(points=np.zeros((5, 3), np.float32), info={"scene": "s", "frame_index": 0})


def load_info(summary) -> dict:
    with open(summary.info_file, "rb") as f:
        return pickle.load(f)


def temp_files(out: Path) -> list:
    return [p for p in out.rglob(".*") if ".tmp-" in p.name]


def test_output_files_and_info_entries(tmp_path):
    tasks = make_tasks(5)
    summary = run_conversion(dataset="fake", split="train", tasks=tasks, convert_one=fake_convert,
                             out_dir=tmp_path, columns=COLUMNS, metainfo={"categories": {"thing": 0}})
    assert (summary.converted, summary.already_done, summary.failed) == (5, 0, [])
    assert summary.info_file == tmp_path / "fake_infos_train.pkl"
    info = load_info(summary)
    assert info["metainfo"] == {"categories": {"thing": 0}, "dataset": "fake", "info_version": "1.1",
                                "point_columns": list(COLUMNS), "converter": "pcmae", "failed": [],
                                "timestamp_unit": "s", "min_points": 1, "label_only_frames": [],
                                "settings": {"point_columns": list(COLUMNS)}}
    # sorted by (scene, frame_index, key): scene_0 holds i = 4, 2, 0 (frame_index 1, 3, 5), scene_1 i = 3, 1
    assert [e["sample_idx"] for e in info["data_list"]] == [4, 2, 0, 3, 1]
    for entry in info["data_list"]:
        i = entry["sample_idx"]
        assert entry["lidar_points"]["lidar_path"] == f"fake_{i:03d}.bin"
        assert entry["lidar_points"]["num_pts_feats"] == 4
        assert entry["lidar_points"]["num_points"] == i + 1
        points = np.fromfile(tmp_path / "points" / f"fake_{i:03d}.bin", dtype="<f4").reshape(-1, 4)
        np.testing.assert_array_equal(points, expected_points(i))
        # lidar2global = ego2global @ lidar2ego: translation (i, 0, 1.5)
        np.testing.assert_allclose(np.array(entry["lidar2global"])[:3, 3], [i, 0, 1.5])
        (sweep,) = entry["lidar_sweeps"]
        assert sweep["lidar_points"]["lidar_path"] == f"fake_{i:03d}_prev.bin"
        sweep_points = np.fromfile(tmp_path / "sweeps" / f"fake_{i:03d}_prev.bin", dtype="<f4").reshape(-1, 4)
        np.testing.assert_array_equal(sweep_points, expected_points(i) + 0.5)
    assert temp_files(tmp_path) == []


def test_second_run_reads_nothing_and_rebuilds_the_same_info(tmp_path):
    tasks = make_tasks(4)
    first = run_conversion(dataset="fake", split="train", tasks=tasks, convert_one=fake_convert,
                           out_dir=tmp_path, columns=COLUMNS)
    before = load_info(first)
    second = run_conversion(dataset="fake", split="train", tasks=tasks, convert_one=failing_convert,
                            out_dir=tmp_path, columns=COLUMNS)
    assert (second.converted, second.already_done, second.failed) == (0, 4, [])
    assert load_info(second) == before


def test_resume_converts_only_missing_frames(tmp_path):
    tasks = make_tasks(4)
    run_conversion(dataset="fake", split="train", tasks=tasks[:2], convert_one=fake_convert, out_dir=tmp_path,
                   columns=COLUMNS)
    (tmp_path / "frames" / "fake_001.pkl").unlink()  # frame 1 counts as not done although its points exist
    summary = run_conversion(dataset="fake", split="train", tasks=tasks, convert_one=fake_convert,
                             out_dir=tmp_path, columns=COLUMNS)
    assert (summary.converted, summary.already_done) == (3, 1)
    assert sorted(e["sample_idx"] for e in load_info(summary)["data_list"]) == [0, 1, 2, 3]


def test_two_workers_give_the_same_info_file(tmp_path):
    tasks = make_tasks(6)
    one = run_conversion(dataset="fake", split="train", tasks=tasks, convert_one=fake_convert,
                         out_dir=tmp_path / "one", columns=COLUMNS, workers=1)
    two = run_conversion(dataset="fake", split="train", tasks=tasks, convert_one=fake_convert,
                         out_dir=tmp_path / "two", columns=COLUMNS, workers=2)
    assert two.converted == 6
    assert load_info(one) == load_info(two)
    for task in tasks:
        name = f"points/{task.key}.bin"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_records_failures_and_goes_on(tmp_path, workers):
    tasks = make_tasks(5, fail=(1, 3))
    summary = run_conversion(dataset="fake", split="val", tasks=tasks, convert_one=fake_convert,
                             out_dir=tmp_path, columns=COLUMNS, workers=workers, on_error="skip")
    assert summary.converted == 3
    assert sorted((f["source"], f["index"]) for f in summary.failed) == [("raw/src_1.bin", 1), ("raw/src_3.bin", 3)]
    failed = sorted(summary.failed, key=lambda f: f["index"])
    assert failed[0]["error"] == "raw/src_1.bin (record 1): ValueError: corrupt record 1"
    info = load_info(summary)
    assert sorted(info["metainfo"]["failed"], key=lambda f: f["index"]) == failed
    assert sorted(e["sample_idx"] for e in info["data_list"]) == [0, 2, 4]


def test_stop_raises_naming_source_and_index_and_keeps_done_frames(tmp_path):
    tasks = make_tasks(5, fail=(2,))
    with pytest.raises(ConversionError, match=r"raw/src_2\.bin \(record 2\): ValueError: corrupt record 2"):
        run_conversion(dataset="fake", split="train", tasks=tasks, convert_one=fake_convert, out_dir=tmp_path,
                       columns=COLUMNS, on_error="stop")
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["fake_000.pkl", "fake_001.pkl"]
    assert not (tmp_path / "fake_infos_train.pkl").exists()  # no info file that looks complete
    summary = run_conversion(dataset="fake", split="train", tasks=make_tasks(5), convert_one=fake_convert,
                             out_dir=tmp_path, columns=COLUMNS)
    assert (summary.converted, summary.already_done) == (3, 2)


def test_wrong_point_width_is_a_clear_error(tmp_path):
    with pytest.raises(ConversionError, match=r"raw/src_0\.bin \(record 0\): points have shape \(5, 3\), "
                                              r"expected \(N, 4\)"):
        run_conversion(dataset="fake", split="train", tasks=make_tasks(1), convert_one=wrong_width_convert,
                       out_dir=tmp_path, columns=COLUMNS)
    assert list((tmp_path / "points").iterdir()) == []


def damaged_convert(task: FrameTask) -> FrameResult:
    """fake_convert, then the damage named in the payload: frame i's points or info entry get NaN / inf."""
    result = fake_convert(task)
    i, damage = task.payload["i"], task.payload.get("damage", {})
    if damage.get(i) == "nan intensity":
        result.points[0, 3] = np.nan
    elif damage.get(i) == "inf x":
        result.points[-1, 0] = np.inf
    elif damage.get(i) == "nan pose":
        result.info["ego2global"][1][3] = float("nan")
    elif damage.get(i) == "nan box":
        result.info["instances"] = [{"bbox_3d": [1.0, 2.0, np.float32("nan"), 4.0, 1.0, 1.0, 0.0]}]
    elif damage.get(i) == "label only":
        result.points, result.label_only, result.sweeps = result.points[:0], True, []
    return result


def test_non_finite_points_and_info_numbers_are_failures_naming_the_place(tmp_path):
    damage = {0: "nan intensity", 1: "inf x", 2: "nan pose", 3: "nan box"}
    summary = run_conversion(dataset="fake", split="train", tasks=make_tasks(5, damage=damage),
                             convert_one=damaged_convert, out_dir=tmp_path, columns=COLUMNS, on_error="skip")
    errors = {f["index"]: f["error"] for f in summary.failed}
    assert errors == {
        0: "raw/src_0.bin (record 0): points: 1 of 1 points have NaN/inf values (columns intensity)",
        1: "raw/src_1.bin (record 1): points: 1 of 2 points have NaN/inf values (columns x)",
        2: "raw/src_2.bin (record 2): info['ego2global'][1][3] is nan (NaN/inf in the raw data)",
        3: "raw/src_3.bin (record 3): info['instances'][0]['bbox_3d'][2] is nan (NaN/inf in the raw data)"}
    assert [e["sample_idx"] for e in load_info(summary)["data_list"]] == [4]
    assert sorted(p.name for p in (tmp_path / "points").iterdir()) == ["fake_004.bin"]


def test_min_points_and_label_only_frames(tmp_path, capsys):
    summary = run_conversion(dataset="fake", split="train", tasks=make_tasks(4, damage={3: "label only"}),
                             convert_one=damaged_convert, out_dir=tmp_path, columns=COLUMNS, on_error="skip",
                             min_points=2)
    assert [f["error"] for f in summary.failed] == [
        "raw/src_0.bin (record 0): points: 1 point(s), fewer than --min-points 2 (an empty or cut-short sweep)"]
    assert "converted 3, already done 0, failed 1" in capsys.readouterr().out
    info = load_info(summary)
    assert summary.label_only == info["metainfo"]["label_only_frames"] == ["fake_003"]
    entry = next(e for e in info["data_list"] if e["sample_idx"] == 3)
    assert entry["label_only"] is True and entry["lidar_points"]["num_points"] == 0
    assert (tmp_path / "points" / "fake_003.bin").stat().st_size == 0
    assert not any(e.get("label_only") for e in info["data_list"] if e["sample_idx"] != 3)


def test_all_failed_writes_no_info_file_and_raises(tmp_path, capsys):
    with pytest.raises(ConversionError, match=r"no fake frame converted: all 3 failed \(listed above\); "
                                              r"no info file written"):
        run_conversion(dataset="fake", split="train", tasks=make_tasks(3, fail=(0, 1, 2)), convert_one=fake_convert,
                       out_dir=tmp_path, columns=COLUMNS, on_error="skip")
    printed = capsys.readouterr().out
    assert printed.count("  failed: ") == 3 and "converted 0, already done 0, failed 3" in printed
    assert not (tmp_path / "fake_infos_train.pkl").exists()
    with pytest.raises(ConversionError, match="no fake frames to convert"):
        run_conversion(dataset="fake", split="train", tasks=[], convert_one=fake_convert, out_dir=tmp_path,
                       columns=COLUMNS)


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path):
    first = run_conversion(dataset="fake", split="train", tasks=make_tasks(3), convert_one=fake_convert,
                           out_dir=tmp_path, columns=COLUMNS, settings={"layout": "kitti", "root": Path("/a")})
    before = load_info(first)
    assert before["metainfo"]["settings"] == {"point_columns": list(COLUMNS), "layout": "kitti", "root": "/a"}
    with pytest.raises(ConversionError) as err:
        run_conversion(dataset="fake", split="train", tasks=make_tasks(3), convert_one=failing_convert,
                       out_dir=tmp_path, columns=COLUMNS[:3], settings={"layout": "xyz", "root": Path("/a")})
    assert str(err.value) == (f"{tmp_path} holds a fake conversion with other settings (layout 'kitti' -> 'xyz'; "
                              f"point_columns ['x', 'y', 'z', 'intensity'] -> ['x', 'y', 'z']); pass --overwrite "
                              f"to convert every frame again, or choose another --out")
    assert load_info(first) == before  # nothing rewritten
    again = run_conversion(dataset="fake", split="train", tasks=make_tasks(3), convert_one=fake_convert,
                           out_dir=tmp_path, columns=COLUMNS, settings={"layout": "kitti", "root": "/a"})
    assert (again.converted, again.already_done) == (0, 3)  # same settings: nothing to do
    three = lambda task: FrameResult(fake_convert(task).points[:, :3] * 2, fake_convert(task).info)  # noqa: E731
    redone = run_conversion(dataset="fake", split="train", tasks=make_tasks(3), convert_one=three, out_dir=tmp_path,
                            columns=COLUMNS[:3], settings={"layout": "xyz", "root": "/a"}, overwrite=True)
    assert (redone.converted, redone.already_done) == (3, 0)
    for i in range(3):
        stored = np.fromfile(tmp_path / "points" / f"fake_{i:03d}.bin", "<f4").reshape(-1, 3)
        np.testing.assert_array_equal(stored, expected_points(i)[:, :3] * 2)
        assert not (tmp_path / "sweeps" / f"fake_{i:03d}_prev.bin").exists()
    assert load_info(redone)["metainfo"]["point_columns"] == ["x", "y", "z"]


def test_bad_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="duplicate frame key 'a'"):
        run_conversion(dataset="fake", split="x", tasks=[FrameTask("a", "f", 0), FrameTask("a", "f", 1)],
                       convert_one=fake_convert, out_dir=tmp_path, columns=COLUMNS)
    with pytest.raises(ValueError, match="not filesystem-safe"):
        run_conversion(dataset="fake", split="x", tasks=[FrameTask("../evil", "f", 0)],
                       convert_one=fake_convert, out_dir=tmp_path, columns=COLUMNS)


KILLED_RUN = """
import os, sys
import data_converters.common as common
from tests.test_converters_common import fake_convert, make_tasks

real_atomic_write = common.atomic_write

def dying_atomic_write(path, write):
    if path.name == "fake_003.bin":  # die half-way through writing frame 3's points, like a kill -9
        return real_atomic_write(path, lambda f: (f.write(b"half a frame"), f.flush(), os._exit(9)))
    return real_atomic_write(path, write)

common.atomic_write = dying_atomic_write
common.run_conversion(dataset="fake", split="train", tasks=make_tasks(6), convert_one=fake_convert,
                      out_dir=sys.argv[1], columns=("x", "y", "z", "intensity"))
"""


def test_killed_run_leaves_only_complete_files_and_the_next_run_finishes(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    stale = temp_files(out)
    assert [p.name for p in stale] == [f".fake_003.bin.tmp-{p.name.rsplit('-', 1)[1]}" for p in stale] != []
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["fake_000.pkl", "fake_001.pkl", "fake_002.pkl"]
    assert not (out / "points" / "fake_003.bin").exists()

    summary = run_conversion(dataset="fake", split="train", tasks=make_tasks(6), convert_one=fake_convert,
                             out_dir=out, columns=COLUMNS)
    assert (summary.converted, summary.already_done) == (3, 3)
    assert temp_files(out) == []
    clean = run_conversion(dataset="fake", split="train", tasks=make_tasks(6), convert_one=fake_convert,
                           out_dir=tmp_path / "clean", columns=COLUMNS)
    assert load_info(summary) == load_info(clean)


SLOW_POOL_RUN = """
import sys
from data_converters.common import run_conversion
from tests.test_converters_common import fake_convert, make_tasks

if __name__ == "__main__":
    run_conversion(dataset="fake", split="train", tasks=make_tasks(12, sleep=0.25), convert_one=fake_convert,
                   out_dir=sys.argv[1], columns=("x", "y", "z", "intensity"), workers=2)
"""


def test_sigkill_of_a_two_worker_run_then_resume(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_POOL_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "frames").glob("*.pkl")) if (out / "frames").is_dir() else []) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and both workers
        proc.wait()
    done = {p.stem for p in (out / "frames").glob("*.pkl")}
    assert 3 <= len(done) < 12
    for key in done:  # every frame marked done has its complete points file
        i = int(key.split("_")[1])
        np.testing.assert_array_equal(np.fromfile(out / "points" / f"{key}.bin", "<f4").reshape(-1, 4),
                                      expected_points(i))
    summary = run_conversion(dataset="fake", split="train", tasks=make_tasks(12), convert_one=fake_convert,
                             out_dir=out, columns=COLUMNS, workers=2)
    assert (summary.converted, summary.already_done) == (12 - len(done), len(done))
    assert temp_files(out) == []
    assert len(load_info(summary)["data_list"]) == 12


def test_remove_stale_temp_files_keeps_those_of_live_processes(tmp_path):
    (tmp_path / "points").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "points" / f".a.bin.tmp-{int(dead.stdout)}"
    live = tmp_path / "points" / f".b.bin.tmp-{os.getppid()}"
    for path in (stale, live):
        path.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert live.exists() and not stale.exists()
