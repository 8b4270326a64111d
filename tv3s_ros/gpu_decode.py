"""Image messages to engine frames, decoding jpeg on the GPU (nvJPEG via torchvision) when possible.

A 1920x1080 jpeg takes several milliseconds to decode with libjpeg on one core, about a
millisecond with nvJPEG, and the decoded frame is then already on the GPU (no upload).
torchvision is optional and imported on first use only; without it, without CUDA, or
for anything but a well-formed jpeg, decoding falls back to :mod:`tv3s_ros.image_codec`
(OpenCV), which also produces every error message.

nvJPEG and libjpeg-turbo may differ by a few grey levels (IDCT and chroma upsampling), so
outputs on a GPU-decoding node can differ very slightly from the bag tool on CPU.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from tv3s_ros import image_codec

__all__ = ["ImageDecoder", "resolve_gpu_jpeg", "gpu_jpeg_available"]

log = logging.getLogger(__name__)

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


@functools.lru_cache(maxsize=None)
def _torchvision_decode_jpeg() -> Optional[Callable]:
    """``torchvision.io.decode_jpeg`` and its RGB mode, or None (cached; never raises)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # not installed, or a build that does not match torch
        return None
    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)


def gpu_jpeg_available() -> bool:
    """True when CUDA is usable and torchvision imports (it decodes jpeg on CUDA since 0.19)."""
    return torch.cuda.is_available() and _torchvision_decode_jpeg() is not None


def resolve_gpu_jpeg(setting: Union[str, bool, None], device: torch.device) -> bool:
    """``auto``/None: on when the device is CUDA and torchvision is there; True: required."""
    if setting is None or (isinstance(setting, str) and setting.strip().lower() == "auto"):
        return torch.device(device).type == "cuda" and gpu_jpeg_available()
    if isinstance(setting, str):
        text = setting.strip().lower()
        if text not in ("true", "false", "on", "off"):
            raise ValueError(f"gpu_jpeg must be auto, true or false, got {setting!r}")
        setting = text in ("true", "on")
    if not isinstance(setting, bool):
        raise ValueError(f"gpu_jpeg must be auto, true or false, got {setting!r}")
    if setting and torch.device(device).type != "cuda":
        raise ValueError("gpu_jpeg=true needs a CUDA device")
    if setting and _torchvision_decode_jpeg() is None:
        raise ValueError("gpu_jpeg=true needs torchvision (pip install torchvision matching torch)")
    return setting


def _bytes_view(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else data.astype(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)   # array.array('B') from rclpy
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _is_plain_jpeg(fmt: str, head: bytes, tail: bytes) -> bool:
    """A jpeg we may hand to nvJPEG: named jpeg (or unnamed with a jpeg signature), complete."""
    text = (fmt or "").strip().lower()
    if "compresseddepth" in text:
        return False
    named = "jpeg" in text or "jpg" in text
    return (named or not text) and head.startswith(_JPEG_SOI) and _JPEG_EOI in tail


def _header_size(msg: Any):
    """``(width, height)`` of a message without decoding it (None when unknown or invalid)."""
    try:
        if hasattr(msg, "format"):
            buf = _bytes_view(msg.data)
            codec = "png" if bytes(buf[:8]) == image_codec._PNG_MAGIC else "jpeg"
            return image_codec.compressed_size(codec, buf)
        width, height = int(msg.width), int(msg.height)
    except (TypeError, ValueError, AttributeError):
        return None
    return (width, height) if width > 0 and height > 0 else None


class ImageDecoder:
    """Decodes Image / CompressedImage messages for :meth:`Engine.process`.

    Args:
        device: the engine's device; jpeg goes to the GPU only on CUDA.
        gpu_jpeg: ``auto`` (when available), True (required: error if not available) or False.

    :meth:`decode_compressed` / :meth:`decode_msg` return a uint8 ``[H, W, 3]`` RGB frame:
    a CUDA tensor for GPU-decoded jpeg, else a numpy array.
    """

    def __init__(self, device: Union[str, torch.device] = "cpu", gpu_jpeg: Union[str, bool, None] = "auto",
                 max_pixels: Optional[int] = None, check=None):
        self.device = torch.device(device)
        self.gpu_jpeg = resolve_gpu_jpeg(gpu_jpeg, self.device)
        self.gpu_decoded = 0
        self.gpu_failures = 0
        # max_pixels: refused before decoding (compressed headers are read first);
        # check(height, width): raises ImageDecodeError for frames the model must not see.
        self.max_pixels = max_pixels
        self.check = check

    def decode_msg(self, msg: Any, allow_16bit: bool = False):
        """Decode; 16-bit encodings only with ``allow_16bit`` (else: likely depth, refused)."""
        if self.check is not None:
            # The whole geometry check on the header's size first: a 1 x 40M png is refused
            # before it is decoded, not after.
            size = _header_size(msg)
            if size is not None:
                self.check(size[1], size[0])
        if hasattr(msg, "format"):
            image = self.decode_compressed(msg.format, msg.data, allow_16bit=allow_16bit)
        else:
            image = image_codec.decode_msg(msg, max_pixels=self.max_pixels, allow_16bit=allow_16bit)
        if self.check is not None:
            self.check(int(image.shape[0]), int(image.shape[1]))
        return image

    def decode_compressed(self, format: str, data: Any, allow_16bit: bool = False):  # noqa: A002
        if self.gpu_jpeg:
            buf = _bytes_view(data)
            if buf.size and _is_plain_jpeg(format, bytes(buf[:3]), bytes(buf[-32:])):
                if self.max_pixels:
                    size = image_codec.compressed_size("jpeg", buf)
                    if size is not None:
                        image_codec._check_pixels(size[0], size[1], self.max_pixels, "jpeg image")
                try:
                    image = self._decode_on_gpu(buf)
                except RuntimeError as err:   # e.g. a CMYK or lossless jpeg nvJPEG refuses
                    self.gpu_failures += 1
                    if self.gpu_failures <= 3:
                        log.warning("GPU jpeg decode failed (%s); decoding this frame with OpenCV", err)
                else:
                    self.gpu_decoded += 1
                    return image
        return image_codec.decode_compressed(format, data, max_pixels=self.max_pixels, allow_16bit=allow_16bit)

    def _decode_on_gpu(self, buf: np.ndarray) -> torch.Tensor:
        decode = _torchvision_decode_jpeg()
        # torchvision wants a CPU uint8 tensor; a read-only message buffer is copied (small).
        data = torch.from_numpy(buf if buf.flags.writeable and buf.flags.c_contiguous else buf.copy())
        chw = decode(data, device=self.device)
        if chw.dim() != 3 or chw.shape[0] != 3 or chw.dtype != torch.uint8:
            raise RuntimeError(f"unexpected decoded jpeg {tuple(chw.shape)} {chw.dtype}")
        return chw.permute(1, 2, 0)     # [H, W, 3] view; the engine copies it into its input
