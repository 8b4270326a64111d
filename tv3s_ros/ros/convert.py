"""Message conversion for the node: camera messages in, segmentation messages out.

Inputs arrive as serialized CDR bytes (the node subscribes with ``raw=True`` so that frames
overwritten before the model gets to them are never deserialized). :func:`peek_header` reads
only the header from those bytes; :func:`deserialize_camera` and :func:`decode_camera`
turn the newest frame into an ``H x W x 3`` uint8 RGB array through
:mod:`tv3s_ros.image_codec` (no cv_bridge: it is not pip-installable).

Outputs: ``sensor_msgs/Image`` (labels ``mono8``/``mono16``, color and overlay ``rgb8``,
confidence ``mono8``) and ``tv3s_ros/ClassCoverage``, each carrying the source header object
unchanged (stamp and frame_id), so consumers can pair them with the camera image and TF.
"""
from __future__ import annotations

import array
import struct
import sys
from typing import Optional, Tuple

import numpy as np
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from tv3s_ros.image_codec import DecodeErrorKind, ImageDecodeError, decode_msg
from tv3s_ros.msg import ClassCoverage
from tv3s_ros.outputs import image_encoding

__all__ = [
    "DecodeErrorKind",
    "ImageDecodeError",
    "camera_msg_type",
    "peek_header",
    "deserialize_camera",
    "decode_camera",
    "reject_reason",
    "stamp_ns",
    "image_msg",
    "labels_msg",
    "coverage_msg",
]

# CDR encapsulation ids (first two bytes) whose body is plain, non-delimited CDR: XCDR1 and
# XCDR2 big/little endian. The header struct has no 8-byte members, so both align alike.
_PLAIN_CDR = {0x00: ">", 0x01: "<", 0x06: ">", 0x07: "<"}
_HEADER_FIXED = struct.Struct("iII")  # stamp.sec, stamp.nanosec, frame_id length (with NUL)
_MAX_FRAME_ID = 4096


def camera_msg_type(compressed: bool):
    """``CompressedImage`` or ``Image``."""
    return CompressedImage if compressed else Image


def peek_header(raw: bytes, compressed: bool) -> Tuple[int, str]:
    """``(stamp_ns, frame_id)`` of a serialized camera message, without deserializing the image.

    Both Image and CompressedImage start with ``std_msgs/Header``. Unusual encapsulations
    fall back to a full deserialization.
    """
    if len(raw) >= 4 + _HEADER_FIXED.size and raw[0] == 0 and raw[1] in _PLAIN_CDR:
        order = _PLAIN_CDR[raw[1]]
        sec, nanosec, length = struct.unpack_from(order + "iII", raw, 4)
        start = 4 + _HEADER_FIXED.size
        if 1 <= length <= _MAX_FRAME_ID and start + length <= len(raw):
            frame_id = bytes(raw[start:start + length - 1]).decode("utf-8", errors="replace")
            return sec * 1_000_000_000 + nanosec, frame_id
    header = deserialize_message(raw, camera_msg_type(compressed)).header
    return stamp_ns(header), header.frame_id


def deserialize_camera(raw: bytes, compressed: bool):
    """The Image or CompressedImage message held in ``raw``."""
    return deserialize_message(raw, camera_msg_type(compressed))


def decode_camera(msg, allow_16bit: bool = False) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of an Image/CompressedImage (raises :class:`ImageDecodeError`)."""
    return decode_msg(msg, allow_16bit=allow_16bit)


def reject_reason(error: Exception) -> DecodeErrorKind:
    """The rejection category of a decode error (diagnostics key, log throttling key).

    Every decoder raise site sets :attr:`ImageDecodeError.kind`; that is the answer. An
    ImageDecodeError built without one (by code outside the decoders) is classified by its
    message text, which names the problem, so that it still lands in one of the few
    categories instead of one counter per distinct text.
    """
    kind = getattr(error, "kind", None)
    if kind:
        return DecodeErrorKind(kind)
    text = str(error).lower()
    if "encoding" in text or "format" in text or "depth image" in text:
        return DecodeErrorKind.UNSUPPORTED_ENCODING
    if "zero size" in text or "even width" in text:
        return DecodeErrorKind.BAD_SIZE
    if "step" in text or "bytes, expected" in text or "byte buffer" in text:
        return DecodeErrorKind.WRONG_DATA_LENGTH
    if "jpeg" in text or "png" in text or "compressed" in text:
        return DecodeErrorKind.CORRUPT_COMPRESSED
    return DecodeErrorKind.UNDECODABLE


def stamp_ns(header: Header) -> int:
    """Header stamp in nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _pixels(data: np.ndarray) -> array.array:
    """The image bytes as the ``array.array('B')`` rclpy stores (one copy, no per-byte checks)."""
    flat = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    out = array.array("B")
    out.frombytes(flat)
    return out


def image_msg(header: Header, data: np.ndarray, encoding: str) -> Image:
    """``sensor_msgs/Image`` of a ``[H, W]`` or ``[H, W, C]`` array, rows unpadded."""
    height, width = int(data.shape[0]), int(data.shape[1])
    channels = 1 if data.ndim == 2 else int(data.shape[2])
    msg = Image()
    msg.header = header
    msg.height, msg.width = height, width
    msg.encoding = encoding
    byteorder = data.dtype.byteorder
    msg.is_bigendian = int(byteorder == ">" or (byteorder == "=" and sys.byteorder == "big"))
    msg.step = width * channels * data.dtype.itemsize
    msg.data = _pixels(data)
    return msg


def labels_msg(header: Header, labels: np.ndarray) -> Image:
    """Class-id image: ``mono8`` while ids fit 8 bits (engine gives uint8), else ``mono16``."""
    if labels.dtype != np.uint8:
        labels = labels.astype(np.uint16, copy=False)
    return image_msg(header, labels, image_encoding("labels", labels))


def _typed(values: Optional[np.ndarray], dtype, typecode: str) -> array.array:
    """A numeric sequence field as rclpy's ``array.array`` (native byte order, one copy)."""
    out = array.array(typecode)
    if values is not None and len(values):
        out.frombytes(np.ascontiguousarray(values, dtype=dtype).reshape(-1).view(np.uint8))
    return out


def coverage_msg(header: Header, camera: str, output, class_names, latency_s: float) -> ClassCoverage:
    """``tv3s_ros/ClassCoverage`` of one engine :class:`~tv3s_ros.engine.FrameOutput`.

    ``latency_s`` is measured by the caller right before publishing (the engine's own value
    stops at the end of the model work).
    """
    msg = ClassCoverage()
    msg.header = header
    msg.camera_name = camera
    ids = output.class_ids if output.class_ids is not None else np.zeros(0, np.uint16)
    msg.class_ids = _typed(ids, np.uint16, "H")
    msg.class_names = [class_names[i] if i < len(class_names) else f"class_{i}" for i in ids.tolist()]
    msg.fraction = _typed(output.fraction, np.float32, "f")
    msg.pixel_count = _typed(output.pixel_count, np.uint32, "I")
    msg.mean_confidence = _typed(output.mean_confidence, np.float32, "f")
    msg.width, msg.height = int(output.width), int(output.height)
    msg.num_classes = int(output.num_classes)
    msg.frames_since_reset = int(output.frames_since_reset)
    msg.reset_reason = output.reset_reason or ""
    msg.skipped_frames = int(output.skipped_frames)
    msg.latency_s = float(latency_s)
    msg.model_time_s = float(output.model_time_s)
    return msg
