"""Build camera messages (rclpy types) for the tests and the publisher process."""
from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from ros_helpers.frames import jpeg_bytes


def set_stamp(msg, stamp_ns: int, frame_id: str):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def raw_image(image: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Image:
    msg = set_stamp(Image(), stamp_ns, frame_id)
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.step = int(image.shape[1]) * (int(image.shape[2]) if image.ndim == 3 else 1)
    msg.data = array.array("B", np.ascontiguousarray(image).tobytes())
    return msg


def compressed_image(image: np.ndarray, stamp_ns: int, frame_id: str) -> CompressedImage:
    msg = set_stamp(CompressedImage(), stamp_ns, frame_id)
    msg.format = "jpeg"
    msg.data = array.array("B", jpeg_bytes(image))
    return msg
