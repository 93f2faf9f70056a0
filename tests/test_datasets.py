"""pcmae.data: the procedural default, the published dataset layouts (tiny fixtures written into tmp_path),
the real ShapeNet-55 split lists, transforms and the registry entry point."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pcmae.data import (ModelNet40, RandomRotate, ScaleAndTranslate, ScanObjectNN, ShapeNet55, SyntheticObjects,
                        build_dataset, pc_normalize)
from pcmae.io import PointCloudFormatError
from pcmae.registry import ConfigError
from tests.fixtures_layouts import (MODELNET_CLASSES, SHAPENET_NAMES, write_modelnet40, write_scanobjectnn,
                                    write_shapenet55)
from tests.shared_data import shared_data_path


def assert_unit_sphere(points: torch.Tensor):
    np.testing.assert_allclose(points.mean(0).numpy(), 0.0, atol=1e-5)
    assert points.norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)


# --- SyntheticObjects ---------------------------------------------------------------------------------------

def test_synthetic_items_shapes_labels_and_normalisation():
    dataset = SyntheticObjects(num_samples=20, num_points=256)
    assert len(dataset) == 20 and dataset.num_classes == 8 == len(dataset.classes)
    for index in (0, 5, 19):
        item = dataset[index]
        assert item["points"].shape == (256, 3) and item["points"].dtype == torch.float32
        assert item["label"].dtype == torch.long and item["label"].shape == ()
        assert item["label"].item() == index % 8
        assert_unit_sphere(item["points"])
    with pytest.raises(IndexError):
        dataset[20]


def test_synthetic_is_deterministic_per_seed_split_and_index():
    a = SyntheticObjects(num_samples=16, num_points=128, split="train", seed=3)
    b = SyntheticObjects(num_samples=16, num_points=128, split="train", seed=3)
    assert torch.equal(a[7]["points"], b[7]["points"])
    assert torch.equal(a[7]["points"], a[7]["points"])  # no state carried between accesses
    other_split = SyntheticObjects(num_samples=16, num_points=128, split="test", seed=3)
    other_seed = SyntheticObjects(num_samples=16, num_points=128, split="train", seed=4)
    assert not torch.allclose(a[7]["points"], other_split[7]["points"], atol=1e-2)
    assert not torch.allclose(a[7]["points"], other_seed[7]["points"], atol=1e-2)
    assert not torch.allclose(a[7]["points"], a[15]["points"], atol=1e-2)  # same class, different object


def _radial_histogram(points: torch.Tensor) -> np.ndarray:
    """Rotation-invariant descriptor: histogram of distances to the centroid and of pairwise distances."""
    p = points.numpy()
    radial = np.histogram(np.linalg.norm(p, axis=1), bins=10, range=(0, 1))[0]
    pairs = np.linalg.norm(p[:128, None] - p[None, 128:256], axis=-1).ravel()
    return np.concatenate([radial, np.histogram(pairs, bins=10, range=(0, 2))[0] / 16.0])


def test_synthetic_classes_are_distinguishable():
    """Nearest class mean on a rotation-invariant histogram: far above the 1/8 chance level."""
    train = SyntheticObjects(num_samples=160, num_points=512, split="train")
    test = SyntheticObjects(num_samples=80, num_points=512, split="test")
    features = np.stack([_radial_histogram(train[i]["points"]) for i in range(len(train))])
    labels = np.arange(len(train)) % 8
    means = np.stack([features[labels == k].mean(0) for k in range(8)])
    correct = 0
    for i in range(len(test)):
        f = _radial_histogram(test[i]["points"])
        correct += int(np.argmin(((means - f) ** 2).sum(1)) == i % 8)
    assert correct / len(test) > 0.3  # chance is 0.125 (std 0.04 over 80 items)


def test_synthetic_class_subset_noise_and_bad_arguments():
    dataset = SyntheticObjects(num_samples=4, num_points=64, classes=("torus", "box"), noise=0.0)
    assert dataset.classes == ["torus", "box"] and dataset.num_classes == 2
    assert [dataset[i]["label"].item() for i in range(4)] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="unknown or no classes.*'teapot'.*sphere"):
        SyntheticObjects(classes=("teapot",))
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        SyntheticObjects(split="validation")


def test_build_dataset_and_default_collate():
    dataset = build_dataset({"type": "SyntheticObjects", "num_samples": 10, "num_points": 64, "split": "val"})
    assert isinstance(dataset, SyntheticObjects)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["points"].shape == (4, 64, 3) and batch["label"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"dataset\.num_point'.*num_points"):
        build_dataset({"type": "SyntheticObjects", "num_point": 64})


# --- ShapeNet55 ---------------------------------------------------------------------------------------------

def test_shapenet55_layout_labels_and_sampling(tmp_path):
    root = write_shapenet55(tmp_path, num_points=2048)
    train = ShapeNet55(root, "train", num_points=512, seed=0)
    test = ShapeNet55(root, "test", num_points=512)
    assert train.classes == test.classes == ["02691156", "03001627", "04379243"]
    assert len(train) == 4 and len(test) == 2 and len(ShapeNet55(root, "train", whole=True)) == 6
    assert [int(train[i]["label"]) for i in range(4)] == [0, 0, 1, 2]
    assert [int(test[i]["label"]) for i in range(2)] == [1, 0]
    item = train[2]
    assert item["points"].shape == (512, 3)
    assert_unit_sphere(item["points"])
    assert torch.equal(train[2]["points"], item["points"])  # an integer seed fixes the subset
    assert not torch.equal(ShapeNet55(root, "train", num_points=512, seed=1)[2]["points"], item["points"])
    torch.manual_seed(0)
    fresh = ShapeNet55(root, "train", num_points=512)
    assert not torch.equal(fresh[2]["points"], fresh[2]["points"])  # seed=None: a new subset per access


def test_shapenet55_item_is_a_permutation_then_pc_norm(tmp_path):
    """With every point kept, the item holds exactly the rows of pc_norm(file), in a shuffled order."""
    root = write_shapenet55(tmp_path, num_points=256)
    points = ShapeNet55(root, "train", num_points=256, seed=0)[1]["points"].numpy()
    expected = pc_normalize(np.load(root / "shapenet_pc" / SHAPENET_NAMES["train"][1]).astype(np.float64))
    assert not np.allclose(points, expected, atol=1e-4)  # shuffled
    order = lambda a: a[np.lexsort(a.T[::-1])]
    np.testing.assert_allclose(order(points), order(expected), atol=1e-5)


def test_shapenet55_missing_layout_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ShapeNet-55 split folder not found: .*ShapeNet-55 .*shapenet_pc"):
        ShapeNet55(tmp_path / "nowhere")
    root = write_shapenet55(tmp_path, num_points=16)
    (root / "shapenet_pc" / SHAPENET_NAMES["train"][0]).unlink()
    dataset = ShapeNet55(root, num_points=8)
    with pytest.raises(FileNotFoundError, match="02691156-aaa1.npy"):
        dataset[0]
    with pytest.raises(PointCloudFormatError, match=r"aaa2\.npy: 16 points, fewer than num_points=32"):
        ShapeNet55(root, num_points=32)[1]


def test_shapenet55_real_split_lists(tmp_path):
    lists = shared_data_path("pointr", "data", "ShapeNet55-34", "ShapeNet-55")
    root = tmp_path / "ShapeNet55-34"
    root.mkdir()
    (root / "ShapeNet-55").symlink_to(lists, target_is_directory=True)  # read in place
    (root / "shapenet_pc").mkdir()
    train, test = ShapeNet55(root, "train"), ShapeNet55(root, "test")
    assert len(train) == 41952 and len(test) == 10518
    assert train.num_classes == test.num_classes == 55
    assert all(len(synset) == 8 and synset.isdigit() for synset in train.classes)
    assert set(train.labels) == set(range(55)) and set(test.labels) == set(range(55))
    assert train.files[0] == "02828884-3d2ee152db78b312e5a8eba5f6050bab.npy"
    assert train.labels[0] == train.classes.index("02828884")


# --- ModelNet40 ---------------------------------------------------------------------------------------------

def test_modelnet40_layout_labels_first_points_and_normals(tmp_path):
    root = write_modelnet40(tmp_path, per_class=2, rows=64)
    train = ModelNet40(root, "train", num_points=32, use_normals=True)
    test = ModelNet40(root, "test", num_points=32)
    assert len(train) == 6 and len(test) == 6 and train.classes == MODELNET_CLASSES
    assert [int(train[i]["label"]) for i in range(6)] == [0, 0, 1, 1, 2, 2]  # night_stand_0001 -> class 1
    rows = np.loadtxt(root / "night_stand" / "night_stand_0001.txt", delimiter=",")
    item = train[2]
    np.testing.assert_allclose(item["points"].numpy(), pc_normalize(rows[:32, :3]), atol=1e-5)
    np.testing.assert_allclose(item["normals"].numpy(), rows[:32, 3:], atol=1e-6)
    assert "normals" not in test[0]


def test_modelnet40_fps_and_random_sampling(tmp_path):
    root = write_modelnet40(tmp_path, per_class=1, rows=64)
    fps = ModelNet40(root, "train", num_points=16, sampling="fps")[0]["points"].numpy()
    shuffled = ModelNet40(root, "train", num_points=16, sampling="random", seed=1)[0]["points"].numpy()
    first = ModelNet40(root, "train", num_points=16)[0]["points"].numpy()

    def min_gap(p):
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)
        return d[~np.eye(len(p), dtype=bool)].min()

    assert min_gap(fps) > min_gap(first)  # farthest point sampling spreads the points out
    assert not np.allclose(shuffled, first)
    with pytest.raises(PointCloudFormatError, match=r"airplane_0001\.txt: 64 points, fewer than num_points=100"):
        ModelNet40(root, "train", num_points=100)[0]
    with pytest.raises(ValueError, match="unknown sampling 'uniform'"):
        ModelNet40(root, sampling="uniform")


def test_modelnet40_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ModelNet root folder not found: .*nope .*modelnet40_shape_names"):
        ModelNet40(tmp_path / "nope")
    root = write_modelnet40(tmp_path)
    (root / "modelnet40_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"modelnet40_test\.txt"):
        ModelNet40(root, "test")


# --- ScanObjectNN -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,split,marker", [("OBJ_BG", "train", 1.0), ("OBJ_BG", "test", -1.0),
                                                  ("OBJ_ONLY", "train", 10.0), ("PB_T50_RS", "test", -20.0)])
def test_scanobjectnn_variants_read_their_files(tmp_path, variant, split, marker):
    root = write_scanobjectnn(tmp_path, count=6)
    dataset = ScanObjectNN(root, variant, split)
    assert len(dataset) == 6 and dataset.num_classes == 15 and dataset.classes[0] == "bag"
    item = dataset[3]
    assert item["points"].shape == (2048, 3) and item["points"][0, 0].item() == marker  # stored as is
    assert item["label"].item() == 3 and item["label"].shape == ()


def test_scanobjectnn_root_may_be_the_variant_folder(tmp_path):
    root = write_scanobjectnn(tmp_path, count=2)
    direct = ScanObjectNN(root / "main_split_nobg", "OBJ_ONLY", "test")
    assert direct[0]["points"][0, 0].item() == -10.0
    with pytest.raises(FileNotFoundError, match=r"main_split/main_split_nobg/training_objectdataset\.h5"):
        ScanObjectNN(root / "main_split", "OBJ_ONLY", "train")  # never silently read OBJ_BG for OBJ_ONLY
    with pytest.raises(ValueError, match="unknown variant 'PB_T25'"):
        ScanObjectNN(root, "PB_T25")


def test_scanobjectnn_subsampling_and_normalize(tmp_path):
    root = write_scanobjectnn(tmp_path, count=2)
    dataset = ScanObjectNN(root, "OBJ_BG", "train", num_points=1024, sampling="random", seed=0, normalize=True)
    item = dataset[1]
    assert item["points"].shape == (1024, 3)
    assert_unit_sphere(item["points"])
    assert torch.equal(dataset[1]["points"], item["points"])


# --- transforms ---------------------------------------------------------------------------------------------

def test_pc_normalize_numpy_and_batched_torch_agree():
    rng = np.random.default_rng(0)
    clouds = rng.normal(size=(3, 50, 3)) * [1, 2, 3] + 5
    batched = pc_normalize(torch.from_numpy(clouds))
    for b in range(3):
        single = pc_normalize(clouds[b])
        np.testing.assert_allclose(batched[b].numpy(), single, atol=1e-12)
        assert np.abs(single.mean(0)).max() < 1e-12 and np.linalg.norm(single, axis=1).max() == pytest.approx(1)
    same = pc_normalize(torch.ones(2, 4, 3))
    assert torch.equal(same, torch.zeros(2, 4, 3))


def test_scale_and_translate_ranges_and_generator():
    xyz = torch.randn(8, 100, 3, generator=torch.Generator().manual_seed(0))
    transform = ScaleAndTranslate()
    out = transform(xyz, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, transform(xyz, generator=torch.Generator().manual_seed(1)))
    # out = xyz * s + t per sample and axis: recover s and t from two points
    scale = (out[:, 0] - out[:, 1]) / (xyz[:, 0] - xyz[:, 1])
    shift = out[:, 0] - xyz[:, 0] * scale
    assert torch.allclose(out, xyz * scale[:, None] + shift[:, None], atol=1e-5)
    assert (scale >= 2 / 3 - 1e-4).all() and (scale <= 1.5 + 1e-4).all() and scale.std() > 0.05
    assert shift.abs().max() <= 0.2 + 1e-5
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        transform(torch.zeros(100, 3))


def test_random_rotate_about_axis_and_so3():
    xyz = torch.randn(6, 40, 3, generator=torch.Generator().manual_seed(0))
    rotated = RandomRotate("y")(xyz, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(rotated[..., 1], xyz[..., 1])  # the up axis is kept
    assert torch.allclose(rotated.norm(dim=-1), xyz.norm(dim=-1), atol=1e-5)
    angles = torch.atan2(rotated[:, 0, 2], rotated[:, 0, 0]) - torch.atan2(xyz[:, 0, 2], xyz[:, 0, 0])
    assert angles.remainder(2 * math.pi).std() > 0.1  # one angle per sample
    full = RandomRotate(None)(xyz, generator=torch.Generator().manual_seed(3))
    gram_before, gram_after = xyz @ xyz.transpose(1, 2), full @ full.transpose(1, 2)
    assert torch.allclose(gram_before, gram_after, atol=1e-4)  # distances and angles kept
    assert not torch.allclose(full[..., 1], xyz[..., 1], atol=1e-2)
    with pytest.raises(ValueError, match="axis must be"):
        RandomRotate("w")
