"""Test-time adaptation on streams: protocols, methods, safety, stream sources, the LiDAR stream."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from pcmae.engine.build import build_model
from pcmae.registry import ConfigError
from pcmae.tta import (StreamAdapter, StreamSample, TTAConfig, dataset_source, files_source, folder_source,
                       run_stream)

TINY = dict(num_groups=8, group_size=8, embed_dim=16, depth=1, num_heads=2, drop_path_rate=0.0)


def classifier(kind="PointClassifier", seed=0):
    torch.manual_seed(seed)
    extra = {"decoder_depth": 1, "decoder_num_heads": 2} if kind == "MATE" else {}
    return build_model({"type": kind, "num_classes": 4, **TINY, **extra}).eval()


def clouds(n=4, points=128, seed=0):
    g = np.random.default_rng(seed)
    return [g.normal(size=(points, 3)).astype(np.float32) * (1 + i) for i in range(n)]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def run(model, samples, **cfg):
    adapter = StreamAdapter(model, TTAConfig.from_dict({"num_points": 64, "copies": 4, "lr": 1e-2, **cfg}))
    return adapter, [adapter(x, label=0) for x in samples]


def test_standard_protocol_restores_the_source_weights_before_every_sample():
    xs = clouds(3)
    model = classifier()
    source = state(model)
    adapter, records = run(model, xs, method="tent", protocol="standard")
    assert not same(source, state(model))  # it adapted (on the last sample)
    alone = run(classifier(), [xs[2]], method="tent", protocol="standard")[1][0]
    assert records[2]["pred"] == alone["pred"] and records[2]["loss"] == pytest.approx(alone["loss"], rel=1e-6)
    adapter.reset()
    assert same(source, state(model))


def test_online_keeps_the_weights_and_stride_skips_samples():
    xs = clouds(4)
    after_one = state(run(classifier(), xs[:1], method="tent", protocol="online")[0].model)
    model = classifier()
    _, records = run(model, xs[:2], method="tent", protocol="online")
    assert not same(after_one, state(model))  # the second sample moved the weights further
    alone = run(classifier(), [xs[1]], method="tent", protocol="online")[1][0]
    assert records[1]["loss"] != alone["loss"]  # what came before matters (standard: equal, tested above)

    model = classifier()
    adapter = StreamAdapter(model, TTAConfig.from_dict({"method": "tent", "protocol": "stride", "stride": 2,
                                                        "num_points": 64, "copies": 4, "lr": 1e-2}))
    flags, states = [], []
    for x in xs:
        flags.append(adapter(x)["adapted"])
        states.append(state(model))
    assert flags == [True, False, True, False]
    assert same(states[0], states[1]) and not same(states[1], states[2]) and same(states[2], states[3])


def test_source_and_bn_take_no_step_but_bn_uses_the_samples_statistics():
    x = clouds(1)[0] * 5 + 3
    model = classifier()
    source = state(model)
    source_pred = run(model, [x], method="source")[1][0]
    assert same(source, state(model))
    model = classifier()
    bn = StreamAdapter(model, TTAConfig.from_dict({"method": "bn", "num_points": 64}))
    assert bn.params == [] and bn.optimizer is None
    assert not any(p.requires_grad for p in model.parameters())
    bn(x)
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if "running" not in k)
    logits = {}
    for method in ("source", "bn"):
        adapter = StreamAdapter(classifier(), TTAConfig.from_dict({"method": method, "num_points": 64, "seed": 1}))
        adapter._modes(adapting=False)
        points = torch.as_tensor(x)[:64].unsqueeze(0)
        logits[method] = adapter.model.classify(points)
    assert not torch.allclose(logits["source"], logits["bn"])
    assert source_pred["adapted"] is False


def running_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoder.") and "running_mean" in k}


def test_stream_bn_statistics_fold_each_adaptation_batch_into_the_running_ones_and_predict_with_them():
    xs = [x * 4 + 2 for x in clouds(2)]
    model = classifier("MATE")
    source = running_stats(model)
    adapter = StreamAdapter(model, TTAConfig.from_dict({"method": "mate", "protocol": "online", "num_points": 64,
                                                        "copies": 4, "lr": 1e-12, "bn_momentum": 0.5}))
    assert adapter.bn_stats == "stream"  # MATE's default
    adapter(xs[0])
    after_one = running_stats(model)
    for key, value in after_one.items():  # half source, half the copies' batch statistics
        assert not torch.allclose(value, source[key])
    adapter(xs[1])
    assert not all(torch.equal(after_one[k], v) for k, v in running_stats(model).items())  # the stream's average
    adapter._modes(adapting=False)
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert bns and not any(bn.training for bn in bns)  # prediction reads the running statistics
    adapter.reset()
    assert all(torch.equal(v, source[k]) for k, v in running_stats(model).items())

    results = {}
    for protocol in ("standard", "online"):  # standard restores the source statistics before each sample
        m = classifier("MATE")
        a = StreamAdapter(m, TTAConfig.from_dict({"method": "mate", "protocol": protocol, "num_points": 64,
                                                  "copies": 4, "lr": 1e-12}))
        a(xs[0])
        a(xs[1])
        results[protocol] = running_stats(m)
    assert not all(torch.allclose(results["standard"][k], v) for k, v in results["online"].items())
    bn_only = classifier()
    weights = state(bn_only)
    adapter = StreamAdapter(bn_only, TTAConfig.from_dict({"method": "bn", "bn_stats": "stream", "num_points": 64,
                                                          "copies": 4}))
    assert adapter(xs[0])["adapted"] and adapter.optimizer is None
    assert not all(torch.equal(v, weights[k]) for k, v in running_stats(bn_only).items())
    assert all(torch.equal(v, weights[k]) for k, v in bn_only.state_dict().items() if "running" not in k
               and "num_batches" not in k)
    norms_only = classifier("MATE")
    adapter = StreamAdapter(norms_only, TTAConfig.from_dict({"method": "mate", "adapt": "norms", "num_points": 64,
                                                             "copies": 4, "lr": 1e-2}))
    trainable = {n for n, p in norms_only.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.") and ("norm" in n or "patch_embed" in n) for n in trainable)
    before = state(norms_only)
    adapter(xs[0])
    changed = {k for k, v in norms_only.state_dict().items() if not torch.equal(v, before[k]) and "running" not in k
               and "num_batches" not in k}
    assert changed and changed <= trainable
    with pytest.raises(ConfigError, match="'tta.adapt' must be one of encoder, norms, patch_embed"):
        TTAConfig.from_dict({"adapt": "head"})
    with pytest.raises(ConfigError, match="tta.bn_stats"):
        TTAConfig.from_dict({"bn_stats": True})
    with pytest.raises(ConfigError, match="tta.bn_momentum"):
        TTAConfig.from_dict({"bn_momentum": 0})


def test_bad_samples_are_reported_and_skipped_and_the_stream_goes_on(tmp_path):
    good = tmp_path / "a.npy"
    np.save(good, clouds(1)[0])
    broken = tmp_path / "b.ply"
    broken.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 99999999\n")
    nan = clouds(1)[0]
    nan[3] = np.nan
    samples = [*files_source([good, broken]), StreamSample("nan", nan), StreamSample("empty", np.zeros((0, 3))),
               StreamSample("good again", clouds(1)[0], label=1)]
    logged = []
    adapter = StreamAdapter(classifier(), TTAConfig.from_dict({"method": "tent", "num_points": 64, "copies": 2}))
    records = list(run_stream(adapter, samples, logged.append))
    assert [("skipped" in r) for r in records] == [False, True, True, True, False]
    assert "b.ply" in logged[0] and "NaN" in logged[1] and "0 points" in logged[2]
    assert records[-1]["label"] == 1 and records[-1]["index"] == 1


def test_drift_resets_to_the_source_weights():
    model = classifier()
    source = state(model)
    adapter, records = run(model, clouds(6), method="tent", protocol="online", drift_warmup=1, drift_patience=1,
                           drift_factor=1e-6)  # any later loss is "above": reset at sample 1
    assert records[1]["reset"] and adapter.resets >= 1
    last_reset = max(i for i, r in enumerate(records) if r["reset"])
    if last_reset == len(records) - 1:
        assert same(source, state(model))


def test_collapse_watch_resets_when_the_adapted_predictions_collapse_against_the_source_models():
    from pcmae.tta.adapter import class_entropy

    assert class_entropy([3, 3, 3]) == 0.0 and class_entropy([0, 1]) == pytest.approx(np.log(2))
    xs = clouds(8)
    model = classifier()
    adapter = StreamAdapter(model, TTAConfig.from_dict({"method": "tent", "protocol": "online", "num_points": 64,
                                                        "copies": 2, "lr": 1e-6, "collapse_window": 4}))
    sources = [int(adapter.source_model.classify(torch.as_tensor(x)[:64].unsqueeze(0)).argmax()) for x in xs[:4]]
    assert adapter.source_model is not None and not adapter.source_model.training
    with torch.no_grad():  # a collapsed head: the last layer answers class 3 whatever the features
        last = model.head.mlp[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 9.0]))
    if class_entropy(sources) == 0:
        pytest.skip("the random source model itself answers one class on these clouds")
    records = [adapter(x) for x in xs[:4]]
    assert [r["pred"] for r in records] == [3, 3, 3, 3]
    assert [r["reset_reason"] for r in records] == [None, None, None, "collapse"] and adapter.resets == 1
    key = next(k for k, p in model.named_parameters() if p is model.head.mlp[-1].bias)
    assert torch.equal(model.head.mlp[-1].bias, adapter.source_state[key])  # the source weights are back

    one_class = classifier()  # a stream that is one class for the source model too: no reset
    adapter = StreamAdapter(one_class, TTAConfig.from_dict({"method": "tent", "protocol": "online",
                                                            "num_points": 64, "copies": 2, "lr": 1e-6,
                                                            "collapse_window": 3}))
    for m in (one_class, adapter.source_model):
        with torch.no_grad():
            m.head.mlp[-1].weight.zero_()
            m.head.mlp[-1].bias.copy_(torch.tensor([0.0, 9.0, 0.0, 0.0]))
    assert not any(adapter(x)["reset"] for x in xs[:5])
    assert StreamAdapter(classifier(), TTAConfig.from_dict({"method": "tent", "protocol": "standard",
                                                            "num_points": 64})).source_model is None
    with pytest.raises(ConfigError, match="tta.collapse_ratio"):
        TTAConfig.from_dict({"collapse_ratio": 1.5})


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'tta.protocol' must be one of standard, online, stride"):
        TTAConfig.from_dict({"protocol": "sometimes"})
    with pytest.raises(ConfigError, match="unknown key 'tta.stepz'"):
        TTAConfig.from_dict({"stepz": 2})
    with pytest.raises(ConfigError, match="'tta.copies' must be an int >= 1"):
        TTAConfig.from_dict({"copies": 0})
    with pytest.raises(TypeError, match="tta.method 'mate' needs a joint model"):
        StreamAdapter(classifier(), TTAConfig.from_dict({"method": "mate"}))


def test_folder_source_picks_up_files_as_they_are_written(tmp_path):
    np.save(tmp_path / "000.npy", clouds(1)[0])

    def writer():
        for i in (1, 2):
            time.sleep(0.3)
            np.save(tmp_path / f"{i:03d}.npy", clouds(1, seed=i)[0])

    thread = threading.Thread(target=writer)
    thread.start()
    names = [s.name.rsplit("/", 1)[-1] for s in folder_source(tmp_path, timeout_s=1.0, poll_s=0.05)]
    thread.join()
    assert names == ["000.npy", "001.npy", "002.npy"]
    (tmp_path / "STOP").touch()
    assert list(folder_source(tmp_path, timeout_s=5.0)) == []  # the stop file ends it at once


def test_dataset_source_gives_labels():
    from pcmae.data import SyntheticObjects

    data = SyntheticObjects(num_samples=3, num_points=256)
    samples = list(dataset_source(data, limit=2))
    assert len(samples) == 2 and samples[1].label == int(data[1]["label"])


def test_lidar_stream_scores_each_sweep_before_adapting_on_it():
    from pcmae.data import SimulatedLidarSweeps
    from pcmae.tta.lidar import source_and_adapted

    torch.manual_seed(0)
    grid = dict(voxel_size=[0.8, 0.8, 0.4], point_cloud_range=[-20.0, -20.0, -3.0, 20.0, 20.0, 5.0])
    model = build_model({"type": "VoxelMAE", "point_channels": 5, **grid, "num_pred_points": 4,
                         "tokenizer": {"type": "pointnet", "embed_dim": 16, "hidden_dim": 16},
                         "backbone": {"type": "transformer", "embed_dim": 16, "depth": 1, "num_heads": 2,
                                      "patch_size": 16, "decoder_dim": 16, "decoder_depth": 1,
                                      "decoder_num_heads": 2}}).eval()
    before = state(model)
    sweeps = SimulatedLidarSweeps(num_frames=3, beams="hdl32", azimuth_resolution=2.0)
    result = source_and_adapted(model, sweeps, grid["point_cloud_range"], steps=1, lr=1e-2, seeds=(0,))
    assert same(before, state(model))  # the source model is left as it was
    source, adapted = result["source"], result["adapted"]
    assert [r["loss"] for r in source["per_sweep"]] == [None] * 3
    assert all(r["loss"] > 0 for r in adapted["per_sweep"])
    assert source["num_queries"] == adapted["num_queries"]  # the same masks and queries
    first, later = adapted["per_sweep"][0], adapted["per_sweep"][1:]
    assert first["f1"] == source["per_sweep"][0]["f1"] and first["auroc"] == source["per_sweep"][0]["auroc"]
    assert any(a["auroc"] != s["auroc"] for a, s in zip(later, source["per_sweep"][1:]))
    again = source_and_adapted(model, sweeps, grid["point_cloud_range"], steps=1, lr=1e-2, seeds=(0,))["adapted"]
    assert again["pooled"] == adapted["pooled"]  # the adaptation's masks come from the seed, not the global RNG


def tiny_mate_run(tmp_path, val_samples=12):
    """A tiny MATE config + checkpoint for tools/tta.py."""
    import yaml

    from pcmae.engine.checkpoint import save_checkpoint

    model_cfg = {"type": "MATE", "num_classes": 8, **TINY, "decoder_depth": 1, "decoder_num_heads": 2}
    cfg = {"model": model_cfg,
           "data": {"train": {"type": "SyntheticObjects", "num_samples": 8, "num_points": 256},
                    "val": {"type": "SyntheticObjects", "num_samples": val_samples, "num_points": 256,
                            "split": "val"}},
           "train": {"epochs": 1}, "tta": {"method": "mate", "protocol": "online", "copies": 2, "num_points": 64}}
    config = tmp_path / "mate_tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    checkpoint = tmp_path / "mate.pth"
    save_checkpoint(checkpoint, {"model": classifier("MATE").__class__(**{k: v for k, v in model_cfg.items()
                                                                         if k != "type"}).state_dict(),
                                 "config": cfg, "epoch": 1})
    return config, checkpoint


def test_tta_tool_adapts_along_a_stream_whose_corruption_changes(tmp_path):
    from tools.tta import main

    config, checkpoint = tiny_mate_run(tmp_path)
    work = tmp_path / "work"
    result = main([str(config), "--checkpoint", str(checkpoint), "--corruption", "gaussian,shear,cutout",
                   "--limit", "2", "--work-dir", str(work)])
    assert result["samples"] == 6 and result["skipped"] == 0 and 0 <= result["accuracy"] <= 1
    import json

    records = [json.loads(line) for line in (work / "tta" / "metrics.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == [f"{c}[{i}]" for c, i in zip(
        ["gaussian"] * 2 + ["shear"] * 2 + ["cutout"] * 2, range(6))]  # new objects for each corruption
    assert all(r["adapted"] and r["loss"] > 0 for r in records)
    assert (work / "tta" / "accuracy.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="data.val.num_samples >= 15"):
        main([str(config), "--checkpoint", str(checkpoint), "--corruption", "gaussian,shear,cutout",
              "--limit", "5", "--work-dir", str(work)])
    with pytest.raises(SystemExit, match="need --limit"):
        main([str(config), "--checkpoint", str(checkpoint), "--corruption", "gaussian,shear",
              "--work-dir", str(work)])
    table = main([str(config), "--checkpoint", str(checkpoint), "--table", "--corruption", "gaussian", "--limit", "1",
                  "--work-dir", str(work)])
    assert list(table) == ["gaussian"] and table["gaussian"]["source-only"]["samples"] == 1
    aligned = main([str(config), "--checkpoint", str(checkpoint), "--alignment", "--corruption", "gaussian,shear",
                    "--limit", "2", "--work-dir", str(work)])
    assert list(aligned) == ["gaussian", "shear"] and aligned["shear"]["samples"] == 2
    assert -1 <= aligned["gaussian"]["gradient"] <= 1 and (work / "tta" / "alignment.json").is_file()
    assert set(table["gaussian"]) == {"source-only", "BN-adapt", "BN-stream", "TENT", "MATE-standard", "MATE-online",
                                      "MATE-online stride 4"}


def test_gradient_alignment_is_one_for_the_supervised_loss_and_leaves_the_weights_alone():
    import torch.nn.functional as F

    from pcmae.tta.alignment import gradient_alignment

    model = classifier("MATE")
    points = torch.as_tensor(clouds(1, points=64)[0])

    class Supervised:  # a "self-supervised" loss that is the true label's cross-entropy itself
        def loss(self, model, copies, generator):
            return F.cross_entropy(model.classify(copies[:1]), torch.tensor([2]))

    params = list(model.encoder.parameters())
    same_label = gradient_alignment(model, Supervised(), params, points, 2, copies=3)
    assert same_label["gradient"] == pytest.approx(1.0, abs=1e-3)
    assert 0 < same_label["adam_step"] < 0.99  # sign(g) . g / (|sign(g)| |g|) = |g|_1 / (sqrt(n) |g|_2)
    assert gradient_alignment(model, Supervised(), params, points, 1, copies=3)["gradient"] < 0.99

    before = state(model)
    adapter = StreamAdapter(model, TTAConfig.from_dict({"method": "mate", "num_points": 64, "copies": 4}))
    cosine = adapter.alignment(clouds(1)[0], 1)
    assert all(-1.0 <= c <= 1.0 and c != 0.0 for c in cosine.values())
    assert same(before, state(model))  # the source weights and statistics, untouched
    with pytest.raises(ValueError, match="takes no gradient step"):
        StreamAdapter(classifier(), TTAConfig.from_dict({"method": "bn", "num_points": 64})).alignment(
            clouds(1)[0], 0)


def test_the_real_modelnet_meshes_stream_through_adaptation(tmp_path):
    """The 8 real ModelNet meshes (configs/mate/modelnet_meshes_stream.yaml's data.val) as a corrupted stream."""
    import yaml

    from pcmae.engine.build import load_checked_config
    from pcmae.engine.checkpoint import save_checkpoint
    from tests.shared_data import shared_data_path
    from tools.tta import main

    cfg = load_checked_config("configs/mate/modelnet_meshes_stream.yaml", [])
    zips = [shared_data_path("flux3d", "test", "assets", f"ModelNet{n}.zip") for n in (40, 10)]
    assert [str(z).split("shared/")[-1] for z in zips] == [p.split("shared/")[-1] for p in cfg["data"]["val"]["paths"]]
    cfg["data"]["val"].update(paths=[str(z) for z in zips], num_points=256)
    cfg["model"].update(TINY, decoder_depth=1, decoder_num_heads=2)
    cfg["tta"] = {"method": "mate", "protocol": "online", "copies": 2, "num_points": 64}
    config = tmp_path / "meshes.yaml"
    config.write_text(yaml.safe_dump(cfg))
    model = build_model(cfg["model"])
    save_checkpoint(tmp_path / "mate.pth", {"model": model.state_dict(), "config": cfg, "epoch": 1})
    result = main([str(config), "--checkpoint", str(tmp_path / "mate.pth"), "--corruption", "occlusion,gaussian",
                   "--limit", "4", "--work-dir", str(tmp_path / "work")])
    assert result["samples"] == 8 and result["skipped"] == 0 and result["accuracy"] is not None
