"""Encode output images as ``sensor_msgs/CompressedImage`` payloads, and read them back exactly.

ROS-free (the node wraps the result in a message). The payload and the ``format`` string follow
``compressed_image_transport`` (``CompressedPublisher::publish`` in ros-perception/
image_transport_plugins), so that ``image_transport republish``, RViz and any
``compressed_image_transport`` subscriber decode them:

==========  ==========  ================================  =====================================
encoding    codec       format                            payload
==========  ==========  ================================  =====================================
rgb8        jpeg        ``rgb8; jpeg compressed bgr8``    8-bit JPEG, BGR channel order
rgb8        png         ``rgb8; png compressed bgr8``     8-bit PNG, BGR channel order
mono8       jpeg        ``mono8; jpeg compressed mono8``  8-bit grey JPEG
mono8       png         ``mono8; png compressed ``        8-bit grey PNG (note the trailing space:
                                                          upstream appends no target for grey)
mono16      png         ``mono16; png compressed ``       16-bit grey PNG
==========  ==========  ================================  =====================================

The subscriber splits the format at ``;``, takes the part before it as the image encoding, and
swaps BGR back to RGB when the rest says ``compressed bgr``. 16-bit JPEG is refused here:
upstream would squeeze it to 8 bits, and JPEG is lossy anyway. Class-id images must be PNG:
JPEG changes pixel values, i.e. class ids (the node's table, :data:`tv3s_ros.outputs.OUTPUTS`,
gives labels and confidence PNG, colour and overlay JPEG).

PNG is written with the "up" row filter and zlib's run-length strategy: at 1080x1920 that makes
label images about a quarter smaller than OpenCV's defaults and confidence a sixth, in no more
time (``benchmarks/README.md``, "Compressed outputs"); with run-length coding the zlib level
hardly matters, so it is not a setting. OpenCV older than 4.10 has no filter setting and uses
its own default filter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

import cv2
import numpy as np

from tv3s_ros.image_codec import DecodeErrorKind, ImageDecodeError

__all__ = ["CODECS", "DEFAULT_JPEG_QUALITY", "EncodedImage", "compressed_format", "encode_compressed",
           "decode_compressed_exact", "check_jpeg_quality"]

CODECS = ("jpeg", "png")
DEFAULT_JPEG_QUALITY = 90

# encoding -> (channels, numpy dtype, is colour)
_ENCODINGS = {
    "rgb8": (3, np.uint8, True),
    "bgr8": (3, np.uint8, True),
    "mono8": (1, np.uint8, False),
    "mono16": (1, np.uint16, False),
}
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):          # OpenCV >= 4.10
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


@dataclass(frozen=True)
class EncodedImage:
    """A ``CompressedImage`` payload: ``format`` and the encoded bytes (a 1-D uint8 array)."""

    format: str
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.data.size)


def check_jpeg_quality(quality: Any) -> int:
    """``quality`` as an int in 1..100, else a ValueError that says so."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg_quality must be an integer in 1..100, got {quality!r}")
    return int(quality)


def compressed_format(encoding: str, codec: str) -> str:
    """The ``CompressedImage.format`` compressed_image_transport writes for ``encoding`` and ``codec``."""
    if encoding not in _ENCODINGS:
        raise ValueError(f"cannot compress encoding {encoding!r} (supported: {', '.join(_ENCODINGS)})")
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (choose from {', '.join(CODECS)})")
    _, dtype, colour = _ENCODINGS[encoding]
    if codec == "jpeg":
        if dtype != np.uint8:
            raise ValueError(f"{encoding} cannot be JPEG (8-bit only, and lossy): use png")
        return f"{encoding}; jpeg compressed {'bgr8' if colour else 'mono8'}"
    return f"{encoding}; png compressed {'bgr8' if colour else ''}"


def encode_compressed(image: np.ndarray, encoding: str, codec: str, *,
                      jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> EncodedImage:
    """Encode an ``[H, W]`` or ``[H, W, 3]`` array in ``encoding`` as ``codec`` (jpeg or png).

    Colour data is written in BGR order, as image_transport expects (the format says so).

    Raises:
        ValueError: an encoding, codec or quality that is not supported, an array that does not
            match the encoding, or an encoder failure.
    """
    fmt = compressed_format(encoding, codec)
    channels, dtype, colour = _ENCODINGS[encoding]
    image = np.asarray(image)
    shape_ok = image.ndim == 2 if channels == 1 else (image.ndim == 3 and image.shape[2] == channels)
    if channels == 1 and image.ndim == 3 and image.shape[2] == 1:
        image, shape_ok = image[:, :, 0], True
    if not shape_ok or image.dtype != dtype or image.size == 0:
        raise ValueError(f"{encoding} needs a non-empty {'HxWx3' if colour else 'HxW'} {np.dtype(dtype).name} "
                         f"array, got shape {image.shape} {image.dtype}")
    if encoding == "rgb8":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, check_jpeg_quality(jpeg_quality)])
    else:
        ok, buf = cv2.imencode(".png", image, _PNG_PARAMS)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {encoding} image as {codec}")
    return EncodedImage(fmt, buf.reshape(-1))


def decode_compressed_exact(format: str, data: Any) -> Tuple[np.ndarray, str]:  # noqa: A002
    """The image of a compressed_image_transport payload in its original encoding: ``(array, encoding)``.

    What a ``compressed_image_transport`` subscriber (mode "unchanged") hands its user: grey
    images as ``[H, W]`` (16 bit kept), colour in the encoding named before the ``;`` (BGR
    payloads swapped back to RGB for ``rgb8``). The inverse of :func:`encode_compressed`,
    bit-exact for PNG. (:func:`tv3s_ros.image_codec.decode_compressed` instead turns any
    payload into the model's 8-bit RGB input.)

    Raises:
        ImageDecodeError: a format without an encoding part or with one not listed above, or
            data that does not decode to it.
    """
    text = (format or "").strip()
    encoding, sep, rest = text.partition(";")
    encoding = encoding.strip()
    if not sep or encoding not in _ENCODINGS:
        raise ImageDecodeError(f"compressed format {format!r} names no supported image encoding "
                               f"({', '.join(_ENCODINGS)}) before ';'", DecodeErrorKind.UNSUPPORTED_ENCODING)
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        buf = np.asarray(data, dtype=np.uint8).reshape(-1)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except cv2.error:
        image = None
    if image is None:
        raise ImageDecodeError(f"corrupt or empty {format!r} data ({buf.size} bytes)",
                               DecodeErrorKind.CORRUPT_COMPRESSED)
    channels, dtype, colour = _ENCODINGS[encoding]
    got_channels = 1 if image.ndim == 2 else image.shape[2]
    if got_channels != channels or image.dtype != dtype:
        raise ImageDecodeError(f"{format!r} payload decodes to {got_channels} channel(s) {image.dtype}, "
                               f"not {encoding}", DecodeErrorKind.CORRUPT_COMPRESSED)
    bgr_payload = "compressed bgr" in rest
    if colour and bgr_payload != (encoding.startswith("bgr")):
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)   # the same swap in either direction
    return image, encoding
