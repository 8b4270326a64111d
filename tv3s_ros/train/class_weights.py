"""Per-class loss weights for cross-entropy, against class imbalance.

Road, building and sky cover most pixels of a driving scene, poles and signs a fraction of a
percent: with the plain loss the rare classes barely move the gradient. ``enet`` weights
(Paszke et al., ENet, 2016) are ``1 / ln(c + p_k)`` with ``p_k`` the class's share of the
labelled training pixels; ``c`` (default 1.02) bounds the largest weight at ``1 / ln(c)``
(about 50) and a larger ``c`` weights more gently. mmseg's ``CrossEntropyLoss(class_weight=...)``
takes the same list, so a recipe using it can be written in an official config.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from tv3s_ros.data.datasets import Video, load_label

__all__ = ["DEFAULT_ENET_C", "parse_class_weights", "label_frequencies", "enet_weights", "resolve_class_weights",
           "spec_record", "resumed_class_weights"]

DEFAULT_ENET_C = 1.02


def parse_class_weights(text: Optional[str]):
    """``none`` / ``enet`` / ``enet:C`` / ``W1,W2,...`` -> None, ("enet", C) or a list of floats.
    ``ValueError`` says what is wrong."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    text = text.strip()
    if text.lower().startswith("enet"):
        _, _, c = text.partition(":")
        value = float(c) if c else DEFAULT_ENET_C
        if not value > 1.0:
            raise ValueError(f"class weights {text!r}: the ENet constant must be above 1 (default {DEFAULT_ENET_C})")
        return ("enet", value)
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"class weights {text!r}: expected none, enet, enet:C or a comma-separated list "
                         "of numbers, one per class") from None
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ValueError(f"class weights {text!r}: weights must be finite, >= 0 and not all 0")
    return weights


def label_frequencies(videos: Sequence[Video], layout: str, num_classes: int, max_frames: int = 200) -> np.ndarray:
    """Share of each class among the labelled (non-ignored) pixels of up to ``max_frames``
    label frames spread evenly over the videos; ``[num_classes]`` summing to 1."""
    labelled = [f.label for v in videos for f in v.frames if f.label is not None]
    if not labelled:
        raise ValueError("no labelled frames to count classes in")
    picks = np.linspace(0, len(labelled) - 1, num=min(max_frames, len(labelled))).round().astype(int)
    counts = np.zeros(num_classes, dtype=np.float64)
    for i in sorted(set(picks.tolist())):
        label = load_label(labelled[i], layout)
        counts += np.bincount(label[label < num_classes].ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    if total == 0:
        raise ValueError("the label frames hold no pixel of the model's classes")
    return counts / total


def enet_weights(freq: np.ndarray, c: float = DEFAULT_ENET_C) -> List[float]:
    """``1 / ln(c + p_k)``; absent classes get the largest weight (it never multiplies a pixel)."""
    return [float(1.0 / math.log(c + p)) for p in np.asarray(freq, dtype=np.float64)]


def resolve_class_weights(spec, videos: Sequence[Video], layout: str, num_classes: int) -> Optional[List[float]]:
    """The weights a parsed ``spec`` means for this model and data (None: unweighted)."""
    if spec is None:
        return None
    if isinstance(spec, tuple) and spec[0] == "enet":
        return enet_weights(label_frequencies(videos, layout, num_classes), spec[1])
    weights = [float(w) for w in spec]
    if len(weights) != num_classes:
        raise ValueError(f"{len(weights)} class weights given for a model with {num_classes} classes")
    return weights


def spec_record(spec) -> Optional[List]:
    """What a checkpoint records of a parsed spec (read back by :func:`resumed_class_weights`):
    None, ``["enet", c]`` or ``["explicit"]`` (the explicit weights themselves are recorded anyway)."""
    if spec is None:
        return None
    return list(spec) if isinstance(spec, tuple) else ["explicit"]


def resumed_class_weights(spec, recorded: Optional[Sequence[float]], num_classes: int,
                          recorded_spec: Optional[Sequence] = None) -> Optional[List[float]]:
    """The weights a resumed run keeps: the ones its checkpoint recorded, not a recount.

    ENet weights depend on the data they were counted on, so a resume over a changed dataset
    would otherwise change the loss mid-run without a word. ``spec`` (this run's option) must
    still mean the same thing: ``enet`` (with the recorded constant, where the checkpoint has
    it) with recorded weights, or the same explicit list. ValueError when it does not.
    """
    if recorded is None:
        if spec is None:
            return None
        raise ValueError("--class-weights given, but the run being resumed trained without class weights; "
                         "resume with --class-weights none, or start a new run")
    recorded = [float(w) for w in recorded]
    if len(recorded) != num_classes:
        raise ValueError(f"the resumed checkpoint records {len(recorded)} class weights for {num_classes} classes")
    if spec is None:
        raise ValueError("the run being resumed trained with class weights; resume with the same --class-weights")
    if isinstance(spec, tuple) and spec[0] == "enet":
        if recorded_spec is not None and (recorded_spec[0] != "enet" or abs(float(recorded_spec[1]) - spec[1]) > 1e-9):
            raise ValueError(f"--class-weights enet:{spec[1]:g} differs from the resumed run's "
                             f"{_spec_text(recorded_spec)}; resume with the same option")
        return recorded
    given = [float(w) for w in spec]
    if len(given) != len(recorded) or any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(given, recorded)):
        raise ValueError("--class-weights differ from the ones the resumed run trained with; "
                         "resume with the same weights, or start a new run with --init")
    return recorded


def _spec_text(spec: Sequence) -> str:
    return f"enet:{float(spec[1]):g}" if spec and spec[0] == "enet" else "explicit weights"
