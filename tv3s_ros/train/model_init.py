"""Starting points of a training run: from scratch, from a checkpoint, or from a checkpoint
with a new class list (re-initialised classifiers, everything else loaded strictly)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from tv3s_ros.model import build_model
from tv3s_ros.model.checkpoint import (
    CheckpointMismatchError,
    compare_key_shapes,
    key_shapes,
    mismatch_message,
    read_checkpoint,
    split_checkpoint,
)
from tv3s_ros.model.presets import config_from_dict, generated_palette, load_config

__all__ = ["CLASSIFIER_PREFIXES", "read_class_list", "build_training_model", "model_from_config"]

# Layers whose shape depends on the class count (official TV3SHead names).
CLASSIFIER_PREFIXES = ("decode_head.conv_seg.", "decode_head.linear_pred.", "decode_head.linear_pred2.")


def read_class_list(value: Union[str, Sequence[str]]) -> List[str]:
    """Class names from a comma-separated string, a text file (one name per line) or a JSON list."""
    if not isinstance(value, str):
        names = [str(v) for v in value]
    elif Path(value).expanduser().is_file():
        text = Path(value).expanduser().read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            names = [str(v) for v in json.loads(text)]
        else:
            names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--classes {value!r}: no class names")
    if len(set(names)) != len(names):
        raise ValueError(f"--classes: duplicate class names in {names}")
    return names


def _checkpoint_config(meta: Dict[str, Any], state) -> Dict[str, Any]:
    """Config fields the checkpoint dictates: its class count (and names, when consistent)."""
    out: Dict[str, Any] = {}
    weight = state.get("decode_head.linear_pred2.weight")
    if weight is not None:
        out["num_classes"] = int(weight.shape[0])
        names = meta.get("CLASSES")
        if names is not None and len(names) == out["num_classes"]:
            out["class_names"] = [str(n) for n in names]
            palette = meta.get("PALETTE")
            if palette is not None and len(palette) == len(names):
                out["palette"] = [[int(c) for c in p] for p in palette]
    return out


def build_training_model(preset: Union[str, os.PathLike], init: str = "scratch",
                         classes: Optional[Sequence[str]] = None, overrides: Optional[Dict[str, Any]] = None,
                         palette: Optional[List[List[int]]] = None):
    """Build the TV3S network to train; returns ``(model, description)``.

    ``init``: ``scratch`` (random init, global torch RNG) or a checkpoint path (official mmcv
    file or one of ours, read with ``weights_only``). Without ``classes`` the checkpoint is
    loaded strictly (its class count and names are used); with ``classes`` the classifier
    layers (:data:`CLASSIFIER_PREFIXES`) are freshly initialised for ``len(classes)`` classes
    and every other key must match in name and shape.
    """
    overrides = dict(overrides or {})
    if classes is not None:
        classes = list(classes)
        overrides.update(num_classes=len(classes), class_names=classes,
                         palette=palette or generated_palette(len(classes)))
    if init == "scratch":
        model = build_model(preset, **overrides)
        return model, "scratch (random init)"
    source = str(init)
    meta, state = split_checkpoint(read_checkpoint(init), source)
    if classes is None:
        for key, value in _checkpoint_config(meta, state).items():
            overrides.setdefault(key, value)
    cfg = load_config(preset, **overrides)
    model = build_model(cfg)
    expected, got = key_shapes(model.state_dict()), key_shapes(state)
    if classes is not None:
        keep = lambda k: not k.startswith(CLASSIFIER_PREFIXES)   # noqa: E731
        expected = type(expected)((k, v) for k, v in expected.items() if keep(k))
        got = type(got)((k, v) for k, v in got.items() if keep(k))
        state = {k: v for k, v in state.items() if keep(k)}
    missing, unexpected, mismatched = compare_key_shapes(expected, got)
    if missing or unexpected or mismatched:
        message, missing, unexpected, mismatched, fits = mismatch_message(source, expected, got, cfg.name)
        raise CheckpointMismatchError(message, missing, unexpected, mismatched, fits)
    result = model.load_state_dict(state, strict=classes is None)
    if classes is not None:
        stray = [k for k in result.missing_keys if not k.startswith(CLASSIFIER_PREFIXES)]
        if stray or result.unexpected_keys:   # cannot happen after the comparison above
            raise CheckpointMismatchError(f"{source}: unexpected load result {result}", stray,
                                          result.unexpected_keys, [], [])
        with torch.no_grad():   # mmseg init of the (unused) conv_seg; the others keep PyTorch's
            torch.nn.init.normal_(model.decode_head.conv_seg.weight, 0.0, 0.01)
            torch.nn.init.zeros_(model.decode_head.conv_seg.bias)
        return model, f"{source} with {len(classes)} new classes (classifiers re-initialised)"
    return model, f"{source}"


def model_from_config(values: Dict[str, Any]):
    """Rebuild the model recorded in a training checkpoint (``meta['tv3s_config']``)."""
    return build_model(config_from_dict(dict(values)))
