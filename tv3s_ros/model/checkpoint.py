"""Checkpoint loading and saving in the official mmcv layout.

Official TV3S checkpoints are mmcv files ``{'meta': {'CLASSES', 'PALETTE', ...}, 'state_dict': ...}``
whose keys already match our module names, so no key mapping is done (only a ``module.``
prefix from DataParallel is stripped when every key has it). Files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary code.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

PathLike = Union[str, os.PathLike]
# torch.load(weights_only=True) can be bypassed to run code before 2.6 (CVE-2025-32434).
MIN_TORCH = (2, 6)
Shape = Tuple[int, ...]
_LIST_HEAD = 10  # how many keys of each kind an error message shows


@dataclasses.dataclass
class CheckpointMeta:
    """What a checkpoint says about itself (with the model's preset as fallback)."""

    class_names: List[str]
    palette: List[List[int]]
    preset: Optional[str]          # preset recorded in the file, else the model's config name
    source: str                    # path the weights were read from
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)  # other meta entries
    # Only non-empty with strict=False: what was not loaded.
    missing_keys: List[str] = dataclasses.field(default_factory=list)
    unexpected_keys: List[str] = dataclasses.field(default_factory=list)
    mismatched_keys: List[str] = dataclasses.field(default_factory=list)


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys/shapes do not match the model (message lists the differences)."""

    def __init__(self, message: str, missing: Sequence[str], unexpected: Sequence[str],
                 mismatched: Sequence[str], fitting_presets: Sequence[str]):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.fitting_presets = list(fitting_presets)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file needs full pickle loading (arbitrary code); refused unless ``allow_pickle=True``."""


# ----------------------------------------------------------------------------------------------
# Reading


def check_torch_version(version: Optional[str] = None) -> None:
    """Refuse a torch older than MIN_TORCH: its weights_only loader is not a safety boundary."""
    text = str(version if version is not None else torch.__version__)
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_TORCH:
        raise RuntimeError(
            f"torch {text} is too old: tv3s_ros needs torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}, whose "
            "torch.load(weights_only=True) cannot be bypassed to run code from a checkpoint "
            "(CVE-2025-32434); upgrade PyTorch (./setup.sh --force, or pip install 'torch>=2.6')")


def read_checkpoint(path: PathLike, allow_pickle: bool = False, map_location: Any = "cpu") -> Any:
    """The raw object of a checkpoint file (``torch.load(weights_only=True)`` unless
    ``allow_pickle``): for tools that edit checkpoints (export, calibrate, ``--init``).
    ``FileNotFoundError`` names the README; ``UnsafeCheckpointError`` explains the opt-in."""
    check_torch_version()
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Download the official TV3S checkpoint and put it in "
            "model/weights/ (see model/README.md for the file names and presets).")
    if allow_pickle:  # the caller's explicit opt-in: full unpickling, which can run code
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path} contains Python objects that torch.load(weights_only=True) refuses to unpickle "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__}). Loading it would run "
            "code from the file. tv3s_node and tv3s-bag load safe files only. If you trust its "
            "origin (trusted files only), convert it once in Python: "
            "m = tv3s_ros.model.build_model('<preset>'); "
            f"tv3s_ros.model.load_checkpoint(m, '{path}', allow_pickle=True); "
            "tv3s_ros.model.save_checkpoint(m, '<safe copy>.pth'), then use the safe copy.") from err


def split_checkpoint(obj: Any, source: str = "<checkpoint>") -> Tuple[Dict[str, Any], "OrderedDict[str, torch.Tensor]"]:
    """Return ``(meta, state_dict)`` from an mmcv-style dict or a bare state dict."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a dict checkpoint, got {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), Mapping):
        meta, state = obj.get("meta") or {}, obj["state_dict"]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        meta, state = {}, obj
    else:
        raise ValueError(f"{source}: unrecognised checkpoint layout (top-level keys: "
                         f"{', '.join(map(str, list(obj)[:_LIST_HEAD]))}); expected {{'meta', 'state_dict'}} "
                         "or a bare state dict")
    if not isinstance(meta, Mapping):
        meta = {}
    keys = list(state)
    # DataParallel / DDP wrappers prefix every key; strip only when all keys agree, never partially.
    if keys and all(k.startswith("module.") for k in keys):
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    return dict(meta), OrderedDict(state)


# ----------------------------------------------------------------------------------------------
# Comparing key/shape lists


def key_shapes(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, Shape]":
    """Key -> shape for a state dict (works on meta-device tensors)."""
    return OrderedDict((k, tuple(v.shape)) for k, v in state.items())


def compare_key_shapes(expected: Mapping[str, Shape],
                       got: Mapping[str, Shape]) -> Tuple[List[str], List[str], List[str]]:
    """(missing, unexpected, mismatched) keys of ``got`` relative to ``expected``."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [k for k in expected if k in got and tuple(expected[k]) != tuple(got[k])]
    return missing, unexpected, mismatched


