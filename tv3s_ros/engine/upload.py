"""Host frames to the device: uint8 ``[H, W, 3]`` images stacked into one batch tensor.

On CUDA the frames go through reused pinned buffers and one asynchronous copy; an event per
buffer makes sure the previous copy out of it has finished before it is refilled. Frames
already on the GPU (jpeg decoded there) are copied on the device.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

__all__ = ["HostUploader", "host_tensor"]

_PINNED_CACHE_SIZE = 8  # upload buffers kept per (batch, height, width)


class HostUploader:
    """Uploads frame batches to ``device`` (pinned, async on CUDA; plain tensors on CPU)."""

    def __init__(self, device: torch.device, cache_size: int = _PINNED_CACHE_SIZE):
        self.device = torch.device(device)
        self.cache_size = int(cache_size)
        self._pinned: "OrderedDict[Tuple[int, int, int], Tuple[torch.Tensor, Optional[Any]]]" = OrderedDict()

    def stack(self, images: List[Any]) -> torch.Tensor:
        """Stack uint8 ``[H, W, 3]`` images into one ``[B, H, W, 3]`` tensor on the device."""
        if all(isinstance(im, torch.Tensor) for im in images):
            return torch.stack([im.to(self.device) for im in images])
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack([np.asarray(im) for im in images]))
        h, w = images[0].shape[:2]
        buf = self._buffer((len(images), h, w))
        host = buf.numpy()
        for j, im in enumerate(images):
            host[j] = im.cpu().numpy() if isinstance(im, torch.Tensor) else im
        out = buf.to(self.device, non_blocking=True)
        self._record((len(images), h, w), buf)
        return out

    def copy_into(self, dst: torch.Tensor, images: List[Any]) -> None:
        """Copy uint8 ``[H, W, 3]`` images into the rows of the static ``dst [B, H, W, 3]``."""
        on_host = [j for j, im in enumerate(images)
                   if not (isinstance(im, torch.Tensor) and im.device.type == "cuda")]
        for j, im in enumerate(images):
            if j not in on_host:
                dst[j].copy_(im, non_blocking=True)
        if not on_host:
            return
        if self.device.type != "cuda":
            for j in on_host:
                dst[j].copy_(host_tensor(images[j]))
            return
        b, h, w = dst.shape[:3]
        buf = self._buffer((b, h, w))
        host = buf.numpy()
        for j in on_host:
            im = images[j]
            host[j] = im.numpy() if isinstance(im, torch.Tensor) else im
        if len(on_host) == b:
            dst.copy_(buf, non_blocking=True)
        else:
            for j in on_host:
                dst[j].copy_(buf[j], non_blocking=True)
        self._record((b, h, w), buf)

    def _buffer(self, shape: Tuple[int, int, int]) -> torch.Tensor:
        """A pinned buffer for ``shape`` whose previous copy has finished."""
        entry = self._pinned.pop(shape, None)
        if entry is None:
            entry = (torch.empty(shape + (3,), dtype=torch.uint8, pin_memory=True), None)
        self._pinned[shape] = entry
        while len(self._pinned) > self.cache_size:
            _, (_, old_event) = self._pinned.popitem(last=False)
            if old_event is not None:
                old_event.synchronize()
        buf, event = entry
        if event is not None:
            event.synchronize()      # the previous copy out of this buffer must be finished
        return buf

    def _record(self, shape: Tuple[int, int, int], buf: torch.Tensor) -> None:
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self._pinned[shape] = (buf, done)


def host_tensor(image) -> torch.Tensor:
    """A CPU tensor view of a uint8 image (numpy copied only when it has negative strides)."""
    if isinstance(image, torch.Tensor):
        return image
    array = np.asarray(image)
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)
