"""Class colours: the generated palette for models that ship none, and completing a given one.

One generator for presets, checkpoints and post-processing, so a model without a palette
looks the same in the node, the bag tool and the demo.
"""
from __future__ import annotations

import colorsys
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["MAX_CLASSES", "generated_palette", "default_palette", "make_palette"]

MAX_CLASSES = 65535  # ClassCoverage.class_ids is uint16, labels at most mono16


def generated_palette(num_classes: int) -> List[List[int]]:
    """Deterministic, well-spread colours (golden-ratio hue steps); no RNG involved."""
    colors = []
    for i in range(num_classes):
        hue = (i * 0.6180339887498949) % 1.0
        sat, val = (0.65, 0.95) if i % 2 == 0 else (0.9, 0.75)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append([int(round(r * 255)), int(round(g * 255)), int(round(b * 255))])
    return colors


def default_palette(num_classes: int) -> np.ndarray:
    """:func:`generated_palette` as a ``[K, 3] uint8`` array."""
    return np.asarray(generated_palette(int(num_classes)), dtype=np.uint8).reshape(-1, 3)


def make_palette(palette: Optional[Sequence[Sequence[int]]], num_classes: int) -> np.ndarray:
    """A ``[num_classes, 3] uint8`` palette from a list of RGB triplets (or None).

    Missing entries (no palette, or fewer colours than classes) are filled from
    :func:`default_palette`; extra entries are ignored.
    """
    num_classes = int(num_classes)
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    out = default_palette(num_classes)
    if palette is None or len(palette) == 0:
        return out
    given = np.asarray(palette, dtype=np.int64)
    if given.ndim != 2 or given.shape[1] != 3:
        raise ValueError(f"palette must be a list of [R, G, B] triplets, got shape {given.shape}")
    if given.min() < 0 or given.max() > 255:
        raise ValueError("palette values must be in 0..255")
    n = min(len(given), num_classes)
    out[:n] = given[:n].astype(np.uint8)
    return out