@functools.lru_cache(maxsize=None)
def preset_key_shapes(preset: str, **overrides: Any) -> "OrderedDict[str, Shape]":
    """Expected state-dict keys/shapes of a preset, built on the meta device (no memory, no RNG)."""
    from .presets import load_config
    from .tv3s import TV3S

    cfg = load_config(preset, **overrides)
    with torch.device("meta"):
        model = TV3S(cfg)
    return key_shapes(model.state_dict())


def fitting_presets(got: Mapping[str, Shape]) -> Tuple[List[str], str]:
    """Presets whose keys/shapes equal ``got``; second item: a hint when none fits exactly."""
    from .presets import list_presets

    exact, scored, errors = [], [], []
    for name in list_presets():
        try:
            expected = preset_key_shapes(name)
        except Exception as err:  # noqa: BLE001 - a preset we cannot build must not hide the real error
            errors.append(f"{name}: {err}")
            continue
        diff = sum(map(len, compare_key_shapes(expected, got)))
        (exact.append(name) if diff == 0 else scored.append((diff, name)))
    if exact:
        return exact, ""
    # Same layout with another class count (fine-tuned on a custom dataset)?
    classes = got.get("decode_head.linear_pred2.weight")
    if classes:
        for _, name in sorted(scored)[:3]:
            try:
                if not sum(map(len, compare_key_shapes(preset_key_shapes(name, num_classes=classes[0]), got))):
                    return [], f"no preset fits as is; {name} with num_classes={classes[0]} does"
            except Exception:  # noqa: BLE001 - a preset that cannot be built just does not fit
                continue
    if scored:
        diff, name = min(scored)
        return [], f"no preset fits; closest is {name} ({diff} differing keys)"
    return [], "no preset could be built to compare" + (f" ({errors[0]})" if errors else "")


def _format_keys(title: str, keys: Sequence[str], detail=None) -> str:
    if not keys:
        return f"{title}: 0"
    shown = [detail(k) if detail else k for k in keys[:_LIST_HEAD]]
    more = f"\n    ... and {len(keys) - _LIST_HEAD} more" if len(keys) > _LIST_HEAD else ""
    return f"{title}: {len(keys)}\n    " + "\n    ".join(shown) + more


def mismatch_message(source: str, expected: Mapping[str, Shape], got: Mapping[str, Shape],
                     model_preset: Optional[str]) -> Tuple[str, List[str], List[str], List[str], List[str]]:
    """Human-readable description of a key/shape mismatch plus the lists it was built from."""
    missing, unexpected, mismatched = compare_key_shapes(expected, got)
    fits, hint = fitting_presets(got)
    lines = [f"checkpoint {source} does not match the model"
             + (f" (preset {model_preset})" if model_preset else ""),
             _format_keys("missing keys (in the model, not in the checkpoint)", missing),
             _format_keys("unexpected keys (in the checkpoint, not in the model)", unexpected),
             _format_keys("wrongly shaped keys", mismatched,
                          lambda k: f"{k}: checkpoint {got[k]} vs model {expected[k]}")]
    if fits:
        lines.append(f"the checkpoint fits preset(s): {', '.join(fits)} -> build_model('{fits[0]}')")
    elif hint:
        lines.append(hint)
    return "\n".join(lines), missing, unexpected, mismatched, fits


