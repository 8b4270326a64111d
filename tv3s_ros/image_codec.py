"""Decode ROS camera images (``sensor_msgs/Image`` and ``CompressedImage`` payloads) to RGB.

ROS-free: the functions take the message fields, so the node (rclpy messages), the bag tool
(rosbags messages) and tests share one implementation. cv_bridge is not pip-installable, and
the engine needs plain arrays for its GPU upload anyway.

Every function returns an ``H x W x 3`` ``uint8`` RGB array. Where the payload already is
RGB (``rgb8``, ``rgba8``, ``8UC3``) the result is a zero-copy, possibly read-only and
row-strided view of the message buffer: copy it before writing into it. Anything that cannot
be decoded raises :class:`ImageDecodeError` with a one-line message that names the problem and
a :class:`DecodeErrorKind` that says which kind of problem it is.

Conventions (those of cv_bridge and ``sensor_msgs/image_encodings``):

- 16-bit data is scaled to 8 bit over the full range (``round(v * 255 / 65535)``), as
  cv_bridge does for ``mono16 -> rgb8``; ``is_bigendian`` selects the byte order. With
  ``allow_16bit=False`` (what the node and tv3s-bag use unless a camera is listed in
  ``allow_16bit_cameras``) 16-bit data is refused: on a camera topic it is usually depth.
- ``max_pixels`` refuses oversized frames before any decoding; for jpeg/png the size comes
  from the compressed header (PNG IHDR, JPEG SOFn), so a decompression bomb costs nothing.
- A jpeg that libjpeg decodes only with a corrupt-data warning is rejected as corrupt; the
  warning ends up in the error message instead of on the process's stderr.
- ``yuv422`` and ``uyvy`` are UYVY; ``yuv422_yuy2`` and ``yuyv`` are YUYV (YUY2).
- Bayer names give the colour of the top-left 2x2 cell in ROS order (``bayer_rggb8``
  starts with red); OpenCV names its old codes differently, hence the shifted table.
- ``8UC1`` decodes like ``mono8``, ``16UC1`` like ``mono16`` and ``8UC3`` as RGB unchanged
  (cv_bridge copies generic types with a matching channel count as they are).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Optional, Tuple

import cv2
import numpy as np

__all__ = [
    "ImageDecodeError",
    "DecodeErrorKind",
    "SUPPORTED_ENCODINGS",
    "SUPPORTED_COMPRESSED_FORMATS",
    "decode_image",
    "decode_compressed",
    "decode_msg",
    "compressed_size",
]


class DecodeErrorKind(StrEnum):
    """What is wrong with an image message that cannot be decoded.

    The values are the rejection categories the node counts (``rejected.<kind>`` in
    ``/diagnostics``) and throttles its log lines by: one counter per category, not one per
    distinct message text (the texts carry the sizes involved).
    """

    UNSUPPORTED_ENCODING = "unsupported_encoding"  # unknown encoding/format, depth or 16-bit data refused
    BAD_SIZE = "bad_size"                           # zero size, odd YUV422 width, over max_pixels, bad geometry
    WRONG_DATA_LENGTH = "wrong_data_length"         # step or payload length inconsistent with the size
    CORRUPT_COMPRESSED = "corrupt_compressed"       # jpeg/png data empty, truncated or corrupt
    UNDECODABLE = "undecodable"                     # anything else (e.g. a message that does not deserialize)


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB frame (message says why).

    ``kind`` (a :class:`DecodeErrorKind`) is the category, set where the error is raised;
    ``reason`` is the same value under its older name (and accepted as a keyword for it).
    """

    def __init__(self, message: str, kind: Optional[str] = None, *, reason: Optional[str] = None):
        super().__init__(message)
        kind = kind if kind is not None else reason
        self.kind: Optional[DecodeErrorKind] = DecodeErrorKind(kind) if kind is not None else None

    @property
    def reason(self) -> Optional[DecodeErrorKind]:
        return self.kind


# 16-bit and float data on a camera topic is nearly always a depth image (16UC1 millimetres,
# 32FC1 metres) wired to the wrong topic; scaling it to 8 bits would segment garbage.
_DEPTH_HINT = ("a depth image on a camera topic is the likely misconfiguration; if this camera "
               "really delivers 16-bit images, list it in allow_16bit_cameras (tv3s-bag: "
               "--allow-16bit-cameras)")
_WIDE_GENERIC = re.compile(r"^(16U|16S|32S|16F|32F|64F)C\d+$", re.IGNORECASE)


def _check_pixels(width: int, height: int, max_pixels: Optional[int], what: str) -> None:
    if max_pixels and int(width) * int(height) > max_pixels:
        raise ImageDecodeError(f"{what} is {width}x{height} = {int(width) * int(height)} pixels, more than "
                               f"max_pixels {max_pixels}; refused before decoding", DecodeErrorKind.BAD_SIZE)


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
            raise ImageDecodeError(f"image data of type {type(data).__name__} is not a byte buffer",
                                   DecodeErrorKind.WRONG_DATA_LENGTH) from err


