"""Write a synthetic two-camera drive as a rosbag2, for throughput measurements of tv3s-bag.

    python -m tv3s_ros.bag.synthetic /tmp/drive --frames 50 --size 1024x2048
    tv3s-bag /tmp/drive /tmp/drive_seg --model tv3s_b1_cityscapes --allow-random-weights

Cameras: ``/cam/front/image_raw`` (sensor_msgs/Image, rgb8) and
``/cam/left/image_raw/compressed`` (sensor_msgs/CompressedImage, jpeg quality 90), both at
``--rate`` Hz with continuous stamps (no resets after the first frame). The scene is a
moving gradient with a few bright boxes: enough structure for realistic jpeg sizes.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import numpy as np

from tv3s_ros.bag.typestore import COMPRESSED_IMAGE, IMAGE, build_typestore
from tv3s_ros.bag.writer import STORAGES

RAW_TOPIC = "/cam/front/image_raw"
JPEG_TOPIC = "/cam/left/image_raw/compressed"
START_NS = 1_700_000_000 * 10**9


def scene(index: int, height: int, width: int) -> np.ndarray:
    """Frame ``index`` of the synthetic drive, H x W x 3 uint8 RGB."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int32)
    image = np.stack([(x * 255 // width + 3 * index) % 256, y * 255 // height,
                      ((x + y) // 4 + 5 * index) % 256], -1).astype(np.uint8)
    for k in range(4):
        cx = (index * (7 + 3 * k) + k * width // 4) % max(width - width // 10, 1)
        cy = height // 5 + k * height // 6
        image[cy: cy + height // 12, cx: cx + width // 10] = (40 + 50 * k, 220 - 40 * k, 90)
    return image


def _header(types, stamp_ns: int, frame_id: str):
    stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def write_drive(path: Path, frames: int, height: int, width: int, rate_hz: float = 10.0,
                storage: str = "mcap") -> None:
    """Write ``frames`` frames per camera to a new rosbag2 at ``path``."""
    import cv2
    from rosbags.rosbag2 import Writer

    store = build_typestore()
    types = store.types
    writer = Writer(path, version=8, storage_plugin=STORAGES[storage])
    writer.open()
    try:
        raw = writer.add_connection(RAW_TOPIC, IMAGE, typestore=store)
        jpeg = writer.add_connection(JPEG_TOPIC, COMPRESSED_IMAGE, typestore=store)
        for index in range(frames):
            stamp_ns = START_NS + int(round(index * 1e9 / rate_hz))
            image = scene(index, height, width)
            msg = types[IMAGE](header=_header(types, stamp_ns, "front"), height=height, width=width,
                               encoding="rgb8", is_bigendian=0, step=3 * width,
                               data=image.reshape(-1))
            writer.write(raw, stamp_ns, store.serialize_cdr(msg, IMAGE))
            ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            msg = types[COMPRESSED_IMAGE](header=_header(types, stamp_ns, "left"), format="jpeg",
                                          data=data.reshape(-1))
            writer.write(jpeg, stamp_ns + 1_000_000, store.serialize_cdr(msg, COMPRESSED_IMAGE))
    finally:
        writer.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tv3s_ros.bag.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="new rosbag2 directory")
    parser.add_argument("--frames", type=int, default=50, help="frames per camera (default 50)")
    parser.add_argument("--size", default="1024x2048", help="HxW of the frames (default 1024x2048)")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz (default 10)")
    parser.add_argument("--storage", default="mcap", choices=sorted(STORAGES))
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    write_drive(args.output, args.frames, height, width, args.rate, args.storage)
    print(f"wrote {args.frames} frames per camera ({height}x{width}) to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
