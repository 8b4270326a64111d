"""The model run offline (no ROS) on the frames a test published, for comparison."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from tv3s_ros.preprocess import logits_to_size, parse_input_size, to_model_input


def _input(model, image: np.ndarray, input_size: str) -> torch.Tensor:
    return to_model_input(torch.from_numpy(np.ascontiguousarray(image)[None]), model.cfg,
                          parse_input_size(input_size))


@torch.inference_mode()
def stream_labels(model, images: Sequence[np.ndarray], input_size: str = "official") -> List[np.ndarray]:
    """Labels of each frame from ``forward_stream`` with the state carried from the first one."""
    state = model.new_state(1)
    out = []
    for image in images:
        logits, state = model.forward_stream(_input(model, image, input_size), state)
        out.append(logits_to_size(logits, image.shape[:2]).argmax(1)[0].to(torch.uint8).numpy())
    return out


@torch.inference_mode()
def clip_labels(model, images: Sequence[np.ndarray], input_size: str = "official") -> np.ndarray:
    """Labels of the last frame from ``forward_clip`` of the whole history as one clip."""
    clip = torch.stack([_input(model, im, input_size)[0] for im in images])[None]
    logits = model.forward_clip(clip)
    return logits_to_size(logits, images[-1].shape[:2]).argmax(1)[0].to(torch.uint8).numpy()
