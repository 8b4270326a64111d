"""One batch of cameras through the model without CUDA graphs (CPU, and groups mixing frame sizes).

The cameras' states are stacked into one batch state, the frames are uploaded and
preprocessed per raw size, one ``forward_stream`` runs, and the states are split again.
"""
from __future__ import annotations

from typing import AbstractSet, Any, Dict, List, Sequence, Tuple

import torch

from tv3s_ros.engine.timing import StageTimer
from tv3s_ros.engine.upload import HostUploader
from tv3s_ros.model.device import autocast
from tv3s_ros.postprocess import Postprocessor
from tv3s_ros.preprocess import InputPolicy, logits_to_size, to_model_input

__all__ = ["EagerRunner", "RowResult"]

# One camera's result: the post-processing result and where its NaN/Inf flag is
# (the per-row flag tensor of its batch, and its row), read later with no extra sync.
RowResult = Tuple[Any, Tuple[torch.Tensor, int]]


class EagerRunner:
    def __init__(self, model: torch.nn.Module, input_policy: InputPolicy, output_resolution: str,
                 postprocessor: Postprocessor, uploader: HostUploader, dtype: torch.dtype):
        self.model, self.cfg = model, model.cfg
        self.input_policy, self.output_resolution = input_policy, output_resolution
        self.postprocessor, self.uploader, self.dtype = postprocessor, uploader, dtype
        self.device = uploader.device
        self.last_stages: Dict[str, float] = {}   # seconds per stage of the last run (engine/timing.py)

    def run(self, cameras: Sequence[str], images: Sequence[Any], outputs: Sequence[AbstractSet[str]],
            states: Dict[str, Any]) -> List[RowResult]:
        """Results for the cameras' frames, in order; ``states`` (camera -> state) is updated."""
        timer = StageTimer(self.device)
        # Frames of one raw size are uploaded and preprocessed together.
        by_size: Dict[Tuple[int, int], List[int]] = {}
        for pos, image in enumerate(images):
            by_size.setdefault(tuple(image.shape[:2]), []).append(pos)
        uploads, inputs = {}, []
        for size, positions in by_size.items():
            uploads[size] = self.uploader.stack([images[p] for p in positions])
            inputs.append(to_model_input(uploads[size], self.cfg, self.input_policy))
        order = [p for positions in by_size.values() for p in positions]   # batch row -> position
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
        timer.mark("upload_preprocess")

        if len(cameras) == 1:
            state = states[cameras[0]]
        else:
            state = type(states[cameras[0]]).stack([states[cameras[p]] for p in order])
        with autocast(self.device, self.dtype):
            logits, state = self.model.forward_stream(x, state)
        # One device-side NaN/Inf flag per batch row, read with the results.
        finite = state.finite_rows() & torch.isfinite(logits).reshape(logits.shape[0], -1).all(1)
        if len(cameras) > 1:
            for row, p in enumerate(order):
                states[cameras[p]] = state.select([row])
        else:
            states[cameras[0]] = state
        timer.mark("model")

        results: List[Any] = [None] * len(cameras)
        row = 0
        for size, positions in by_size.items():
            part = logits[row:row + len(positions)]
            if self.output_resolution == "input":
                part = logits_to_size(part, size)
            outs = self.postprocessor(part, uploads[size], [outputs[p] for p in positions])
            for k, (p, res) in enumerate(zip(positions, outs)):
                results[p] = (res, (finite, row + k))
            row += len(positions)
        if self.device.type == "cuda" and not any(outputs):
            torch.cuda.current_stream(self.device).synchronize()   # model time covers the GPU work
        self.last_stages = timer.finish("postprocess")
        return results
