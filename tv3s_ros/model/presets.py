"""Model presets: YAML files in the top-level ``model/`` folder -> validated ``ModelConfig``.

A preset YAML lists ``ModelConfig`` fields (see ``tv3s_ros/model/config.py``). ``class_names`` and
``palette`` may be omitted: they then come from the dataset tables below (the official VSPW and
Cityscapes lists), or are generated when the class count does not match a known dataset.
A YAML may start from another preset with ``base: <preset name or path>``.

Preset folders searched, first match wins: ``$TV3S_MODEL_DIR``, the source tree's ``model/``,
and ``share/tv3s_ros/model`` of an installed ROS package.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import yaml

from .backbones import backbone_names
from .config import ModelConfig
from .palette import generated_palette

# Official class tables (utils/datasets/cityscapes.py and vspw.py of Ashesham/TV3S: VSPW drops
# the "others" label 0, reduce_zero_label=True, so class i here is VSPW label i+1).
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# VSPW (124 classes), in label order; palette = the official VSPWDataset2.PALETTE.
VSPW_CLASSES = (
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide",
    "handrail_or_fence", "window", "rail", "goal", "pillar", "pole", "floor", "ground", "grass",
    "sand", "athletic_field", "road", "path", "crosswalk", "building", "house", "bridge", "tower",
    "windmill", "well_or_well_lid", "other_construction", "sky", "mountain", "stone", "wood", "ice",
    "snowfield", "grandstand", "sea", "river", "lake", "waterfall", "water",
    "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag", "parasol_or_umbrella",
    "cushion_or_carpet", "tent", "roadblock", "car", "bus", "truck", "bicycle", "motorcycle",
    "wheeled_machine", "ship_or_boat", "raft", "airplane", "tyre", "traffic_light", "lamp",
    "person", "cat", "dog", "horse", "cattle", "other_animal", "tree", "flower", "other_plant",
    "toy", "ball_net", "backboard", "skateboard", "bat", "ball",
    "cupboard_or_showcase_or_storage_rack", "box", "traveling_case_or_trolley_case", "basket",
    "bag_or_package", "trash_can", "cage", "plate", "tub_or_bowl_or_pot", "bottle_or_cup", "barrel",
    "fishbowl", "bed", "pillow", "table_or_desk", "chair_or_seat", "bench", "sofa", "shelf",
    "bathtub", "gun", "commode", "roaster", "other_machine", "refrigerator", "washing_machine",
    "Microwave_oven", "fan", "curtain", "textiles", "clothes", "painting_or_poster", "mirror",
    "flower_pot_or_vase", "clock", "book", "tool", "blackboard", "tissue", "screen_or_television",
    "computer", "printer", "Mobile_phone", "keyboard", "other_electronic_product", "fruit", "food",
    "instrument", "train",
)
VSPW_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255,
    51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255), (8, 255, 214), (7,
    255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8,
    255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6,
    51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15), (20,
    255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0),
    (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61,
    255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255,
    0), (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0),
    (255, 0, 20), (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255,
    194), (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0,
    255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255,
    0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0,
    184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184,
    160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143),
    (0, 255, 235), (133, 255, 0),
)


DATASETS: Dict[str, Tuple[Tuple[str, ...], Tuple[Tuple[int, int, int], ...]]] = {
    "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    "vspw": (VSPW_CLASSES, VSPW_PALETTE),
}

PresetError = ValueError  # errors are ValueErrors with a message naming the field and the fix


# ----------------------------------------------------------------------------------------------
# Where presets live


def preset_dirs() -> List[Path]:
    """Folders searched for ``<name>.yaml`` presets, in priority order (existing ones only)."""
    dirs = []
    if os.environ.get("TV3S_MODEL_DIR"):
        dirs.append(Path(os.environ["TV3S_MODEL_DIR"]))
    dirs.append(Path(__file__).resolve().parents[2] / "model")  # source tree / editable install
    try:  # installed ROS package: share/tv3s_ros/model
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("tv3s_ros")) / "model")
    except Exception:  # noqa: BLE001 - not a ROS install, or package not found: nothing to add
        pass
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def list_presets() -> List[str]:
    """Names of all available presets (YAML stems), sorted."""
    return sorted({p.stem for d in preset_dirs() for p in d.glob("*.yaml")})


def preset_path(name_or_path: Union[str, os.PathLike]) -> Path:
    """Resolve a preset name or a YAML path to an existing file (``FileNotFoundError`` if none)."""
    text = str(name_or_path)
    as_path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        if as_path.is_file():
            return as_path
        raise FileNotFoundError(f"preset file not found: {as_path}")
    for d in preset_dirs():
        candidate = d / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"unknown preset {text!r}; available: {', '.join(list_presets()) or '(none found)'}"
        f" (searched {', '.join(str(d) for d in preset_dirs())}; or pass a YAML path)")


# ----------------------------------------------------------------------------------------------
# Field validation: one rule per ModelConfig field, each returns the normalised value


def _int(minimum: int) -> Callable[[str, Any], int]:
    def check(field: str, value: Any) -> int:
        # bool is an int subclass in Python; reject it so "window: true" is not read as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise PresetError(f"{field} must be an integer, got {value!r}")
        if value < minimum:
            raise PresetError(f"{field} must be >= {minimum}, got {value}")
        return value
    return check


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PresetError(f"{field} must be true or false, got {value!r}")
    return value


def _str(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise PresetError(f"{field} must be a non-empty string, got {value!r}")
    return value


def _backbone(field: str, value: Any) -> str:
    names = backbone_names()
    if value not in names:
        raise PresetError(f"{field} must be one of {', '.join(names)}, got {value!r}")
    return value


def _floats3(positive: bool) -> Callable[[str, Any], Tuple[float, float, float]]:
    def check(field: str, value: Any) -> Tuple[float, float, float]:
        try:
            out = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise PresetError(f"{field} must be 3 numbers (R, G, B), got {value!r}") from None
        if len(out) != 3 or (positive and min(out) <= 0):
            raise PresetError(f"{field} must be 3 {'positive ' if positive else ''}numbers (R, G, B), got {value!r}")
        return out
    return check


def _test_scale(field: str, value: Any) -> Tuple[int, int]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise PresetError(f"{field} must be [long_side, short_side], got {value!r}")
    return tuple(_int(1)(field, v) for v in value)


def _size_divisor(field: str, value: Any) -> Optional[int]:
    return None if value is None else _int(1)(field, value)


def _weights(field: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise PresetError(f"{field} must be a checkpoint path (relative to the preset's folder) or null, got {value!r}")
    return value


def _class_names(field: str, value: Any) -> List[str]:
    if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
        raise PresetError(f"{field} must be a list of strings")
    return list(value)


def _palette(field: str, value: Any) -> List[List[int]]:
    out = []
    for color in value:
        if (isinstance(color, (str, bytes)) or len(color) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
            raise PresetError(f"{field} entries must be [r, g, b] integers in 0..255, got {color!r}")
        out.append([int(c) for c in color])
    return out


FIELD_RULES: Dict[str, Callable[[str, Any], Any]] = {
    "name": _str,
    "backbone": _backbone,
    "dataset": _str,
    "num_classes": _int(1),
    "embed_dim": _int(1),
    "window": _int(2),
    "shift": _int(1),
    "real_shift": _bool,
    "n_mambas": _int(1),
    "d_state": _int(1),
    "d_conv": _int(1),
    "expand": _int(1),
    "head_channels": _int(1),
    "city_head": _bool,
    "mean": _floats3(positive=False),
    "std": _floats3(positive=True),
    "test_scale": _test_scale,
    "size_divisor": _size_divisor,
    "class_names": _class_names,
    "palette": _palette,
    "weights": _weights,
}


def config_field_names() -> List[str]:
    """The valid override / YAML keys (ModelConfig field names)."""
    return [f.name for f in dataclasses.fields(ModelConfig)]


def _check_keys(keys, where: str) -> None:
    valid = config_field_names()
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise PresetError(f"unknown {where} {', '.join(map(repr, unknown))}; valid names: {', '.join(valid)}")


# ----------------------------------------------------------------------------------------------
# Class names and palettes


def default_classes(dataset: str, num_classes: int) -> Tuple[List[str], List[List[int]]]:
    """Class names and palette for a dataset; generic ones when the class count does not fit it."""
    table = DATASETS.get(dataset.lower())
    if table is not None and len(table[0]) == num_classes:
        return list(table[0]), [list(c) for c in table[1]]
    return [f"class_{i}" for i in range(num_classes)], generated_palette(num_classes)


# ----------------------------------------------------------------------------------------------
# Loading


def _read_yaml(path: Path, chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Read a preset YAML, resolving ``base:`` (relative paths are relative to the file)."""
    if path.resolve() in chain:
        raise PresetError(f"'base' cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    with open(path, "r", encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise PresetError(f"{path}: a preset must be a YAML mapping of ModelConfig fields")
    base = data.pop("base", None)
    _check_keys(data, f"key(s) in {path}")
    # Shipped weights are relative to the YAML that names them, so a preset works from the
    # source tree, an install's share/tv3s_ros/model and $TV3S_MODEL_DIR alike.
    if isinstance(data.get("weights"), str) and data["weights"].strip():
        data["weights"] = os.path.normpath(path.parent / Path(data["weights"]).expanduser())
    if base is None:
        return data
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    base_path = base_path if base_path.is_file() else preset_path(base)
    merged = _read_yaml(base_path, chain + (path.resolve(),))
    merged.pop("name", None)  # a derived preset is not its base: it gets its own name or file stem
    merged.update(data)
    return merged


def load_config(name_or_path: Union[str, os.PathLike], **overrides: Any) -> ModelConfig:
    """Build a validated ``ModelConfig`` from a preset name or YAML path plus field overrides.

    Example: ``load_config("tv3s_b1_cityscapes", backbone="mit_b0", embed_dim=64)``.
    Unknown override names and invalid values raise ``ValueError`` naming the valid choices.
    When ``num_classes`` changes and no ``class_names``/``palette`` are given, generic ones are
    generated (``class_0``... and a deterministic palette).
    """
    path = preset_path(name_or_path)
    values = _read_yaml(path)
    values.setdefault("name", path.stem)
    _check_keys(overrides, "override(s)")
    values.update(overrides)
    return config_from_dict(values)


def config_from_dict(values: Dict[str, Any]) -> ModelConfig:
    """Validate a dict of ModelConfig fields (missing ones take the dataclass defaults)."""
    _check_keys(values, "field(s)")
    clean = {k: FIELD_RULES[k](k, v) if k in FIELD_RULES else v for k, v in values.items()}
    cfg = ModelConfig(**{k: v for k, v in clean.items() if k not in ("class_names", "palette")})
    names, palette = default_classes(cfg.dataset, cfg.num_classes)
    cfg.class_names = clean.get("class_names") or names
    cfg.palette = clean.get("palette") or palette
    validate_config(cfg)
    return cfg


def shipped_weights(name_or_path: Union[str, os.PathLike, ModelConfig],
                    overrides: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The checkpoint a preset ships (its ``weights`` field), or None when it ships none.

    ``FileNotFoundError`` when the preset names a file that is not there (a broken install).
    """
    cfg = name_or_path if isinstance(name_or_path, ModelConfig) else load_config(name_or_path, **dict(overrides or {}))
    if not cfg.weights:
        return None
    if not os.path.isfile(cfg.weights):
        raise FileNotFoundError(f"preset {cfg.name} ships weights {cfg.weights}, but the file is missing "
                                "(a source checkout without it, or an incomplete install); pass weights explicitly")
    return cfg.weights


def validate_config(cfg: ModelConfig) -> ModelConfig:
    """Cross-field checks (single-field checks happen in ``config_from_dict``)."""
    if not 0 < cfg.shift < cfg.window:
        raise PresetError(f"shift must satisfy 0 < shift < window (window={cfg.window}), got {cfg.shift}")
    if len(cfg.class_names) != cfg.num_classes:
        raise PresetError(f"class_names has {len(cfg.class_names)} entries but num_classes={cfg.num_classes}; "
                          "pass matching class_names (or omit them to get generic names)")
    if len(cfg.palette) != cfg.num_classes:
        raise PresetError(f"palette has {len(cfg.palette)} entries but num_classes={cfg.num_classes}; "
                          "pass a matching palette (or omit it to get a generated one)")
    return cfg
