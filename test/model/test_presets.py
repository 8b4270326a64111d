"""Presets: the 12 YAML files, override validation, class tables."""
from __future__ import annotations

import dataclasses

import pytest

from tv3s_ros.model import ModelConfig, list_presets, load_config
from tv3s_ros.model.presets import (
    CITYSCAPES_CLASSES,
    FIELD_RULES,
    VSPW_CLASSES,
    VSPW_PALETTE,
    config_field_names,
    generated_palette,
)

ALL = [f"tv3s_b{b}_{ds}" for b in range(6) for ds in ("vspw", "cityscapes")]


def test_all_twelve_presets_listed():
    assert set(ALL) <= set(list_presets())


@pytest.mark.parametrize("name", ALL)
def test_preset_values(name):
    cfg = load_config(name)
    b = name.split("_")[1]
    assert cfg.name == name
    assert cfg.backbone == f"mit_{b}"
    assert (cfg.embed_dim, cfg.window, cfg.shift, cfg.real_shift, cfg.n_mambas) == (256, 20, 10, True, 8)
    assert (cfg.d_state, cfg.d_conv, cfg.expand, cfg.head_channels) == (16, 4, 2, 128)
    assert cfg.mean == (123.675, 116.28, 103.53) and cfg.std == (58.395, 57.12, 57.375)
    if name.endswith("vspw"):
        assert (cfg.dataset, cfg.num_classes, cfg.city_head) == ("vspw", 124, False)
        assert cfg.test_scale == (853, 480) and cfg.size_divisor == 32
    else:
        assert (cfg.dataset, cfg.num_classes, cfg.city_head) == ("cityscapes", 19, True)
        assert cfg.test_scale == (1024, 512) and cfg.size_divisor is None
    assert len(cfg.class_names) == len(cfg.palette) == cfg.num_classes


def test_official_class_tables():
    cfg = load_config("tv3s_b1_cityscapes")
    assert cfg.class_names[:3] == ["road", "sidewalk", "building"] and cfg.class_names[-1] == "bicycle"
    assert cfg.palette[0] == [128, 64, 128] and cfg.palette[-1] == [119, 11, 32]
    assert len(CITYSCAPES_CLASSES) == 19
    # VSPW: 124 classes after dropping "others" (label 0); spot checks against the official table.
    assert len(VSPW_CLASSES) == len(VSPW_PALETTE) == 124
    assert VSPW_CLASSES[0] == "wall" and VSPW_CLASSES[60] == "person" and VSPW_CLASSES[-1] == "train"
    assert VSPW_PALETTE[0] == (120, 120, 120) and VSPW_PALETTE[-1] == (133, 255, 0)
    assert load_config("tv3s_b2_vspw").class_names == list(VSPW_CLASSES)


def test_overrides_applied_and_validated():
    cfg = load_config("tv3s_b1_cityscapes", backbone="mit_b0", embed_dim=32, window=4, shift=2,
                      n_mambas=2, d_state=4, d_conv=3, expand=1, num_classes=5)
    assert (cfg.backbone, cfg.embed_dim, cfg.window, cfg.shift, cfg.n_mambas) == ("mit_b0", 32, 4, 2, 2)
    assert (cfg.d_state, cfg.d_conv, cfg.expand) == (4, 3, 1)
    # Class count changed without names: generic names and a deterministic palette.
    assert cfg.class_names == [f"class_{i}" for i in range(5)]
    assert cfg.palette == generated_palette(5) == load_config("tv3s_b1_vspw", num_classes=5).palette
    assert len({tuple(c) for c in generated_palette(50)}) == 50


def test_unknown_override_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_config("tv3s_b1_cityscapes", embed_dims=64)
    msg = str(err.value)
    assert "'embed_dims'" in msg and "embed_dim" in msg and "n_mambas" in msg


@pytest.mark.parametrize("override,fragment", [
    (dict(backbone="mit_b9"), "backbone must be one of"),
    (dict(num_classes=0), "num_classes must be >= 1"),
    (dict(embed_dim=2.5), "embed_dim must be an integer"),
    (dict(window=True), "window must be an integer"),
    (dict(shift=20), "0 < shift < window"),
    (dict(real_shift="yes"), "real_shift must be true or false"),
    (dict(std=(1.0, 0.0, 1.0)), "std must be 3 positive"),
    (dict(test_scale=(1024,)), "test_scale must be"),
    (dict(class_names=["a", "b"]), "class_names has 2 entries"),
    (dict(palette=[[0, 0, 300]] * 19), "0..255"),
])
def test_invalid_values_rejected(override, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        load_config("tv3s_b1_cityscapes", **override)


def test_every_config_field_has_a_rule():
    assert set(config_field_names()) == {f.name for f in dataclasses.fields(ModelConfig)} == set(FIELD_RULES)


def test_yaml_path_with_base_and_custom_classes(tmp_path):
    path = tmp_path / "my_robot.yaml"
    path.write_text("base: tv3s_b1_cityscapes\nnum_classes: 2\nclass_names: [floor, obstacle]\n"
                    "palette: [[0, 0, 0], [255, 0, 0]]\n")
    cfg = load_config(str(path), n_mambas=2)
    assert cfg.name == "my_robot"
    assert cfg.class_names == ["floor", "obstacle"] and cfg.palette == [[0, 0, 0], [255, 0, 0]]
    assert cfg.backbone == "mit_b1" and cfg.n_mambas == 2


def test_unknown_yaml_key_and_unknown_preset(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: mit_b0\nwindows: 3\n")
    with pytest.raises(ValueError, match="'windows'"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="tv3s_b1_cityscapes"):
        load_config("tv3s_b7_kitti")


def test_weights_field_is_relative_to_the_yaml_and_validated(tmp_path):
    from tv3s_ros.model.presets import shipped_weights

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "m.pth").write_bytes(b"x")
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text("base: tv3s_b0_cityscapes\nweights: w/m.pth\n")
    cfg = load_config(str(yaml_path))
    assert cfg.weights == str(tmp_path / "w" / "m.pth")
    assert shipped_weights(cfg) == cfg.weights
    # A derived preset inherits the file of its base, resolved against the base's folder.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../mine.yaml\n")
    assert load_config(str(tmp_path / "sub" / "child.yaml")).weights == cfg.weights
    (tmp_path / "w" / "m.pth").unlink()
    with pytest.raises(FileNotFoundError, match="ships weights"):
        shipped_weights(cfg)
    for bad in ("weights: 3\n", "weights: ''\n", "weights: [a]\n"):
        yaml_path.write_text("base: tv3s_b0_cityscapes\n" + bad)
        with pytest.raises(ValueError, match="weights"):
            load_config(str(yaml_path))
    assert load_config("tv3s_b0_cityscapes").weights is None
