"""Decode ROS camera images (``sensor_msgs/Image`` and ``CompressedImage`` payloads) to RGB.

ROS-free: the functions take the message fields, so the node (rclpy messages), the bag tool
(rosbags messages) and tests share one implementation. cv_bridge is not pip-installable, and
the engine needs plain arrays for its GPU upload anyway.

Every function returns an ``H x W x 3`` ``uint8`` RGB array. Where the payload already is
RGB (``rgb8``, ``rgba8``, ``8UC3``) the result is a zero-copy, possibly read-only and
row-strided view of the message buffer: copy it before writing into it. Anything that cannot
be decoded raises :class:`ImageDecodeError` with a one-line message that names the problem.

Conventions (those of cv_bridge and ``sensor_msgs/image_encodings``):

- 16-bit data is scaled to 8 bit over the full range (``round(v * 255 / 65535)``), as
  cv_bridge does for ``mono16 -> rgb8``; ``is_bigendian`` selects the byte order.
- ``yuv422`` and ``uyvy`` are UYVY; ``yuv422_yuy2`` and ``yuyv`` are YUYV (YUY2).
- Bayer names give the colour of the top-left 2x2 cell in ROS order (``bayer_rggb8``
  starts with red); OpenCV names its old codes differently, hence the shifted table.
- ``8UC1`` decodes like ``mono8``, ``16UC1`` like ``mono16`` and ``8UC3`` as RGB unchanged
  (cv_bridge copies generic types with a matching channel count as they are).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np

__all__ = [
    "ImageDecodeError",
    "SUPPORTED_ENCODINGS",
    "SUPPORTED_COMPRESSED_FORMATS",
    "decode_image",
    "decode_compressed",
    "decode_msg",
]


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB frame (message says why)."""


@dataclass(frozen=True)
class _Layout:
    """How one encoding is stored and how to turn it into RGB."""

    channels: int                    # samples per pixel as stored (YUV422: 2 bytes per pixel)
    bits: int                        # 8 or 16 bits per sample
    to_rgb: Optional[int]            # cv2.cvtColor code, None when already RGB-ordered
    even_width: bool = False         # YUV422 stores pixels in pairs sharing one U and V
    bayer: bool = False              # demosaic (16-bit: before scaling, at full depth)


def _cv(name: str) -> int:
    return getattr(cv2, name)


# OpenCV's old Bayer codes name the second row's second and third pixels, so ROS
# bayer_rggb (R G / G B) is OpenCV "BG" (same mapping as cv_bridge and rosbags-image;
# the old names exist in every OpenCV 4 release, the explicit "RGGB" aliases do not).
_LAYOUTS = {
    "rgb8": _Layout(3, 8, None),
    "8UC3": _Layout(3, 8, None),
    "bgr8": _Layout(3, 8, _cv("COLOR_BGR2RGB")),
    "rgba8": _Layout(4, 8, None),
    "bgra8": _Layout(4, 8, _cv("COLOR_BGRA2RGB")),
    "mono8": _Layout(1, 8, _cv("COLOR_GRAY2RGB")),
    "8UC1": _Layout(1, 8, _cv("COLOR_GRAY2RGB")),
    "rgb16": _Layout(3, 16, None),
    "bgr16": _Layout(3, 16, _cv("COLOR_BGR2RGB")),
    "rgba16": _Layout(4, 16, None),
    "bgra16": _Layout(4, 16, _cv("COLOR_BGRA2RGB")),
    "mono16": _Layout(1, 16, _cv("COLOR_GRAY2RGB")),
    "16UC1": _Layout(1, 16, _cv("COLOR_GRAY2RGB")),
    "yuv422": _Layout(2, 8, _cv("COLOR_YUV2RGB_UYVY"), even_width=True),
    "uyvy": _Layout(2, 8, _cv("COLOR_YUV2RGB_UYVY"), even_width=True),
    "yuv422_yuy2": _Layout(2, 8, _cv("COLOR_YUV2RGB_YUY2"), even_width=True),
    "yuyv": _Layout(2, 8, _cv("COLOR_YUV2RGB_YUY2"), even_width=True),
    "bayer_rggb8": _Layout(1, 8, _cv("COLOR_BayerBG2RGB"), bayer=True),
    "bayer_bggr8": _Layout(1, 8, _cv("COLOR_BayerRG2RGB"), bayer=True),
    "bayer_gbrg8": _Layout(1, 8, _cv("COLOR_BayerGR2RGB"), bayer=True),
    "bayer_grbg8": _Layout(1, 8, _cv("COLOR_BayerGB2RGB"), bayer=True),
    "bayer_rggb16": _Layout(1, 16, _cv("COLOR_BayerBG2RGB"), bayer=True),
    "bayer_bggr16": _Layout(1, 16, _cv("COLOR_BayerRG2RGB"), bayer=True),
    "bayer_gbrg16": _Layout(1, 16, _cv("COLOR_BayerGR2RGB"), bayer=True),
    "bayer_grbg16": _Layout(1, 16, _cv("COLOR_BayerGB2RGB"), bayer=True),
}

SUPPORTED_ENCODINGS = tuple(_LAYOUTS)
SUPPORTED_COMPRESSED_FORMATS = ("jpeg", "png")


