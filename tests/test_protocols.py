"""Classification protocols of the Point-MAE family: Point-MAE's input pipeline (sampling: upstream) and its
.dat cache, voting, ScanObjectNN variants, few-shot folds (Point-MAE's pickles and the synthetic default) with
tools/fewshot.py, the linear-SVM probe, and the shipped protocol configs on real data when present."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmae.data import ModelNet40, ModelNetFewShot, ScanObjectNN, SyntheticFewShot, SyntheticObjects
from pcmae.data.object_datasets import upstream_sample, write_modelnet_fps_cache
from pcmae.evaluation.classification import evaluate_accuracy, vote_logits
from pcmae.io import PointCloudFormatError
from pcmae.io.numpy_pickle import load_numpy_pickle
from tests.fixtures_layouts import MODELNET_CLASSES, write_modelnet40, write_scanobjectnn

REPO = Path(__file__).resolve().parents[1]


def clustered_cloud(clusters: int, total: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(total, 3) points in ``clusters`` tight, well separated clusters, and each point's cluster id. A farthest
    point sample of at most ``clusters`` points takes one point of distinct clusters; a random subset repeats them."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-1, 1, size=(clusters, 3))
    ids = np.concatenate([np.arange(clusters), rng.integers(0, clusters, total - clusters)])
    return (centres[ids] + rng.normal(scale=1e-6, size=(total, 3))).astype(np.float32), ids


def cluster_ids(points: np.ndarray, cloud: np.ndarray, ids: np.ndarray) -> np.ndarray:
    rows = {tuple(p): i for p, i in zip(cloud.tolist(), ids)}
    return np.array([rows[tuple(p)] for p in points.tolist()])


# --- Point-MAE's input pipeline -------------------------------------------------------------------------------

def test_upstream_training_sample_is_fps_to_point_all_then_a_random_subset():
    cloud, ids = clustered_cloud(1200, 4000)
    g = torch.Generator().manual_seed(0)
    first, vote = upstream_sample(cloud, 1024, train=True, generator=g, source="c")
    second, _ = upstream_sample(cloud, 1024, train=True, generator=g, source="c")
    assert vote is None and first.shape == (1024, 3)
    for sample in (first, second):  # FPS to 1200 of 1200 clusters: one point per cluster, 1024 distinct clusters
        assert len(set(cluster_ids(sample, cloud, ids))) == 1024
    assert not np.array_equal(first, second)  # a fresh shuffle and subset each access
    random_rows = cloud[np.random.default_rng(0).permutation(4000)[:1024]]
    assert len(set(cluster_ids(random_rows, cloud, ids))) < 1000  # what plain random sampling would give


def test_upstream_test_sample_is_fps_and_carries_the_vote_pool():
    cloud, ids = clustered_cloud(1300, 3000)
    points, vote = upstream_sample(cloud, 1024, train=False, generator=None, source="c")
    assert points.shape == (1024, 3) and vote.shape == (1200, 3)
    np.testing.assert_array_equal(points, vote[:1024])  # FPS(1024) is the start of FPS(1200)
    np.testing.assert_array_equal(points[0], cloud[0])  # from the first point: deterministic
    assert len(set(cluster_ids(vote, cloud, ids))) == 1200
    again, _ = upstream_sample(cloud, 1024, train=False, generator=None, source="c")
    np.testing.assert_array_equal(points, again)


def test_upstream_whole_cloud_cases_and_errors():
    cloud, _ = clustered_cloud(2048, 2048)
    train, _ = upstream_sample(cloud, 2048, True, torch.Generator().manual_seed(1), "c")
    assert not np.array_equal(train, cloud)  # point_all = 2048 of 2048: a random order of the whole cloud
    np.testing.assert_array_equal(np.sort(train, axis=0), np.sort(cloud, axis=0))
    test, vote = upstream_sample(cloud, 2048, False, None, "c")
    assert np.array_equal(test, cloud) and np.array_equal(vote, cloud)  # kept as stored
    with pytest.raises(ValueError, match=r"point_all for num_points \[1024, 2048, 4096, 8192\], got 1000"):
        upstream_sample(cloud, 1000, True, None, "c")
    with pytest.raises(PointCloudFormatError, match="c: 2048 points, fewer than num_points=4096"):
        upstream_sample(cloud, 4096, True, None, "c")


def modelnet_fixture(tmp_path, rows=2100):
    return write_modelnet40(tmp_path, per_class=2, rows=rows)


def test_modelnet40_upstream_items_from_text_and_from_the_dat_cache(tmp_path):
    root = modelnet_fixture(tmp_path)
    test = ModelNet40(root, "test", num_points=1024, sampling="upstream", source_points=2048)
    assert test.cache is None
    item = test[1]
    assert item["points"].shape == (1024, 3) and item["vote_points"].shape == (1200, 3)
    assert torch.equal(item["points"], item["vote_points"][:1024])
    assert item["vote_points"].norm(dim=1).max() <= 1 + 1e-5  # normalised on the whole 2048-point source

    cache = write_modelnet_fps_cache(test)
    assert cache.name == "modelnet40_test_2048pts_fps.dat" and cache.parent == root
    clouds, labels = pickle.loads(cache.read_bytes())  # Point-MAE's layout: [clouds (n, 6), labels (1,) int32]
    assert clouds[0].shape == (2048, 6) and labels[1].dtype == np.int32 and labels[1].shape == (1,)
    cached = ModelNet40(root, "test", num_points=1024, sampling="upstream", source_points=2048)
    assert cached.cache is not None
    for i in range(len(test)):
        assert torch.equal(cached[i]["points"], test[i]["points"]) and cached[i]["label"] == test[i]["label"]

    train = ModelNet40(root, "train", num_points=1024, sampling="upstream", source_points=2048, seed=3)
    item = train[0]
    assert item["points"].shape == (1024, 3) and "vote_points" not in item
    assert torch.equal(train[0]["points"], item["points"])  # a fixed seed fixes the subset
    with pytest.raises(ValueError, match="num_points=4096 exceeds source_points=2048"):
        ModelNet40(root, "train", num_points=4096, sampling="upstream", source_points=2048)


def test_modelnet40_dat_cache_of_another_list_or_with_code_is_refused(tmp_path):
    root = modelnet_fixture(tmp_path, rows=1150)
    write_modelnet_fps_cache(ModelNet40(root, "test", sampling="upstream", source_points=1100))
    dat = root / "modelnet40_test_1100pts_fps.dat"
    clouds, labels = pickle.loads(dat.read_bytes())
    dat.write_bytes(pickle.dumps([clouds, labels[::-1]]))
    with pytest.raises(PointCloudFormatError, match="label of cloud 0 is 2, the split list says 0"):
        ModelNet40(root, "test", sampling="upstream", source_points=1100)

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    dat.write_bytes(pickle.dumps([clouds, [Payload()] * len(labels)]))
    with pytest.raises(PointCloudFormatError, match=r"not a pickle of numpy arrays .*refused global (posix|os)\.system"):
        ModelNet40(root, "test", sampling="upstream", source_points=1100)
    assert not marker.exists()
    dat.write_bytes(pickle.dumps([clouds, [np.array([None], dtype=object)] * len(labels)]))
    with pytest.raises(PointCloudFormatError, match="dtype=object"):
        load_numpy_pickle(dat)
    dat.write_bytes(pickle.dumps([clouds, labels])[:100])
    with pytest.raises(PointCloudFormatError, match="modelnet40_test_1100pts_fps.dat: not a pickle of numpy arrays"):
        ModelNet40(root, "test", sampling="upstream", source_points=1100)


# --- voting --------------------------------------------------------------------------------------------------

class Recorder(torch.nn.Module):
    """Logits from the mean x of each cloud; remembers every input."""

    def __init__(self):
        super().__init__()
        self.seen, self.w = [], torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        self.seen.append(batch["points"].clone())
        return {"logits": torch.stack([batch["points"][..., 0].mean(1), -batch["points"][..., 0].mean(1)], -1)}


def normalised_sorted(points: torch.Tensor) -> torch.Tensor:
    """Per axis, sorted values mapped to [0, 1]: unchanged by a positive scale and a shift, and by reordering."""
    values = points.sort(dim=-2).values
    low, high = values[..., :1, :], values[..., -1:, :]
    return (values - low) / (high - low)


def test_vote_draws_views_from_vote_points_else_reorders_points():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(2, 16, 3, generator=g)
    pool = torch.rand(2, 40, 3, generator=g) + 10.0
    model = Recorder()
    vote_logits(model, {"points": points, "vote_points": pool}, torch.Generator().manual_seed(0))
    assert len(model.seen) == 10 and all(v.shape == (2, 16, 3) for v in model.seen)
    assert all(v[..., 0].min() > 10 * 2 / 3 - 0.2 - 1e-6 for v in model.seen)  # drawn from the pool, not points
    assert len({tuple(v[0, :, 0].tolist()) for v in model.seen}) == 10  # ten different views

    model = Recorder()
    vote_logits(model, {"points": points}, torch.Generator().manual_seed(0))
    for view in model.seen:  # every view: the cloud's own points, reordered, scaled and shifted per axis
        torch.testing.assert_close(normalised_sorted(view), normalised_sorted(points))
    assert not torch.equal(model.seen[0].argsort(dim=1), model.seen[1].argsort(dim=1))
    with pytest.raises(ValueError, match="vote_points holds 8 points per cloud, fewer than the 16"):
        vote_logits(Recorder(), {"points": points, "vote_points": pool[:, :8]}, torch.Generator())


def test_vote_on_upstream_modelnet_items_is_reproducible(tmp_path):
    from pcmae.downstream import PointClassifier

    root = modelnet_fixture(tmp_path)
    dataset = ModelNet40(root, "test", num_points=1024, sampling="upstream", source_points=2048)
    torch.manual_seed(0)
    model = PointClassifier(num_classes=3, num_groups=8, group_size=8, embed_dim=24, depth=1, num_heads=2)
    runs = [evaluate_accuracy(model, dataset, batch_size=4, protocol="vote", seed=s) for s in (0, 0)]
    assert runs[0] == runs[1] and runs[0]["num_samples"] == len(dataset) == 2 * len(MODELNET_CLASSES)


# --- ScanObjectNN ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,folder,marker", [("scanobjectnn_obj_bg", "main_split", 1.0),
                                                  ("scanobjectnn_obj_only", "main_split_nobg", 10.0),
                                                  ("scanobjectnn_pb_t50_rs", "main_split", 20.0)])
def test_scanobjectnn_configs_read_their_variant_upstream_style(tmp_path, config, folder, marker):
    from pcmae.engine.build import build_dataset, load_checked_config

    root = write_scanobjectnn(tmp_path, count=4)
    cfg = load_checked_config(REPO / f"configs/point_mae/{config}.yaml", [f"data.train.root={root}",
                                                                         f"data.val.root={root / folder}"])
    assert cfg["model"]["num_groups"] == 128 and cfg["model"]["num_classes"] == 15
    train, test = build_dataset(cfg["data"]["train"]), build_dataset(cfg["data"]["val"])
    stored = ScanObjectNN(root, cfg["data"]["train"]["variant"], "train").points[2]
    item = train[2]["points"].numpy()
    assert item.shape == (2048, 3) and not np.array_equal(item, stored)  # a random point order of the cloud
    np.testing.assert_array_equal(np.sort(item, axis=0), np.sort(stored, axis=0))
    assert marker in item[:, 0]
    test_item = test[2]
    assert test_item["points"][0, 0].item() == -marker and torch.equal(test_item["points"], test_item["vote_points"])


# --- few-shot ------------------------------------------------------------------------------------------------

def write_fewshot_fold(root: Path, way=5, shot=2, fold=0, points=1300, labels=None) -> Path:
    """One fold in Point-MAE's layout, built as its generate_few_shot_data.py does: (cloud, i, class id) tuples
    with cloud (P, 6) float32, i an int in 0..way-1 and the ModelNet class id a numpy int32."""
    rng = np.random.default_rng(fold)
    keys = rng.permutation(40)[:way].astype(np.int32)

    def entries(per_class):
        return [(rng.normal(size=(points, 6)).astype(np.float32) * 3 + 1, i if labels is None else labels, keys[i])
                for i in range(way) for _ in range(per_class)]

    path = root / f"{way}way_{shot}shot" / f"{fold}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"train": entries(shot), "test": entries(3)}))
    return path


def test_modelnet_fewshot_reads_point_maes_folds(tmp_path):
    write_fewshot_fold(tmp_path, way=5, shot=2, fold=3)
    train = ModelNetFewShot(tmp_path, way=5, shot=2, fold=3, split="train", seed=0)
    test = ModelNetFewShot(tmp_path, way=5, shot=2, fold=3, split="test")
    assert len(train) == 10 and len(test) == 15 and train.num_classes == 5
    assert sorted(train.labels) == sorted(list(range(5)) * 2)
    item = test[4]
    assert item["points"].shape == (1024, 3) and item["vote_points"].shape == (1200, 3)
    assert item["vote_points"].norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)
    assert train[0]["points"].shape == (1024, 3) and "vote_points" not in train[0]
    with pytest.raises(FileNotFoundError, match=r"10way_2shot/3\.pkl"):
        ModelNetFewShot(tmp_path, way=10, shot=2, fold=3)
    write_fewshot_fold(tmp_path, way=5, shot=2, fold=4, labels=7)
    with pytest.raises(PointCloudFormatError, match=r"4\.pkl: train\[0\] has label 7, outside 0\.\.4"):
        ModelNetFewShot(tmp_path, way=5, shot=2, fold=4)


def test_synthetic_fewshot_folds():
    train = SyntheticFewShot(way=5, shot=3, fold=2, split="train", num_points=64)
    test = SyntheticFewShot(way=5, shot=3, fold=2, split="test", num_points=64, test_per_class=4)
    assert len(train) == 15 and len(test) == 20 and train.classes == test.classes and len(set(train.classes)) == 5
    labels = [int(train[i]["label"]) for i in range(len(train))]
    assert sorted(labels) == sorted(list(range(5)) * 3)
    shapes = SyntheticObjects(num_samples=8, num_points=64, split="train").classes
    for i in range(len(train)):  # the item is a SyntheticObjects cloud of the fold's class for its label
        index, label = train.items[i]
        assert shapes[index % 8] == train.classes[label]
    assert torch.equal(train[0]["points"], SyntheticFewShot(way=5, shot=3, fold=2, num_points=64)[0]["points"])
    assert SyntheticFewShot(way=5, shot=3, fold=3).classes != train.classes or \
        SyntheticFewShot(way=5, shot=3, fold=3).items != train.items
    with pytest.raises(ValueError, match="way=10 needs 10 classes, there are 8"):
        SyntheticFewShot(way=10, shot=10)


def run_tool(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True)


TINY_CLASSIFIER = ["model.embed_dim=24", "model.depth=1", "model.num_heads=2", "model.num_groups=8",
                   "model.group_size=8", "data.train.num_points=64", "data.val.num_points=64",
                   "data.val.test_per_class=3", "train.epochs=2", "train.batch_size=4", "train.warmup_epochs=0"]


@pytest.mark.slow
def test_fewshot_tool_runs_every_fold_and_reports_mean_and_std(tmp_path):
    from pcmae.engine.checkpoint import load_model_weights, save_checkpoint
    from pcmae.pretrainers import PointMAE

    torch.manual_seed(1)
    encoder = PointMAE(num_groups=8, group_size=8, embed_dim=24, depth=1, num_heads=2, decoder_depth=1,
                       decoder_num_heads=2)
    save_checkpoint(tmp_path / "pretrain.pth", {"model": encoder.state_dict()})
    proc = run_tool("tools/fewshot.py", "configs/point_mae/fewshot_demo.yaml", *TINY_CLASSIFIER, "--way", 3, "--shot", 4,
                    "--folds", 2, "--work-dir", tmp_path, "--pretrained", tmp_path / "pretrain.pth",
                    "--protocol", "plain", "vote")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "3way_4shot.json").read_text())
    for protocol in ("plain", "vote"):
        folds = summary["last"][protocol]["folds"]
        assert len(folds) == 2 and all(0 <= a <= 1 for a in folds)
        assert summary["last"][protocol]["mean"] == pytest.approx(np.mean(folds))
        assert summary["last"][protocol]["std"] == pytest.approx(np.std(folds))
    assert len(summary["best"]["folds"]) == 2
    assert all(b >= 0 for b in summary["best"]["folds"])
    for fold in (0, 1):
        cfg = (tmp_path / "3way_4shot" / f"fold{fold}" / "config.yaml").read_text()
        assert f"fold: {fold}" in cfg and "way: 3" in cfg and "shot: 4" in cfg
    assert "3way_4shot, 2 folds, accuracy mean +- std over folds" in proc.stdout
    from pcmae.downstream import PointClassifier  # each fold started from the pre-trained encoder
    first = PointClassifier(num_classes=8, num_groups=8, group_size=8, embed_dim=24, depth=1, num_heads=2)
    load_model_weights(first, tmp_path / "3way_4shot" / "fold0" / "checkpoint_best.pth", "PointClassifier")
    tuned = dict(first.encoder.named_parameters())
    moved = [(tuned[k] - v).abs().max().item() for k, v in encoder.encoder.named_parameters()]
    assert max(moved) < 0.05  # two tiny epochs move the encoder a little from the pre-trained weights


def test_fewshot_tool_refuses_more_ways_than_outputs():
    proc = run_tool("tools/fewshot.py", "configs/point_mae/fewshot_demo.yaml", "--way", 9, "--folds", 1)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: configs/point_mae/fewshot_demo.yaml: model.num_classes=8 is fewer than --way 9"]


# --- linear SVM probe ------------------------------------------------------------------------------------------

def test_linear_probe_protocol_on_the_synthetic_default():
    from pcmae.evaluation.probe import C_GRID, extract_features, linear_probe
    from pcmae.pretrainers import PointMAE

    torch.manual_seed(0)
    model = PointMAE(num_groups=8, group_size=8, embed_dim=24, depth=1, num_heads=2, decoder_depth=1,
                     decoder_num_heads=2)
    train = SyntheticObjects(num_samples=40, num_points=64, split="val")
    test = SyntheticObjects(num_samples=24, num_points=64, split="test")
    feats, labels = extract_features(model, train)
    tokens = model.encode(train[0]["points"][None])[0]
    np.testing.assert_allclose(feats[0], torch.cat([tokens.max(0).values, tokens.mean(0)]).detach().numpy(),
                               rtol=1e-4, atol=1e-5)  # max + mean pooling over all tokens
    result = linear_probe(model, train, test, seeds=(0, 1, 2))
    assert len(result["accuracy"]) == 3 and all(c in C_GRID for c in result["C"])
    assert result["mean"] == pytest.approx(np.mean(result["accuracy"]))
    assert result["std"] == pytest.approx(np.std(result["accuracy"]))
    assert linear_probe(model, train, test, seeds=(0, 1, 2)) == result  # seeded: the same numbers again


def test_probe_help_states_pooling_and_c_selection():
    proc = run_tool("tools/probe.py", "--help")
    text = " ".join(proc.stdout.split())
    assert "concat(max, mean) over all tokens" in text and "20 % stratified validation split" in text
    assert "0.001, 0.01, 0.1, 1.0, 10.0" in text and "default 3 seeds" in text


# --- the shipped configs ----------------------------------------------------------------------------------------

def test_protocol_configs_match_point_mae():
    from pcmae.engine.build import load_checked_config

    def cfg(name):
        return load_checked_config(REPO / f"configs/point_mae/{name}.yaml")

    one_k, eight_k, finetune = cfg("modelnet40_1k"), cfg("modelnet40_8k"), cfg("modelnet40_finetune")
    assert finetune == one_k
    assert (one_k["model"]["num_groups"], one_k["model"]["group_size"], one_k["data"]["train"]["num_points"]) == \
        (64, 32, 1024)
    assert (eight_k["model"]["num_groups"], eight_k["data"]["train"]["num_points"],
            eight_k["data"]["val"]["num_points"]) == (512, 8192, 8192)
    for c in (one_k, eight_k):
        assert c["data"]["train"]["sampling"] == c["data"]["val"]["sampling"] == "upstream"
        assert (c["train"]["lr"], c["train"]["epochs"], c["train"]["batch_size"], c["train"]["grad_clip"]) == \
            (0.0005, 300, 32, 10.0)
    few = cfg("modelnet40_fewshot")
    assert few["train"]["epochs"] == 150 and few["model"]["num_classes"] == 40
    assert few["data"]["train"]["type"] == few["data"]["val"]["type"] == "ModelNetFewShot"
    probe = cfg("shapenet55")["probe"]
    assert probe["train"]["type"] == probe["test"]["type"] == "ModelNet40"
    assert (probe["train"]["split"], probe["test"]["split"]) == ("train", "test")


REAL = {  # config -> the data root it names (relative to the repository)
    "modelnet40_1k": "data/modelnet40_normal_resampled", "modelnet40_8k": "data/modelnet40_normal_resampled",
    "scanobjectnn_obj_bg": "data/ScanObjectNN/h5_files", "scanobjectnn_obj_only": "data/ScanObjectNN/h5_files",
    "scanobjectnn_pb_t50_rs": "data/ScanObjectNN/h5_files", "modelnet40_fewshot": "data/ModelNetFewshot/5way_10shot",
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_protocol_configs_on_the_real_datasets_when_present(name, monkeypatch):
    from pcmae.engine.build import build_dataset, load_checked_config

    if not (REPO / REAL[name]).exists():
        pytest.skip(f"real data for {name}.yaml not found at {REPO / REAL[name]} (the config's root; not shipped)")
    monkeypatch.chdir(REPO)
    overrides = [f"data.{s}.{k}={v}" for s in ("train", "val") for k, v in (("way", 5), ("shot", 10), ("fold", 0))] \
        if name == "modelnet40_fewshot" else []
    cfg = load_checked_config(REPO / f"configs/point_mae/{name}.yaml", overrides)
    for split in ("train", "val"):
        item = build_dataset(cfg["data"][split])[0]
        assert item["points"].shape == (cfg["data"][split]["num_points"], 3)
        assert ("vote_points" in item) == (split == "val")


def test_fine_tuning_runs_on_upstream_items_and_votes_on_their_pool(tmp_path):
    """The Trainer batches training items (no pool) and validation items (with vote_points) of sampling: upstream."""
    from pcmae.downstream import PointClassifier
    from pcmae.engine.trainer import Trainer

    root = modelnet_fixture(tmp_path, rows=1250)
    kwargs = dict(num_points=1024, sampling="upstream", source_points=1200)
    train, val = ModelNet40(root, "train", **kwargs), ModelNet40(root, "test", **kwargs)
    torch.manual_seed(0)
    model = PointClassifier(num_classes=3, num_groups=8, group_size=8, embed_dim=24, depth=1, num_heads=2)
    trainer = Trainer(model, train, {"epochs": 1, "batch_size": 3, "lr": 1e-3, "log_interval": 1}, tmp_path / "run",
                      val_dataset=val)
    trainer.fit()
    assert 0 <= trainer.validate()["acc"] <= 1
    plain = evaluate_accuracy(model, val, batch_size=3, protocol="plain")
    assert plain["accuracy"] == pytest.approx(trainer.validate()["acc"])  # val/acc is the plain protocol
    assert evaluate_accuracy(model, val, batch_size=3, protocol="vote")["num_samples"] == 6