# ----------------------------------------------------------------------------------------------
# Public API


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True, allow_pickle: bool = False,
                    map_location: Any = "cpu") -> CheckpointMeta:
    """Load an official (mmcv) or bare checkpoint into ``model``; return its metadata.

    ``strict=True`` (default): keys and shapes must match exactly, else ``CheckpointMismatchError``
    listing missing / unexpected / wrongly shaped keys and the preset(s) the file fits.
    ``strict=False``: loads what matches; the rest is reported in the returned meta.
    ``allow_pickle=True`` is the explicit opt-in for legacy files that need full unpickling.
    Class names and palette come from the file's meta, else from the model's config.
    """
    source = str(path)
    meta, state = split_checkpoint(read_checkpoint(path, allow_pickle, map_location), source)
    cfg = getattr(model, "cfg", None)
    model_state = model.state_dict()
    expected, got = key_shapes(model_state), key_shapes(state)
    missing, unexpected, mismatched = compare_key_shapes(expected, got)
    if strict and (missing or unexpected or mismatched):
        message, missing, unexpected, mismatched, fits = mismatch_message(
            source, expected, got, getattr(cfg, "name", None))
        raise CheckpointMismatchError(message, missing, unexpected, mismatched, fits)
    bad = set(mismatched) | set(unexpected)
    loadable = OrderedDict((k, v) for k, v in state.items() if k not in bad)
    model.load_state_dict(loadable, strict=strict)
    if not strict and (missing or unexpected or mismatched):
        warnings.warn(f"{source}: loaded non-strictly: {len(missing)} missing, {len(unexpected)} unexpected, "
                      f"{len(mismatched)} wrongly shaped keys left out")
    names, palette = _classes_from_meta(meta, cfg, source)
    extra = {k: v for k, v in meta.items() if k not in ("CLASSES", "PALETTE", "preset")}
    return CheckpointMeta(class_names=names, palette=palette,
                          preset=meta.get("preset") or getattr(cfg, "name", None), source=source,
                          extra=extra, missing_keys=missing, unexpected_keys=unexpected,
                          mismatched_keys=mismatched)


def _classes_from_meta(meta: Mapping[str, Any], cfg: Any, source: str) -> Tuple[List[str], List[List[int]]]:
    num_classes = getattr(cfg, "num_classes", None)
    names = meta.get("CLASSES")
    palette = meta.get("PALETTE")
    if names is not None and num_classes is not None and len(names) != num_classes:
        warnings.warn(f"{source}: meta CLASSES has {len(names)} names for a {num_classes}-class model; "
                      "using the preset's class names and palette")
        names = palette = None
    if palette is not None and (names is None or len(palette) != len(names)):
        palette = None
    names = [str(n) for n in names] if names is not None else list(getattr(cfg, "class_names", []) or [])
    if palette is not None:
        palette = [[int(c) for c in color] for color in palette]
    else:
        palette = [list(c) for c in getattr(cfg, "palette", []) or []]
    return names, palette


def save_checkpoint(model: nn.Module, path: PathLike,
                    meta: Union[Mapping[str, Any], CheckpointMeta, None] = None) -> Path:
    """Write ``model`` in the mmcv layout ``{'meta': {'CLASSES', 'PALETTE', 'preset', ...}, 'state_dict'}``.

    Class names/palette/preset default to the model's config; ``meta`` (a dict, possibly with
    ``class_names``/``palette``/``preset`` or mmcv's ``CLASSES``/``PALETTE``, or a ``CheckpointMeta``)
    overrides them and adds entries. Only plain types are stored, so ``weights_only`` loading works.
    The file is written atomically (temporary file, then rename).
    """
    cfg = getattr(model, "cfg", None)
    out: Dict[str, Any] = {
        "CLASSES": tuple(getattr(cfg, "class_names", ()) or ()),
        "PALETTE": [list(c) for c in getattr(cfg, "palette", ()) or ()],
        "preset": getattr(cfg, "name", None),
    }
    if cfg is not None and dataclasses.is_dataclass(cfg):
        out["tv3s_config"] = dataclasses.asdict(cfg)
    if isinstance(meta, CheckpointMeta):
        meta = dict(meta.extra, class_names=meta.class_names, palette=meta.palette, preset=meta.preset)
    for key, value in (meta or {}).items():
        key = {"class_names": "CLASSES", "palette": "PALETTE"}.get(key, key)
        if key == "CLASSES":
            value = tuple(str(n) for n in value)
        elif key == "PALETTE":
            value = [[int(c) for c in color] for color in value]
        out[key] = value
    state = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"meta": out, "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path