def _as_bytes_array(data: Any) -> np.ndarray:
    """A flat uint8 view of the payload (bytes, bytearray, memoryview, array.array, numpy)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        # Lists of ints, non-contiguous arrays: one copy is unavoidable.
        try:
            return np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as err:
            raise ImageDecodeError(f"image data of type {type(data).__name__} is not a byte buffer") from err


def _scale16(samples: np.ndarray) -> np.ndarray:
    """uint16 (either byte order) -> uint8 over the full range, rounded: round(v * 255 / 65535)."""
    wide = samples.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _lookup(encoding: str) -> _Layout:
    key = encoding.strip() if isinstance(encoding, str) else ""
    layout = _LAYOUTS.get(key) or _LAYOUTS.get(key.lower())
    if layout is None:
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    return layout


def decode_image(encoding: str, height: int, width: int, step: int, data: Any,
                 is_bigendian: int = 0) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` payload to an ``H x W x 3`` uint8 RGB array.

    Args:
        encoding: ROS encoding string (see :data:`SUPPORTED_ENCODINGS`).
        height, width: image size in pixels.
        step: bytes per row including padding (``>= width * bytes per pixel``).
        data: the payload, exactly ``step * height`` bytes.
        is_bigendian: byte order of 16-bit samples.

    Raises:
        ImageDecodeError: unknown encoding, zero size, inconsistent step or data length.
    """
    layout = _lookup(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"{encoding} image has zero size ({width}x{height})")
    if layout.even_width and width % 2:
        raise ImageDecodeError(f"{encoding} image needs an even width, got {width}")
    sample_bytes = layout.bits // 8
    row_bytes = width * layout.channels * sample_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            f"{encoding} image {width}x{height}: step {step} is smaller than one row ({row_bytes} bytes)")
    buf = _as_bytes_array(data)
    if buf.size != step * height:
        raise ImageDecodeError(
            f"{encoding} image {width}x{height} step {step}: data has {buf.size} bytes, "
            f"expected step * height = {step * height}")

    # Row padding is dropped by slicing: still a view, rows keep their stride.
    pixels = buf.reshape(height, step)[:, :row_bytes]

    if layout.bits == 16:
        order = ">" if is_bigendian else "<"
        samples = pixels.view(order + "u2").reshape(height, width, layout.channels)
        if layout.bayer:
            # Demosaic at full depth, then scale (OpenCV needs native, contiguous uint16).
            mosaic = np.ascontiguousarray(samples[:, :, 0], dtype=np.uint16)
            return _scale16(cv2.cvtColor(mosaic, layout.to_rgb))
        samples = _scale16(samples)
    else:
        samples = pixels.reshape(height, width, layout.channels)

    if layout.to_rgb is None:
        return samples[:, :, :3]                       # rgb8 / rgba8 / 8UC3: a view, no copy
    if layout.channels == 1:
        samples = samples[:, :, 0]
    return _cvt_strided(samples, layout.to_rgb)


def _cvt_strided(samples: np.ndarray, code: int) -> np.ndarray:
    """cv2.cvtColor that accepts padded rows (OpenCV takes a row stride, numpy views may not map)."""
    try:
        return cv2.cvtColor(samples, code)
    except cv2.error:
        return cv2.cvtColor(np.ascontiguousarray(samples), code)


_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _compressed_codec(fmt: str, head: bytes) -> str:
    """Codec named by a CompressedImage ``format`` ("jpeg", "rgb8; jpeg compressed bgr8", ...)."""
    text = (fmt or "").strip().lower()
    if "compresseddepth" in text:
        raise ImageDecodeError(f"compressed format {fmt!r} is a depth image, not a camera image")
    if "jpeg" in text or "jpg" in text:
        return "jpeg"
    if "png" in text:
        return "png"
    if not text:
        # Some drivers leave format empty: trust the file signature.
        if head.startswith(_JPEG_SOI):
            return "jpeg"
        if head.startswith(_PNG_MAGIC):
            return "png"
        raise ImageDecodeError("compressed image with empty format is neither jpeg nor png")
    raise ImageDecodeError(
        f"unsupported compressed format {fmt!r} (supported: {', '.join(SUPPORTED_COMPRESSED_FORMATS)})")


def decode_compressed(format: str, data: Any) -> np.ndarray:  # noqa: A002 - ROS field name
    """Decode a ``sensor_msgs/CompressedImage`` payload (jpeg or png) to uint8 RGB.

    The ``format`` may be a bare codec ("jpeg", "png") or image_transport's
    "<encoding>; <codec> compressed <encoding>". The payload follows OpenCV's channel order
    (BGR), as image_transport writes it; grey and 16-bit images are accepted.

    Raises:
        ImageDecodeError: unknown format, empty, truncated or corrupt data.
    """
    buf = _as_bytes_array(data)
    if buf.size == 0:
        raise ImageDecodeError(f"compressed image ({format!r}) has no data")
    codec = _compressed_codec(format, bytes(buf[:8]))
    if codec == "jpeg":
        # libjpeg "decodes" a truncated stream with a grey bottom and only a warning:
        # require the end-of-image marker (a few bytes of trailing padding tolerated).
        if not bytes(buf[:3]) == _JPEG_SOI:
            raise ImageDecodeError(f"jpeg data ({buf.size} bytes) does not start with a jpeg marker")
        if _JPEG_EOI not in bytes(buf[-32:]):
            raise ImageDecodeError(f"jpeg data ({buf.size} bytes) is truncated (no end-of-image marker)")
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise ImageDecodeError(f"corrupt or truncated {codec} data ({buf.size} bytes)")
    if image.dtype == np.uint16:
        image = _scale16(image)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"{codec} image has unsupported sample type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageDecodeError(f"{codec} image has {channels} channels")


def decode_msg(msg: Any) -> np.ndarray:
    """Decode an Image or CompressedImage message object (rclpy or rosbags) by its fields."""
    if hasattr(msg, "format"):
        return decode_compressed(msg.format, msg.data)
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                        getattr(msg, "is_bigendian", 0))
