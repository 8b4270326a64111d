"""One batch of cameras with one raw frame size as one replay of a :class:`CudaGraphStreamer`.

Every camera's state lives in a row of the streamer's static state (no copy while the batch
stays the same); the frames are copied into its static input and only the requested outputs
come back, after one synchronisation. A capture that fails turns graphs off for good: the
engine then runs eagerly, with the states taken out of the rows.
"""
from __future__ import annotations

import logging
from typing import AbstractSet, Any, Callable, Dict, List, Optional, Sequence

import torch

from tv3s_ros.engine.cuda_graphs import CudaGraphStreamer, GraphCaptureError, StreamerPool
from tv3s_ros.engine.eager_runner import RowResult
from tv3s_ros.engine.timing import StageTimer
from tv3s_ros.engine.upload import HostUploader
from tv3s_ros.postprocess import Postprocessor

__all__ = ["GraphedRunner"]

log = logging.getLogger("tv3s_ros.engine")

_MAX_GRAPHS = 4         # captured (batch, height, width) combinations kept; each has a memory pool


class GraphedRunner:
    """``mode``: ``on`` (capture) or ``no_capture`` (the same static-buffer path, eager)."""

    def __init__(self, make_streamer: Callable[..., CudaGraphStreamer], mode: str,
                 postprocessor: Postprocessor, uploader: HostUploader, output_resolution: str,
                 max_streamers: int = _MAX_GRAPHS):
        self.pool = StreamerPool(make_streamer, max_streamers)
        self.mode = mode
        self.postprocessor, self.uploader = postprocessor, uploader
        self.output_resolution = output_resolution
        self.device = uploader.device
        # Seconds per stage of the last run. Preprocessing and the on-device part of the
        # postprocessing run inside the graph and count as model; upload_preprocess is the copy in.
        self.last_stages: Dict[str, float] = {}

    def run(self, cameras: Sequence[str], images: Sequence[Any], outputs: Sequence[AbstractSet[str]],
            states: Dict[str, Any]) -> Optional[List[RowResult]]:
        """Results in order, or None when the capture failed (graphs are off from then on)."""
        h, w = images[0].shape[:2]
        union = set().union(*outputs)
        timer = StageTimer(self.device)
        try:
            streamer, rows = self.pool.acquire(list(cameras), states, h, w, union)
        except GraphCaptureError as err:
            # Only a failed capture turns graphs off; a frame that fails the eager warm-up
            # step is that frame's problem (the engine retries camera by camera).
            if self.mode != "on":
                raise
            # A capture that fails (an op that cannot be captured, out of memory) must not stop
            # the node: run eagerly from now on, with the states taken out of the rows.
            log.warning("CUDA graph capture failed (%s); continuing without graphs", err)
            self.pool.clear(states)
            return None
        row_images: List[Any] = [None] * len(cameras)
        row_outputs: List[AbstractSet[str]] = [set() for _ in cameras]
        for pos, row in enumerate(rows):
            row_images[row] = images[pos]
            row_outputs[row] = outputs[pos]
        timer.mark("model")          # binding the states to the rows (and a capture on first use)
        self.uploader.copy_into(streamer.input, row_images)
        timer.mark("upload_preprocess")
        step = streamer.step()
        timer.mark("model")
        size = (h, w) if self.output_resolution == "input" else streamer.model_input_size
        results = self.postprocessor.to_results(step, row_outputs, *size)
        if self.device.type == "cuda" and not union:
            torch.cuda.current_stream(self.device).synchronize()   # model time covers the GPU work
        # The finite flag is graph-owned: the next step overwrites it, so keep a copy.
        finite = streamer.finite.clone()
        self.last_stages = timer.finish("postprocess")
        return [(results[row], (finite, row)) for row in rows]
