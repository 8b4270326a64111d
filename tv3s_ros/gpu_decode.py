"""Image messages to engine frames, decoding jpeg on the GPU (nvJPEG via torchvision) when possible.

A 1920x1080 jpeg takes several milliseconds to decode with libjpeg on one core, about a
millisecond with nvJPEG, and the decoded frame is then already on the GPU (no upload).
torchvision is optional and imported on first use only; without it, without CUDA, or
for anything but a well-formed jpeg, decoding falls back to :mod:`tv3s_ros.image_codec`
(OpenCV), which also produces every error message.

nvJPEG and libjpeg-turbo may differ by a few grey levels (IDCT and chroma upsampling), so
outputs on a GPU-decoding node can differ very slightly from the bag tool on CPU.

Availability is proven, not assumed: at start-up :class:`ImageDecoder` decodes a tiny embedded
jpeg on the device and compares it with OpenCV; if that fails (a torchvision built without
nvJPEG, a driver problem), GPU decoding is turned off with one log line.

Streams: torchvision writes the decoded frame on its own, private CUDA stream, not on the
engine's. What makes reading it safe today is the engine's per-batch synchronise (each batch
of frames is decoded, then processed after the previous one has finished). A future pipelined
decode (decoding the next frames while the model runs) must keep that guarantee explicitly:
record a CUDA event after the decode and make the engine's stream wait on it before the copy.
"""
from __future__ import annotations

import base64
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
    except Exception:  # noqa: BLE001 - not installed, or a build that does not match torch
        return None
    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)


# A 16x16 colour-gradient jpeg (OpenCV, quality 90): decoded on the device at start-up.
_PROBE_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYIDAoMDAsKCwsNDhIQDQ4RDgsLEBYQERMU"
    "FRUVDA8XGBYUGBIUFRT/2wBDAQMEBAUEBQkFBQkUDQsNFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU"
    "FBQUFBQUFBT/wAARCAAQABADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUF"
    "BAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVW"
    "V1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi"
    "4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAEC"
    "AxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVm"
    "Z2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq"
    "8vP09fb3+Pn6/9oADAMBAAIRAxEAPwD4/wDhD4L/ANR+79O1fbnwh8F/6j936dq8c+EPgv8A1H7v07V9ufCHwX/qP3fp2oxmD30D"
    "xD8PPj9w/9k=")
_PROBE_TOLERANCE = 8   # grey levels: nvJPEG and libjpeg may round IDCT and upsampling differently


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
        self.gpu_jpeg_error: Optional[str] = None   # why the start-up check turned GPU decoding off
        if self.gpu_jpeg:
            self.gpu_jpeg_error = self._check_gpu_decode()
            if self.gpu_jpeg_error:
                self.gpu_jpeg = False
                log.warning("GPU jpeg decoding is off: decoding a test jpeg on %s failed (%s); "
                            "jpeg frames are decoded with OpenCV", self.device, self.gpu_jpeg_error)

    def _check_gpu_decode(self) -> Optional[str]:
        """Decode the embedded test jpeg on the device and compare with OpenCV: None when it
        works, else what went wrong (importing torchvision says nothing about nvJPEG)."""
        try:
            image = self._decode_on_gpu(np.frombuffer(_PROBE_JPEG, dtype=np.uint8))
            if image.device.type != self.device.type:
                return f"decoded on {image.device}, not {self.device}"
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)   # asynchronous decode errors show here
            expected = image_codec.decode_compressed("jpeg", _PROBE_JPEG)
            got = image.cpu().numpy()
            if got.shape != expected.shape:
                return f"decoded shape {got.shape}, expected {expected.shape}"
            diff = int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max())
            if diff > _PROBE_TOLERANCE:
                return f"decoded pixels differ from OpenCV's by up to {diff} grey levels"
        except Exception as err:  # noqa: BLE001 - any failure means: do not decode on the GPU
            return f"{type(err).__name__}: {err}"
        return None

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
