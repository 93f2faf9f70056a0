"""Part segmentation: ShapeNetPart in its published layout (a tiny fixture written to tmp_path), the embedded
SyntheticParts, instance / class mIoU as Point-MAE computes them, PointPartSegmenter and tools/finetune.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmae.data import ShapeNetPart, SyntheticParts
from pcmae.data.part_datasets import SHAPENETPART_PARTS
from pcmae.downstream import PointPartSegmenter
from pcmae.downstream.part_segmentation import default_feature_blocks, interpolate_features
from pcmae.engine.checkpoint import save_checkpoint
from pcmae.evaluation.segmentation import (constant_part_scores, evaluate_part_segmentation, miou_summary,
                                           most_frequent_parts, part_mask, restricted_prediction, shape_ious)
from pcmae.io.errors import PointCloudFormatError
from pcmae.pretrainers import PointMAE
from pcmae.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tools"))  # finetune.py
SYNSETS = {"Airplane": "02691156", "Bag": "02773838", "Mug": "03797390"}
TINY = dict(num_groups=8, group_size=8, embed_dim=16, depth=2, num_heads=2, propagation_dims=[16, 16],
            head_dims=[16, 8])


def write_shape(path: Path, rng, parts, rows: int = 40) -> np.ndarray:
    """A 'x y z nx ny nz part' file with ``rows`` rows over ``parts``; returns its part labels."""
    seg = np.array(parts)[np.arange(rows) % len(parts)]
    data = np.concatenate([rng.normal(size=(rows, 3)) * 3 + 5, rng.normal(size=(rows, 3)), seg[:, None]], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, data, fmt=["%.6f"] * 6 + ["%d"])
    return seg


@pytest.fixture
def shapenetpart(tmp_path):
    """Airplane / Bag / Mug with 3 / 2 / 2 shapes, the first of each in train, the second in test, the third in val."""
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    root.mkdir()
    (root / "synsetoffset2category.txt").write_text("".join(f"{c}\t{s}\n" for c, s in SYNSETS.items()))
    rng = np.random.default_rng(0)
    splits = {"train": [], "val": [], "test": []}
    for category, count in (("Airplane", 3), ("Bag", 2), ("Mug", 2)):
        for i in range(count):
            shape_id = f"{category.lower()}{i}"
            write_shape(root / SYNSETS[category] / f"{shape_id}.txt", rng, SHAPENETPART_PARTS[category])
            splits[("train", "test", "val")[i % 3]].append(f"shape_data/{SYNSETS[category]}/{shape_id}")
    (root / "train_test_split").mkdir()
    for name, entries in splits.items():
        (root / "train_test_split" / f"shuffled_{name}_file_list.json").write_text(json.dumps(entries[::-1]))
    return root


def test_shapenetpart_reads_the_published_layout(shapenetpart):
    train = ShapeNetPart(shapenetpart, split="train", num_points=64, seed=0)
    assert [p.stem for p in train.files] == ["airplane0", "bag0", "mug0"]  # categories in file order
    assert train.labels == [0, 1, 2] and train.categories == ["Airplane", "Bag", "Mug"]
    assert train.category_parts == [[0, 1, 2, 3], [4, 5], [36, 37]] and train.num_parts == 38
    assert len(ShapeNetPart(shapenetpart, split="trainval")) == 4 and len(ShapeNetPart(shapenetpart, "test")) == 3
    item = train[2]
    assert item["points"].shape == (64, 3) and item["points"].dtype == torch.float32
    assert item["label"].item() == 2 and item["seg"].dtype == torch.int64 and item["seg"].shape == (64,)
    assert set(item["seg"].tolist()) <= {36, 37}
    assert item["points"].norm(dim=1).max() <= 1.0 + 1e-6  # normalised into the unit sphere
    # each point keeps its own label: the file's row of a sampled point has that label
    xyz, seg = train.read(2)
    normalised = (xyz - xyz.mean(0)) / np.linalg.norm(xyz - xyz.mean(0), axis=1).max()
    rows = torch.cdist(item["points"], torch.from_numpy(normalised)).argmin(1)
    assert torch.equal(torch.from_numpy(seg)[rows], item["seg"])
    assert torch.equal(train[1]["points"], train[1]["points"])  # seed: the same draw every time
    fresh = ShapeNetPart(shapenetpart, split="train", num_points=64)
    assert not torch.equal(fresh[1]["points"], fresh[1]["points"])  # seed None: a new draw per access
    bag_only = ShapeNetPart(shapenetpart, split="test", categories=["Bag"])
    assert bag_only.labels == [1] and bag_only.files[0].stem == "bag1"  # labels of the full category list


@pytest.mark.parametrize("rows, problem", [
    ("0 0 0 1 0 0 36\n1 1 1 0 1 0", "columns"),
    ("0 0 0 1 0 0 4\n1 1 1 0 1 0 36", "part labels [4] are not parts of Mug"),
    ("0 0 0 1 0 0 36.5\n1 1 1 0 1 0 37", "not all integers"),
    ("0 0 nan 1 0 0 36\n1 1 1 0 1 0 37", "NaN"),
    ("", "no points"),
])
def test_shapenetpart_bad_file_is_one_line_naming_it(shapenetpart, rows, problem):
    path = shapenetpart / SYNSETS["Mug"] / "mug0.txt"
    path.write_text(rows)
    data = ShapeNetPart(shapenetpart, split="train")
    with pytest.raises(PointCloudFormatError) as err:
        data[2]
    assert str(path) in str(err.value) and problem in str(err.value) and "\n" not in str(err.value)


def test_shapenetpart_bad_layout_is_named(shapenetpart):
    (shapenetpart / SYNSETS["Mug"] / "mug0.txt").unlink()
    with pytest.raises(FileNotFoundError, match="mug0.txt"):
        ShapeNetPart(shapenetpart, split="train")[2]
    (shapenetpart / "train_test_split" / "shuffled_val_file_list.json").write_text("{not json")
    with pytest.raises(PointCloudFormatError, match="shuffled_val_file_list.json"):
        ShapeNetPart(shapenetpart, split="val")
    (shapenetpart / "synsetoffset2category.txt").write_text("Spaceship 01234567\n")
    with pytest.raises(PointCloudFormatError, match="synsetoffset2category.txt:1"):
        ShapeNetPart(shapenetpart)
    with pytest.raises(FileNotFoundError, match="expected layout"):
        ShapeNetPart(shapenetpart / "missing")


def test_synthetic_parts_are_seeded_labelled_objects():
    data = SyntheticParts(num_samples=10, num_points=256, split="val", seed=3)
    assert data.category_parts == [[0, 1, 2], [3, 4], [5, 6], [7, 8, 9], [10, 11, 12]] and data.num_parts == 13
    for index in range(10):
        item = data[index]
        label = index % 5
        assert item["label"].item() == label and item["points"].shape == (256, 3)
        assert set(item["seg"].tolist()) == set(data.category_parts[label])  # every part gets points
        assert item["points"].norm(dim=1).max() <= 1.0 + 1e-6
    again = SyntheticParts(num_samples=10, num_points=256, split="val", seed=3)[4]
    assert torch.equal(again["points"], data[4]["points"]) and torch.equal(again["seg"], data[4]["seg"])
    assert not torch.equal(SyntheticParts(10, 256, split="train", seed=3)[4]["points"], data[4]["points"])
    lamp = data[0]  # base, pole, shade stacked along z: the pole lies between base and shade
    z = {part: lamp["points"][lamp["seg"] == part, 2].mean() for part in (0, 1, 2)}
    assert z[0] < z[1] < z[2]


def test_shape_iou_counts_parts_absent_from_both_as_one():
    mask = part_mask([[0, 1, 2], [3, 4]], 5)
    seg = torch.tensor([[0, 0, 1, 1], [3, 3, 4, 4], [0, 0, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [3, 3, 4, 4], [0, 0, 2, 2]])
    label = torch.tensor([0, 1, 0])
    ious = shape_ious(pred, seg, label, mask)
    # shape 0: part 0 1/2, part 1 2/3, part 2 in neither -> 1; shape 1 perfect; shape 2: part 0 2/4, part 1 in
    # neither -> 1, part 2 predicted but absent -> 0
    expected = torch.tensor([(1 / 2 + 2 / 3 + 1) / 3, 1.0, (2 / 4 + 1 + 0) / 3], dtype=torch.float64)
    assert torch.allclose(ious, expected)
    summary = miou_summary(ious, label, ["A", "B"])
    assert summary["instance_miou"] == pytest.approx(expected.mean().item())
    category_a = (expected[0] + expected[2]).item() / 2
    assert summary["per_category"] == pytest.approx({"A": category_a, "B": 1.0})
    assert summary["class_miou"] == pytest.approx((category_a + 1.0) / 2)


def test_prediction_is_restricted_to_the_category_parts():
    mask = part_mask([[0, 1], [2, 3]], 4)
    logits = torch.tensor([[[0.0, 1.0, 9.0, 0.0]], [[5.0, 0.0, 1.0, 2.0]]])  # arg-max outside the category
    assert restricted_prediction(logits, torch.tensor([0, 1]), mask).tolist() == [[1], [3]]
    with pytest.raises(ValueError, match="category 1"):
        part_mask([[0], [7]], 4)


class Oracle(torch.nn.Module):
    """Logits that put the true part first, or ``part`` everywhere when given."""

    def __init__(self, num_parts: int, part: int | None = None):
        super().__init__()
        self.num_parts, self.part, self.scale = num_parts, part, torch.nn.Parameter(torch.ones(()))

    def forward(self, batch):
        target = batch["seg"] if self.part is None else torch.full_like(batch["seg"], self.part)
        return {"logits": torch.nn.functional.one_hot(target, self.num_parts).float() * self.scale}


def test_evaluation_over_a_dataset_matches_the_constant_baseline():
    data = SyntheticParts(num_samples=10, num_points=128, split="test")
    perfect = evaluate_part_segmentation(Oracle(data.num_parts), data, batch_size=4)
    assert perfect["instance_miou"] == 1.0 and perfect["class_miou"] == 1.0 and perfect["accuracy"] == 1.0
    assert perfect["num_shapes"] == 10 and set(perfect["per_category"]) == set(data.categories)
    parts = most_frequent_parts(data)
    assert [parts[c].item() in data.category_parts[c] for c in range(5)] == [True] * 5
    constant = constant_part_scores(data, parts)
    assert 0.0 < constant["instance_miou"] < 0.6
    # a model answering part 0 everywhere: restricted to the category, lamps get part 0 and the others their first
    # part, so it equals the constant baseline of each category's first part
    firsts = torch.tensor([p[0] for p in data.category_parts])
    assert evaluate_part_segmentation(Oracle(data.num_parts, part=0), data)["instance_miou"] == pytest.approx(
        constant_part_scores(data, firsts)["instance_miou"])
    with pytest.raises(ValueError, match="predicts 12 parts"):
        evaluate_part_segmentation(Oracle(12, part=0), data)
    with pytest.raises(ValueError, match="no evaluation protocol 'vote'"):
        evaluate_part_segmentation(Oracle(data.num_parts), data, protocol="vote")


def test_feature_propagation_interpolates_by_inverse_distance():
    centers = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 5, 0], [9, 9, 9]]])
    features = torch.tensor([[[1.0], [3.0], [100.0], [7.0]]])
    points = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0]]])
    out = interpolate_features(points, centers, features)
    assert out[0, 0, 0] == pytest.approx(1.0, abs=1e-5)  # on a center: its own feature
    w = torch.tensor([1 / 0.25, 1 / 0.25, 1 / (0.25 + 25)])  # 3 nearest: 0, 1, 2 at squared distances
    assert out[0, 1, 0] == pytest.approx(((w * torch.tensor([1.0, 3.0, 100.0])).sum() / w.sum()).item(), rel=1e-5)


def test_segmenter_shapes_gradients_and_block_features():
    assert default_feature_blocks(12) == [3, 7, 11] and default_feature_blocks(1) == [0, 0, 0]
    torch.manual_seed(0)
    model = PointPartSegmenter(num_parts=13, num_categories=5, **TINY).train()
    batch = {"points": torch.randn(3, 96, 3), "label": torch.tensor([0, 4, 2]), "seg": torch.randint(0, 13, (3, 96))}
    out = model(batch)
    assert out["logits"].shape == (3, 96, 13) and out["loss"].ndim == 0 and 0 <= out["acc"] <= 1
    out["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    model.eval()
    assert "loss" not in model({"points": batch["points"], "label": batch["label"]})
    encoder = model.encoder  # block_outputs at the last block is the encoder's output
    x, pos = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    assert torch.allclose(encoder.block_outputs(x, pos, [1])[0], encoder(x, pos), atol=1e-6)
    with pytest.raises(ValueError, match="unused"):
        PointPartSegmenter(**{**TINY, "depth": 4}, feature_blocks=[0, 1, 2])


def test_segmenter_loads_a_point_mae_encoder():
    dims = {k: TINY[k] for k in ("num_groups", "group_size", "embed_dim", "depth", "num_heads")}
    pretrainer = PointMAE(**dims, decoder_depth=1, decoder_num_heads=2)
    model = PointPartSegmenter(num_parts=13, num_categories=5, **TINY)
    model.load_encoder_from_pretrainer(pretrainer.state_dict())
    for name, value in pretrainer.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name
    with pytest.raises(ValueError, match="do not fit"):
        PointPartSegmenter(**{**TINY, "depth": 3}).load_encoder_from_pretrainer(pretrainer.state_dict())
    with pytest.raises(ValueError, match="no 'encoder"):
        model.load_encoder_from_pretrainer({"head.weight": torch.zeros(1)})


def test_finetune_tool_scores_part_segmentation_by_miou(tmp_path):
    import finetune

    dims = {k: TINY[k] for k in ("num_groups", "group_size", "embed_dim", "depth", "num_heads")}
    checkpoint = tmp_path / "pretrain.pth"
    save_checkpoint(checkpoint, {"model": PointMAE(**dims, decoder_depth=1, decoder_num_heads=2).state_dict()})
    tiny = [f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY.items()]
    sizes = ["data.train.num_samples=20", "data.val.num_samples=10", "data.train.num_points=96",
             "data.val.num_points=96", "train.epochs=1", "train.batch_size=5", "train.log_interval=1"]
    config = str(REPO / "configs" / "point_mae" / "shapenetpart_demo.yaml")
    with pytest.raises(ConfigError, match="scored by plain only"):
        finetune.main([config, "--work-dir", str(tmp_path / "bad"), *tiny, *sizes, "--protocol", "vote"])
    result = finetune.main([config, "--pretrained", str(checkpoint), "--work-dir", str(tmp_path / "run"),
                            *tiny, *sizes])
    written = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert written == json.loads(json.dumps(result))
    for weights in ("last", "best"):
        scores = written[weights]["plain"]
        assert 0 <= scores["instance_miou"] <= 1 and 0 <= scores["class_miou"] <= 1 and scores["num_shapes"] == 10


def test_evaluation_on_the_shapenetpart_layout(shapenetpart):
    test = ShapeNetPart(shapenetpart, split="test", num_points=32, seed=0)
    perfect = evaluate_part_segmentation(Oracle(test.num_parts), test, batch_size=2)
    assert perfect["class_miou"] == 1.0 and set(perfect["per_category"]) == {"Airplane", "Bag", "Mug"}
    parts = most_frequent_parts(ShapeNetPart(shapenetpart, split="trainval", num_points=32, seed=0))
    constant = constant_part_scores(test, parts)
    assert 0.0 < constant["instance_miou"] < 0.5 and constant["num_shapes"] == 3
