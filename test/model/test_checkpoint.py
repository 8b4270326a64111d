"""Checkpoints: mmcv layout round trip, strict mismatch reporting, weights_only safety, official keys."""
from __future__ import annotations

import argparse
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from tiny import tiny_overrides
from torch import nn

from tv3s_ros.model import CheckpointMismatchError, build_model, load_checkpoint, load_config, save_checkpoint

KEYS_FILE = Path(__file__).resolve().parents[1] / "data" / "tv3s_keys_b1_city.txt"
TINY = tiny_overrides(backbone="mit_b0", embed_dim=16, window=20, shift=10, d_state=4, head_channels=8)  # preset window


class Toy(nn.Module):
    """Small stand-in with a cfg attribute, for the parts that do not need TV3S."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.cfg = load_config("tv3s_b1_cityscapes", num_classes=num_classes,
                               class_names=[f"c{i}" for i in range(num_classes)],
                               palette=[[i, 2 * i, 3 * i] for i in range(num_classes)])
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, num_classes)


def _randomized(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model.bn.running_mean.normal_()
    return model


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mmcv_round_trip_with_classes_and_palette(tmp_path):
    src = _randomized(Toy())
    path = save_checkpoint(src, tmp_path / "sub" / "ckpt.pth",
                           meta={"class_names": ["floor", "wall", "door"], "iter": 160000})
    raw = torch.load(path, weights_only=True)                       # plain types only
    assert set(raw) == {"meta", "state_dict"}
    assert raw["meta"]["CLASSES"] == ("floor", "wall", "door")
    assert raw["meta"]["PALETTE"] == [[0, 0, 0], [1, 2, 3], [2, 4, 6]]
    assert raw["meta"]["preset"] == "tv3s_b1_cityscapes" and raw["meta"]["iter"] == 160000

    dst = Toy()
    meta = load_checkpoint(dst, path)
    assert _same_weights(src, dst)
    assert meta.class_names == ["floor", "wall", "door"]
    assert meta.palette == [[0, 0, 0], [1, 2, 3], [2, 4, 6]]
    assert meta.preset == "tv3s_b1_cityscapes" and meta.source == str(path)
    assert meta.extra["iter"] == 160000 and meta.extra["tv3s_config"]["num_classes"] == 3


def test_official_style_file_without_meta_falls_back_to_preset(tmp_path):
    src = _randomized(Toy())
    torch.save({"state_dict": src.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "meta": {"mmcv_version": "1.3.0", "config": "model = dict(...)", "iter": 1}}, tmp_path / "a.pth")
    meta = load_checkpoint(Toy(), tmp_path / "a.pth")
    assert meta.class_names == ["c0", "c1", "c2"] and meta.palette == [[0, 0, 0], [1, 2, 3], [2, 4, 6]]
    assert meta.extra["mmcv_version"] == "1.3.0"


def test_bare_state_dict_and_module_prefix(tmp_path):
    src = _randomized(Toy())
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    dst = Toy()
    load_checkpoint(dst, tmp_path / "bare.pth")
    assert _same_weights(src, dst)

    wrapped = OrderedDict(("module." + k, v) for k, v in src.state_dict().items())
    torch.save(wrapped, tmp_path / "dp.pth")
    dst = Toy()
    load_checkpoint(dst, tmp_path / "dp.pth")
    assert _same_weights(src, dst)

    # Only some keys prefixed: no stripping, so a strict load fails.
    partial = OrderedDict(src.state_dict())
    partial["module.head.bias"] = partial.pop("head.bias")
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match="module.head.bias"):
        load_checkpoint(Toy(), tmp_path / "partial.pth")


def test_mismatch_lists_missing_extra_and_misshaped(tmp_path):
    state = OrderedDict(_randomized(Toy()).state_dict())
    del state["conv.bias"]                                 # missing
    state["extra.weight"] = torch.zeros(2)                 # unexpected
    state["head.weight"] = torch.zeros(7, 4)               # wrong shape (model: 3 x 4)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "bad.pth")
    dst = Toy()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(dst, tmp_path / "bad.pth")
    msg = str(err.value)
    assert "missing keys (in the model, not in the checkpoint): 1" in msg and "conv.bias" in msg
    assert "unexpected keys (in the checkpoint, not in the model): 1" in msg and "extra.weight" in msg
    assert "wrongly shaped keys: 1" in msg and "head.weight: checkpoint (7, 4) vs model (3, 4)" in msg
    assert (err.value.missing, err.value.unexpected, err.value.mismatched) == (
        ["conv.bias"], ["extra.weight"], ["head.weight"])
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # untouched

    # strict=False loads the rest and reports what it left out.
    with pytest.warns(UserWarning, match="non-strictly"):
        meta = load_checkpoint(dst, tmp_path / "bad.pth", strict=False)
    assert (meta.missing_keys, meta.unexpected_keys, meta.mismatched_keys) == (
        ["conv.bias"], ["extra.weight"], ["head.weight"])
    assert torch.equal(dst.state_dict()["conv.weight"], state["conv.weight"])


def test_pickled_objects_refused_unless_allowed(tmp_path):
    src = _randomized(Toy())
    # Legacy files sometimes carry e.g. an argparse.Namespace: needs full unpickling.
    torch.save({"meta": {"args": argparse.Namespace(lr=0.1)}, "state_dict": src.state_dict()},
               tmp_path / "legacy.pth")
    with pytest.raises(pickle.UnpicklingError, match="allow_pickle=True"):
        load_checkpoint(Toy(), tmp_path / "legacy.pth")
    dst = Toy()
    meta = load_checkpoint(dst, tmp_path / "legacy.pth", allow_pickle=True)
    assert _same_weights(src, dst) and meta.extra["args"].lr == 0.1


def test_pickle_refusal_names_only_what_exists_and_its_recipe_works(tmp_path):
    """The pickle refusal once named an allow_pickle node parameter and an --allow-pickle
    flag that do not exist. It must point to the Python API, and that recipe must work."""
    from tv3s_ros.ros.params import PARAMETER_NAMES

    src = _randomized(Toy())
    torch.save({"meta": {"args": argparse.Namespace(lr=0.1)}, "state_dict": src.state_dict()},
               tmp_path / "legacy.pth")
    with pytest.raises(pickle.UnpicklingError) as info:
        load_checkpoint(Toy(), tmp_path / "legacy.pth")
    text = str(info.value)
    assert "--allow-pickle" not in text and "allow_pickle parameter" not in text
    assert "allow_pickle" not in PARAMETER_NAMES
    assert "trusted files only" in text and "save_checkpoint" in text
    # The recipe: load once with allow_pickle=True, save_checkpoint, load the copy safely.
    converted = Toy()
    load_checkpoint(converted, tmp_path / "legacy.pth", allow_pickle=True)
    save_checkpoint(converted, tmp_path / "safe.pth")
    dst = Toy()
    load_checkpoint(dst, tmp_path / "safe.pth")
    assert _same_weights(src, dst)


def test_torch_older_than_2_6_is_refused():
    """weights_only loading is only a safety boundary from torch 2.6 on."""
    from tv3s_ros.model.checkpoint import check_torch_version

    for old in ("2.5.1+cu121", "2.2.0", "1.13.1"):
        with pytest.raises(RuntimeError, match="CVE-2025-32434"):
            check_torch_version(old)
    for ok in ("2.6.0", "2.13.0+cpu", "3.0.0a0"):
        check_torch_version(ok)
    check_torch_version()      # the installed one
    root = Path(__file__).resolve().parents[2]
    assert '"torch>=2.6"' in (root / "setup.py").read_text()
    assert 'version_gte="2.6">python3-torch-pip' in (root / "package.xml").read_text()


def test_missing_file_points_to_readme(tmp_path):
    with pytest.raises(FileNotFoundError, match="model/README.md"):
        load_checkpoint(Toy(), tmp_path / "nope.pth")


def test_unrecognised_layout(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        load_checkpoint(Toy(), tmp_path / "odd.pth")


# ----------------------------------------------------------------------------------------------
# With the real network


def test_b1_cityscapes_keys_equal_official_list():
    expected = [tuple(line.split("\t")) for line in KEYS_FILE.read_text().splitlines()
                if line and not line.startswith("#")]
    with torch.device("meta"):  # shapes only; no memory, no init work
        model = build_model("tv3s_b1_cityscapes")
    got = [(k, str(tuple(v.shape))) for k, v in model.state_dict().items()]
    assert len(expected) == 277
    assert got == expected


def test_tv3s_round_trip_and_preset_named_on_mismatch(tmp_path):
    torch.manual_seed(0)
    src = build_model("tv3s_b0_cityscapes", **TINY)
    path = save_checkpoint(src, tmp_path / "tiny.pth")
    dst = build_model("tv3s_b0_cityscapes", **TINY)
    meta = load_checkpoint(dst, path)
    assert _same_weights(src, dst) and meta.class_names[0] == "road" and len(meta.palette) == 19

    # A full-size B0 Cityscapes file loaded into a B1 model: the error names the preset that fits.
    with torch.device("meta"):
        b0 = build_model("tv3s_b0_cityscapes")
    torch.save({"meta": {}, "state_dict": {k: torch.zeros(v.shape) for k, v in b0.state_dict().items()}},
               tmp_path / "b0.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(src, tmp_path / "b0.pth")
    assert "fits preset(s): tv3s_b0_cityscapes" in str(err.value)
    assert err.value.fitting_presets == ["tv3s_b0_cityscapes"]

    # Same layout with another class count: the hint says which override makes it fit.
    state = {k: torch.zeros(v.shape) for k, v in b0.state_dict().items()}
    for key in ("conv_seg.weight", "conv_seg.bias", "linear_pred.weight", "linear_pred.bias",
                "linear_pred2.weight", "linear_pred2.bias"):
        shape = list(state["decode_head." + key].shape)
        state["decode_head." + key] = torch.zeros([7] + shape[1:])
    torch.save(state, tmp_path / "b0_7.pth")
    with pytest.raises(CheckpointMismatchError, match="tv3s_b0_cityscapes with num_classes=7 does"):
        load_checkpoint(src, tmp_path / "b0_7.pth")


def test_export_fp16_loads_strictly_into_fp32_model(tmp_path):
    """tv3s_ros.train.export: optimizer and RNG state dropped, fp16 floats, meta kept; the fp32
    model loads it strictly and gives the logits of the fp16-rounded weights."""
    from tv3s_ros.train.export import export_checkpoint
    from tv3s_ros.train.export import main as export_main

    torch.manual_seed(0)
    model = build_model("tv3s_b0_cityscapes", **tiny_overrides())
    src = tmp_path / "iter_5.pth"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"meta": {"CLASSES": tuple(model.cfg.class_names), "PALETTE": model.cfg.palette, "iter": 5,
                         "preset": "tv3s_b0_cityscapes", "tv3s_train": {"seed": 0, "rng": {"torch": torch.get_rng_state()}}},
                "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, src)
    out = export_checkpoint(src, tmp_path / "small.pth", fp16=True, trained_with="tv3s-train x")
    obj = torch.load(out, weights_only=True)
    assert set(obj) == {"meta", "state_dict"}
    assert obj["meta"]["trained_with"] == "tv3s-train x" and obj["meta"]["iter"] == 5
    assert "rng" not in obj["meta"]["tv3s_train"] and obj["meta"]["tv3s_train"]["seed"] == 0
    assert all(v.dtype == torch.float16 for v in obj["state_dict"].values() if v.is_floating_point())
    assert out.stat().st_size < src.stat().st_size
    fresh = build_model("tv3s_b0_cityscapes", **tiny_overrides())
    meta = load_checkpoint(fresh, out)                      # strict by default
    assert meta.class_names == list(model.cfg.class_names)
    assert all(p.dtype == torch.float32 for p in fresh.parameters())
    for k, v in fresh.state_dict().items():
        ref = state[k].half().float() if state[k].is_floating_point() else state[k]
        assert torch.equal(v, ref), k
    # The size limit: refused (no file left) unless --force.
    assert export_main([str(src), str(tmp_path / "big.pth"), "--fp16"]) == 0
    with pytest.raises(ValueError, match="limit"):
        export_checkpoint(src, tmp_path / "tiny_limit.pth", max_bytes=1000)
    assert not (tmp_path / "tiny_limit.pth").exists()


def test_demo_preset_ships_loadable_weights():
    from tv3s_ros.model.presets import load_config, shipped_weights

    cfg = load_config("tv3s_demo")
    assert cfg.weights and Path(cfg.weights).is_absolute() and Path(cfg.weights).parent.name == "demo"
    path = shipped_weights("tv3s_demo")
    assert path == cfg.weights and Path(path).stat().st_size < 8 * 2**20
    meta = load_checkpoint(build_model("tv3s_demo"), path)
    assert meta.extra.get("trained_with", "").startswith("tv3s-train")
    assert shipped_weights("tv3s_b0_cityscapes") is None
