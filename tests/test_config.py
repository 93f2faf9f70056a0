"""Configs: _base_ inheritance, _delete_, overrides, schema errors that name the dotted key."""
from __future__ import annotations

from pathlib import Path

import pytest

from pcmae.engine.config import TrainConfig, dump_config, load_config, parse_value, validate_config
from pcmae.registry import ConfigError, Registry


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def three_levels(tmp_path):
    """grand.yaml <- bases/parent.yaml <- child.yaml (child names its base relative to itself)."""
    write(tmp_path, "bases/grand.yaml", """
model: {type: Net, width: 8, depth: 2, act: relu}
data:
  train: {type: Cubes, num_samples: 100, jitter: 0.1}
  val: {type: Cubes, num_samples: 10}
train: {epochs: 10, lr: 1.0e-3, batch_size: 4}
""")
    write(tmp_path, "bases/parent.yaml", """
_base_: grand.yaml
model: {width: 16}
train: {epochs: 20, warmup_epochs: 2}
""")
    return write(tmp_path, "child.yaml", """
_base_: [bases/parent.yaml]
model: {depth: 3}
data:
  train: {_delete_: true, type: Spheres, radius: 2}
train: {lr: 5e-4}
""")


def test_two_level_base_is_deep_merged_child_wins(three_levels):
    cfg = load_config(three_levels)
    assert cfg["model"] == {"type": "Net", "width": 16, "depth": 3, "act": "relu"}
    assert cfg["train"] == {"epochs": 20, "lr": 5e-4, "batch_size": 4, "warmup_epochs": 2}
    assert isinstance(cfg["train"]["lr"], float)  # '5e-4' without a dot is a float, not a string
    # _delete_ replaced data.train instead of merging into it; data.val still comes from grand.yaml
    assert cfg["data"] == {"train": {"type": "Spheres", "radius": 2}, "val": {"type": "Cubes", "num_samples": 10}}


def test_later_base_in_a_list_wins(tmp_path):
    write(tmp_path, "a.yaml", "model: {type: A, k: 1}\ndata: {train: {type: D}}\ntrain: {epochs: 1}\n")
    write(tmp_path, "b.yaml", "model: {type: B}\n")
    cfg = load_config(write(tmp_path, "c.yaml", "_base_: [a.yaml, b.yaml]\n"))
    assert cfg["model"] == {"type": "B", "k": 1}


def test_overrides_parse_yaml_types(three_levels):
    cfg = load_config(three_levels, ["train.lr=1e-4", "train.epochs=7", "train.grad_clip=null",
                                     "train.betas=[0.9, 0.95]", "train.deterministic=true",
                                     "model.act=gelu", "data.val.num_samples=3", "data.train.radius=2.5"])
    train = cfg["train"]
    assert train["lr"] == 1e-4 and isinstance(train["lr"], float)
    assert train["epochs"] == 7 and isinstance(train["epochs"], int)
    assert train["grad_clip"] is None and train["deterministic"] is True
    assert train["betas"] == [0.9, 0.95]
    assert cfg["model"]["act"] == "gelu" and cfg["data"]["val"]["num_samples"] == 3
    assert cfg["data"]["train"]["radius"] == 2.5
    tc = TrainConfig.from_dict(train)
    assert tc.betas == (0.9, 0.95) and tc.epochs == 7 and tc.warmup_epochs == 2.0


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("3.5") == 3.5 and parse_value("-2e3") == -2000.0
    assert parse_value("abc") == "abc" and parse_value("") is None and parse_value("[1, 2]") == [1, 2]


@pytest.mark.parametrize("extra, key, suggestion", [
    ("trian: {epochs: 1}\n", "trian", "train"),
    ("train: {epochs: 1, lrr: 0.1}\n", "train.lrr", "lr"),
    ("train: {epochs: 1, warmup_epoch: 1}\n", "train.warmup_epoch", "warmup_epochs"),
    ("data: {train: {type: D}, vall: {type: D}}\n", "data.vall", "val"),
    ("probe: {train: {type: D}, tests: {type: D}}\n", "probe.tests", "test"),
])
def test_unknown_key_names_dotted_key_and_closest(tmp_path, extra, key, suggestion):
    base = "model: {type: Net}\ndata: {train: {type: D}}\ntrain: {epochs: 1}\n"
    path = write(tmp_path, "bad.yaml", f"_base_: base.yaml\n{extra}")
    write(tmp_path, "base.yaml", base)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"'{key}'" in message and f"'{suggestion}'" in message and "bad.yaml" in message


