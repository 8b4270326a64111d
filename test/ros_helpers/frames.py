"""Deterministic synthetic camera frames, shared by the publisher process and the tests.

A frame is a function of (camera seed, index, size), so a test can regenerate exactly what
another process published (including the jpeg bytes) and run the model offline on it.
"""
from __future__ import annotations

import cv2
import numpy as np

# Stamp of frame i: BASE_NS + i * period. Far from zero so "stamp backwards" tests have room.
BASE_NS = 1_000 * 1_000_000_000


def make_frame(seed: int, index: int, height: int, width: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB: smooth random blobs that drift with ``index``."""
    rng = np.random.default_rng([seed, index])
    coarse = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    ramp = ((np.arange(width) * 4 + index * 9) % 256).astype(np.uint8)
    image[:, :, 2] = (image[:, :, 2] // 2 + ramp[None, :] // 2)
    return image


def jpeg_bytes(image_rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG as image_transport writes it (BGR channel order in the file)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """What the node's decoder sees for :func:`jpeg_bytes` output (RGB)."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def stamp_of(index: int, period_ns: int) -> int:
    return BASE_NS + index * period_ns


def index_of(stamp_ns: int, period_ns: int) -> int:
    offset = stamp_ns - BASE_NS
    assert offset % period_ns == 0, stamp_ns
    return offset // period_ns
