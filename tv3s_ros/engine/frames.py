"""What goes into and comes out of :meth:`~tv3s_ros.engine.Engine.process`, and its errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import numpy as np

from tv3s_ros.image_codec import ImageDecodeError
from tv3s_ros.postprocess import PostprocessResult
from tv3s_ros.streams import ResetReason

__all__ = ["FrameInput", "FrameOutput", "FrameRejected", "FrameErrors", "Outputs"]

# Which outputs to compute: None (all), one name, names for every frame, or camera -> names.
Outputs = Union[None, str, Iterable[str], Mapping[str, Iterable[str]]]


class FrameRejected(ImageDecodeError):
    """A decoded frame whose geometry the model must not see (``kind`` ``bad_size``)."""


class FrameErrors(RuntimeError):
    """Some frames of a :meth:`Engine.process` call failed inside the model; the others did not.

    ``results`` holds one entry per input frame (None for a failed one), ``errors`` maps the
    index of each failed frame to its exception. The failed cameras start afresh at their
    next frame (reset reason ``error``).
    """

    def __init__(self, results, errors):
        self.results, self.errors = results, errors
        detail = "; ".join(f"frame {i}: {type(e).__name__}: {str(e)[:200]}" for i, e in sorted(errors.items()))
        super().__init__(f"{len(errors)} of {len(results)} frame(s) failed: {detail}")


@dataclass
class FrameInput:
    """One decoded camera frame.

    Attributes:
        camera: stream name; each camera has its own recurrent state.
        image: ``[H, W, 3]`` uint8 RGB (numpy, any strides; or a torch tensor).
        stamp_ns: header stamp in nanoseconds (drives the time-based resets).
        frame_id: header frame_id.
        received_s: ``time.monotonic()`` when the message arrived; latency is measured from
            it (None: from the start of :meth:`Engine.process`).
    """

    camera: str
    image: Any
    stamp_ns: int
    frame_id: str = ""
    received_s: Optional[float] = None


def _from_result(name: str, doc: str):
    return property(lambda self: getattr(self.result, name), doc=doc)


@dataclass
class FrameOutput:
    """Results for one frame: the post-processing result plus the stream's bookkeeping.

    ``result`` holds the outputs (those not requested are None); they are also readable
    here by name: ``labels`` ``[h, w]`` uint8 (uint16 past 255 classes), ``color``/``overlay``
    ``[h, w, 3]`` uint8 RGB, ``confidence`` ``[h, w]`` uint8; coverage: ``class_ids`` (uint16,
    ascending), ``pixel_count`` (uint32), ``fraction`` (float32, sums to 1),
    ``mean_confidence`` (float32, 0..1). ``width``/``height`` are the label image's size.
    ``model_time_s`` is the engine time of the batch this frame ran in, ``latency_s`` receipt
    to result. ``stage_s``: seconds per stage of that batch, ``upload_preprocess``, ``model`` and
    ``postprocess`` (see :mod:`tv3s_ros.engine.timing`; on CUDA measured with events, with CUDA
    graphs preprocessing and on-device postprocessing count as ``model``).
    """

    camera: str
    stamp_ns: int
    frame_id: str
    result: PostprocessResult
    num_classes: int
    frames_since_reset: int
    reset_reason: ResetReason
    model_time_s: float
    latency_s: float
    skipped_frames: int = 0   # frames noted with Engine.note_skipped since this camera's previous result
    stage_s: Dict[str, float] = field(default_factory=dict)

    labels = _from_result("labels", "class ids, [h, w] uint8 (uint16 past 255 classes)")
    color = _from_result("color", "palette colours, [h, w, 3] uint8 RGB")
    overlay = _from_result("overlay", "input blended with the colours, [h, w, 3] uint8 RGB")
    confidence = _from_result("confidence", "max softmax probability, [h, w] uint8")
    class_ids = _from_result("class_ids", "classes present, uint16 ascending")
    pixel_count = _from_result("pixel_count", "pixels per present class, uint32")
    fraction = _from_result("fraction", "share of the image per present class, float32")
    mean_confidence = _from_result("mean_confidence", "mean confidence per present class, float32")
    width = _from_result("width", "label image width")
    height = _from_result("height", "label image height")

    def output(self, name: str) -> Optional[np.ndarray]:
        """An image output by its name in :data:`tv3s_ros.outputs.IMAGE_OUTPUTS`."""
        return getattr(self.result, name)