def _scale16(samples: np.ndarray) -> np.ndarray:
    """uint16 (either byte order) -> uint8 over the full range, rounded: round(v * 255 / 65535)."""
    wide = samples.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _lookup(encoding: str) -> _Layout:
    key = encoding.strip() if isinstance(encoding, str) else ""
    layout = _LAYOUTS.get(key) or _LAYOUTS.get(key.lower())
    if layout is None:
        hint = f"; {_DEPTH_HINT}" if _WIDE_GENERIC.match(key) else ""
        raise ImageDecodeError(
            f"unsupported image encoding {encoding[:64]!r}{hint} (supported: {', '.join(SUPPORTED_ENCODINGS)})",
            DecodeErrorKind.UNSUPPORTED_ENCODING)
    return layout


def decode_image(encoding: str, height: int, width: int, step: int, data: Any,
                 is_bigendian: int = 0, *, max_pixels: Optional[int] = None,
                 allow_16bit: bool = True) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` payload to an ``H x W x 3`` uint8 RGB array.

    Args:
        encoding: ROS encoding string (see :data:`SUPPORTED_ENCODINGS`).
        height, width: image size in pixels.
        step: bytes per row including padding (``>= width * bytes per pixel``).
        data: the payload, exactly ``step * height`` bytes.
        is_bigendian: byte order of 16-bit samples.
        max_pixels: refuse frames with more pixels (None/0: no limit).
        allow_16bit: False refuses 16-bit encodings (depth on a camera topic).

    Raises:
        ImageDecodeError: unknown encoding, zero size, inconsistent step or data length.
    """
    layout = _lookup(encoding)
    if layout.bits == 16 and not allow_16bit:
        raise ImageDecodeError(f"16-bit encoding {encoding!r} is not accepted on this camera: {_DEPTH_HINT}",
                               DecodeErrorKind.UNSUPPORTED_ENCODING)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"{encoding} image has zero size ({width}x{height})", DecodeErrorKind.BAD_SIZE)
    _check_pixels(width, height, max_pixels, f"{encoding} image")
    if layout.even_width and width % 2:
        raise ImageDecodeError(f"{encoding} image needs an even width, got {width}", DecodeErrorKind.BAD_SIZE)
    sample_bytes = layout.bits // 8
    row_bytes = width * layout.channels * sample_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            f"{encoding} image {width}x{height}: step {step} is smaller than one row ({row_bytes} bytes)",
            DecodeErrorKind.WRONG_DATA_LENGTH)
    buf = _as_bytes_array(data)
    if buf.size != step * height:
        raise ImageDecodeError(
            f"{encoding} image {width}x{height} step {step}: data has {buf.size} bytes, "
            f"expected step * height = {step * height}", DecodeErrorKind.WRONG_DATA_LENGTH)

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
        raise ImageDecodeError(f"compressed format {fmt!r} is a depth image, not a camera image",
                               DecodeErrorKind.UNSUPPORTED_ENCODING)
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
        raise ImageDecodeError("compressed image with empty format is neither jpeg nor png",
                               DecodeErrorKind.UNSUPPORTED_ENCODING)
    raise ImageDecodeError(
        f"unsupported compressed format {fmt!r} (supported: {', '.join(SUPPORTED_COMPRESSED_FORMATS)})",
        DecodeErrorKind.UNSUPPORTED_ENCODING)


def compressed_size(codec: str, data: Any) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from a png IHDR or the first jpeg SOFn header, without decoding.

    None when the header is not found (the decoder then reports the data as corrupt).
    """
    buf = bytes(_as_bytes_array(data)[:1 << 20]) if not isinstance(data, bytes) else data
    if codec == "png":
        if len(buf) >= 24 and buf.startswith(_PNG_MAGIC) and buf[12:16] == b"IHDR":
            return int.from_bytes(buf[16:20], "big"), int.from_bytes(buf[20:24], "big")
        return None
    pos, n = 2, len(buf)
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:               # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:   # no length field
            pos += 2
            continue
        length = int.from_bytes(buf[pos + 2:pos + 4], "big")
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC): precision, height, width.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > n:
                return None
            return int.from_bytes(buf[pos + 7:pos + 9], "big"), int.from_bytes(buf[pos + 5:pos + 7], "big")
        if marker in (0xDA, 0xD9) or length < 2:    # scan data before any frame header
            return None
        pos += 2 + length
    return None


# libjpeg prints its warnings ("Corrupt JPEG data: ...", "Premature end of JPEG file") with
# fprintf(stderr) and OpenCV offers no hook, so the decode runs with fd 2 pointed at a pipe.
# The lock keeps two decodes from swapping the fd under each other; anything else written to
# stderr in that window (another thread's log line) is passed on to the real stderr afterwards.
_STDERR_LOCK = threading.Lock()
# libjpeg's warning texts (jerror.h JWRN_*), anchored: another thread's log line that merely
# mentions jpeg ("[WARN] [...]: ... jpeg ...") is passed on, never taken for a warning.
_LIBJPEG_CORRUPT = re.compile(r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters"
                              r"|Inconsistent progression sequence)")
_LIBJPEG_BENIGN = re.compile(r"^(Warning: unknown JFIF revision|Unknown Adobe color transform"
                             r"|Application transferred too many scanlines)")
_log = logging.getLogger(__name__)


def _imdecode_capturing_stderr(buf: np.ndarray) -> Tuple[Optional[np.ndarray], str]:
    with _STDERR_LOCK:
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), ""
        saved = os.dup(2)
        try:
            os.set_blocking(read_fd, False)
            os.dup2(write_fd, 2)
            try:
                image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            finally:
                os.dup2(saved, 2)
            chunks = []
            while True:
                try:
                    chunk = os.read(read_fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(saved)
            os.close(read_fd)
            os.close(write_fd)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    corrupt, others = [], []
    for line in text.splitlines(keepends=True):
        if _LIBJPEG_CORRUPT.match(line):
            corrupt.append(line.strip())
        elif _LIBJPEG_BENIGN.match(line):
            _log.debug("libjpeg: %s", line.strip())    # harmless: the image is complete
        else:
            others.append(line)
    if others:
        os.write(2, "".join(others).encode())
    return image, " ".join(corrupt)


def decode_compressed(format: str, data: Any, *, max_pixels: Optional[int] = None,  # noqa: A002
                      allow_16bit: bool = True) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` payload (jpeg or png) to uint8 RGB.

    The ``format`` may be a bare codec ("jpeg", "png") or image_transport's
    "<encoding>; <codec> compressed <encoding>". The payload follows OpenCV's channel order
    (BGR), as image_transport writes it; grey and 16-bit images are accepted.

    Raises:
        ImageDecodeError: unknown format, empty, truncated or corrupt data.
    """
    buf = _as_bytes_array(data)
    if buf.size == 0:
        raise ImageDecodeError(f"compressed image ({format!r}) has no data", DecodeErrorKind.CORRUPT_COMPRESSED)
    codec = _compressed_codec(format, bytes(buf[:8]))
    if codec == "jpeg":
        # libjpeg "decodes" a truncated stream with a grey bottom and only a warning:
        # require the end-of-image marker (a few bytes of trailing padding tolerated).
        if not bytes(buf[:3]) == _JPEG_SOI:
            raise ImageDecodeError(f"jpeg data ({buf.size} bytes) does not start with a jpeg marker",
                                   DecodeErrorKind.CORRUPT_COMPRESSED)
        if _JPEG_EOI not in bytes(buf[-32:]):
            raise ImageDecodeError(f"jpeg data ({buf.size} bytes) is truncated (no end-of-image marker)",
                                   DecodeErrorKind.CORRUPT_COMPRESSED)
    if max_pixels:
        size = compressed_size(codec, buf)
        if size is None:
            raise ImageDecodeError(f"corrupt {codec} data ({buf.size} bytes): no image header found",
                                   DecodeErrorKind.CORRUPT_COMPRESSED)
        _check_pixels(size[0], size[1], max_pixels, f"{codec} image")
    warning = ""
    try:
        if codec == "jpeg":
            image, warning = _imdecode_capturing_stderr(buf)
        else:
            image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if warning:
        raise ImageDecodeError(f"corrupt or truncated jpeg data ({buf.size} bytes): libjpeg: {warning[:200]}",
                               DecodeErrorKind.CORRUPT_COMPRESSED)
    if image is None or image.size == 0:
        raise ImageDecodeError(f"corrupt or truncated {codec} data ({buf.size} bytes)",
                               DecodeErrorKind.CORRUPT_COMPRESSED)
    if image.dtype == np.uint16:
        if not allow_16bit:
            raise ImageDecodeError(f"16-bit {codec} image is not accepted on this camera: {_DEPTH_HINT}",
                                   DecodeErrorKind.UNSUPPORTED_ENCODING)
        image = _scale16(image)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"{codec} image has unsupported sample type {image.dtype}",
                               DecodeErrorKind.CORRUPT_COMPRESSED)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageDecodeError(f"{codec} image has {channels} channels", DecodeErrorKind.CORRUPT_COMPRESSED)


def decode_msg(msg: Any, *, max_pixels: Optional[int] = None, allow_16bit: bool = True) -> np.ndarray:
    """Decode an Image or CompressedImage message object (rclpy or rosbags) by its fields."""
    if hasattr(msg, "format"):
        return decode_compressed(msg.format, msg.data, max_pixels=max_pixels, allow_16bit=allow_16bit)
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                        getattr(msg, "is_bigendian", 0), max_pixels=max_pixels, allow_16bit=allow_16bit)