@pytest.mark.parametrize("override, key, suggestion", [
    ("trainn.lr=1", "trainn", "train"),
    ("train.lrr=1e-4", "train.lrr", "lr"),
    ("train.max_step=3", "train.max_step", "max_steps"),
    ("data.trian.type=D", "data.trian", "train"),
])
def test_unknown_override_path_is_named(three_levels, override, key, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(three_levels, [override])
    assert f"'{key}'" in str(err.value) and f"'{suggestion}'" in str(err.value)


def test_bad_overrides_and_values(three_levels):
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(three_levels, ["train.lr"])
    with pytest.raises(ConfigError, match="'model.width' is a int, not a section"):
        load_config(three_levels, ["model.width.x=1"])
    with pytest.raises(ConfigError, match="'train.lr.x'"):
        load_config(three_levels, ["train.lr.x=1"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 'ten'"):
        load_config(three_levels, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match=r"train\.amp: must be 'none', 'bf16' or 'fp16'"):
        load_config(three_levels, ["train.amp=fp8"])
    with pytest.raises(ConfigError, match=r"train\.betas: expected a list of 2 numbers"):
        load_config(three_levels, ["train.betas=[0.9]"])
    # one ConfigError line each, where a traceback came before
    with pytest.raises(ConfigError, match=r"override train\.betas=\[0\.9,: not valid YAML"):
        load_config(three_levels, ["train.betas=[0.9,"])
    for bad in ("train.lr=.inf", "train.lr=.nan", "train.betas=[0.9, .inf]", "train.grad_clip=.inf"):
        with pytest.raises(ConfigError, match=rf"train\.{bad.split('.')[1].split('=')[0]}: must be finite"):
            load_config(three_levels, [bad])


def test_missing_and_cyclic_bases(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nowhere.yaml"):
        load_config(write(tmp_path, "a.yaml", "_base_: nowhere.yaml\n"))
    write(tmp_path, "x.yaml", "_base_: y.yaml\n")
    write(tmp_path, "y.yaml", "_base_: x.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle: .*x.yaml -> .*y.yaml -> .*x.yaml"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="missing section 'train'"):
        load_config(write(tmp_path, "z.yaml", "model: {type: N}\ndata: {train: {type: D}}\n"))
    with pytest.raises(ConfigError, match="missing the key 'data.train.type'"):
        load_config(write(tmp_path, "w.yaml", "model: {type: N}\ndata: {train: {n: 1}}\ntrain: {}\n"))


def test_validate_against_registries_checks_kwargs_without_building():
    models, datasets = Registry("model"), Registry("dataset")
    built = []

    @models.register
    class Net:
        def __init__(self, width: int = 8, mask_ratio: float = 0.6):
            built.append(self)

    @datasets.register
    def Cubes(num_samples: int = 10, split: str = "train"):
        built.append("dataset")

    cfg = {"model": {"type": "Net", "width": 4}, "data": {"train": {"type": "Cubes", "num_samples": 3}},
           "train": {"epochs": 1}}
    validate_config(cfg, models, datasets)
    assert built == []
    cfg["model"]["mask_raito"] = 0.5
    with pytest.raises(ConfigError, match=r"'model\.mask_raito' \(did you mean 'mask_ratio'\?\)"):
        validate_config(cfg, models, datasets)
    del cfg["model"]["mask_raito"]
    cfg["data"]["val"] = {"type": "Cubes", "splt": "val"}
    with pytest.raises(ConfigError, match=r"'data\.val\.splt' \(did you mean 'split'\?\)"):
        validate_config(cfg, models, datasets)
    cfg["data"]["val"] = {"type": "Cubez"}
    with pytest.raises(ConfigError, match=r"data\.val\.type: unknown dataset type 'Cubez' \(did you mean 'Cubes'"):
        validate_config(cfg, models, datasets)


def test_dump_config_round_trips(three_levels, tmp_path):
    cfg = load_config(three_levels, ["train.betas=[0.9, 0.95]"])
    out = dump_config(cfg, tmp_path / "work" / "config.yaml")
    assert load_config(out) == cfg
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_repository_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    paths = sorted(p for p in root.rglob("*.yaml") if "_base_" not in p.parts)
    assert paths
    for path in paths:
        cfg = load_config(path)
        TrainConfig.from_dict(cfg["train"])
