"""The outputs a frame can ask for: one table that the engine, post-processing, the node, the
bag writer and the command-line tools all read.

Adding an output kind means one row here plus the code that computes it
(:meth:`tv3s_ros.postprocess.Postprocessor.device_outputs`). Image outputs are published
(node) and written (bag) as ``sensor_msgs/Image`` in the encoding given here, and by the
node also as ``sensor_msgs/CompressedImage`` in the codec given here
(:mod:`tv3s_ros.image_encode`); coverage is the per-class ``ClassCoverage`` message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, Tuple, Union

import numpy as np

__all__ = ["Output", "OUTPUTS", "OUTPUT_NAMES", "IMAGE_OUTPUTS", "OUTPUT_RESOLUTIONS", "check_outputs",
           "check_output_resolution", "image_encoding", "label_dtype", "COMPRESSED_OUTPUTS"]


@dataclass(frozen=True)
class Output:
    """One output kind.

    Attributes:
        name: the name used everywhere (API, ``publish`` parameter, ``--outputs`` flags, topics).
        image: published/written as an image (else: the coverage message).
        encoding: the ``sensor_msgs/Image`` encoding; ``labels`` picks mono8 or mono16 by the
            class count (:func:`image_encoding`).
        description: one line for ``--help`` and the docs.
        compressed: the codec of its ``<output>/compressed`` topic (:mod:`tv3s_ros.image_encode`):
            ``png`` (lossless) for class ids and other values, ``jpeg`` for pictures; never
            ``jpeg`` for labels (lossy compression changes class ids). Empty: none.
    """

    name: str
    image: bool
    encoding: str
    description: str
    compressed: str = ""


OUTPUTS: Dict[str, Output] = {o.name: o for o in (
    Output("labels", True, "mono8", "class id per pixel (mono8; mono16 past 255 classes)", "png"),
    Output("color", True, "rgb8", "the palette colour of each pixel's class", "jpeg"),
    Output("overlay", True, "rgb8", "the input image blended with the colours", "jpeg"),
    Output("confidence", True, "mono8", "the winning class's softmax probability, 0..255", "png"),
    Output("coverage", False, "", "per-class pixel counts, fractions and mean confidence"),
)}
OUTPUT_NAMES: Tuple[str, ...] = tuple(OUTPUTS)
IMAGE_OUTPUTS: Tuple[str, ...] = tuple(name for name, o in OUTPUTS.items() if o.image)
# Image outputs that also have a <output>/compressed topic.
COMPRESSED_OUTPUTS: Tuple[str, ...] = tuple(name for name in IMAGE_OUTPUTS if OUTPUTS[name].compressed)

# Output images at the input frame's size, or at the network input size (cheaper).
OUTPUT_RESOLUTIONS = ("input", "model")


def check_outputs(outputs: Union[str, Iterable[str]], allowed: Iterable[str] = OUTPUT_NAMES) -> FrozenSet[str]:
    """``outputs`` as a frozenset, or a ValueError naming the unknown ones and the choices."""
    chosen = frozenset((outputs,) if isinstance(outputs, str) else outputs)
    allowed = tuple(allowed)
    unknown = chosen - set(allowed)
    if unknown:
        raise ValueError(f"unknown output(s) {sorted(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def check_output_resolution(resolution: str) -> str:
    if resolution not in OUTPUT_RESOLUTIONS:
        raise ValueError(f"output_resolution must be one of {OUTPUT_RESOLUTIONS}, got {resolution!r}")
    return resolution


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 while class ids fit mono8 (``num_classes <= 255``), else uint16 (mono16)."""
    return np.dtype(np.uint8) if int(num_classes) <= 255 else np.dtype(np.uint16)


def image_encoding(name: str, array: np.ndarray) -> str:
    """The image encoding of output ``name`` holding ``array`` (labels: mono8 for uint8, else mono16)."""
    if name == "labels":
        return "mono8" if array.dtype == np.uint8 else "mono16"
    return OUTPUTS[name].encoding
