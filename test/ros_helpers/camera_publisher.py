"""Separate camera process for the node tests: publishes synthetic cameras at a fixed rate.

Usage: camera_publisher.py --rate 20 --camera front:raw:48x64:/cams/front/image_raw
       [--camera rear:jpeg:60x80:/cams/rear/image_raw/compressed] [--count N] [--wall-stamps]

Frame i of a camera is ``frames.make_frame(seed, i, h, w)`` with seed = the camera's position
in the argument list + 1, stamped ``frames.stamp_of(i, period)`` (or the wall clock with
--wall-stamps) and frame_id ``<name>_optical``. Runs until --count frames per camera or SIGINT.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rclpy  # noqa: E402
from rclpy.executors import ExternalShutdownException  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from ros_helpers.frames import make_frame, stamp_of  # noqa: E402
from ros_helpers.messages import compressed_image, raw_image  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--camera", action="append", required=True, help="name:raw|jpeg:HxW:topic")
    parser.add_argument("--count", type=int, default=0, help="frames per camera (0: until stopped)")
    parser.add_argument("--wall-stamps", action="store_true", help="stamp with the wall clock")
    parser.add_argument("--distinct", type=int, default=0,
                        help="pre-render only this many frames and cycle them (high rates)")
    parser.add_argument("--wait-subscribers", type=float, default=30.0,
                        help="seconds to wait for a subscriber on every topic before publishing")
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("camera_publisher")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    cams = []
    for seed, spec in enumerate(args.camera, start=1):
        name, kind, size, topic = spec.split(":", 3)
        h, w = (int(v) for v in size.split("x"))
        pub = node.create_publisher(CompressedImage if kind == "jpeg" else Image, topic, qos)
        cams.append((name, kind, h, w, seed, pub))
    # Start only once the node subscribes to every camera, so no frame is lost to discovery.
    deadline = time.monotonic() + args.wait_subscribers
    while time.monotonic() < deadline and not all(c[-1].get_subscription_count() for c in cams):
        rclpy.spin_once(node, timeout_sec=0.05)
    period_ns = int(round(1e9 / args.rate))
    cache = {}
    print(f"publishing {len(cams)} camera(s) at {args.rate} Hz", flush=True)
    start, i = time.monotonic(), 0
    try:
        while rclpy.ok() and (args.count == 0 or i < args.count):
            stamp = time.time_ns() if args.wall_stamps else stamp_of(i, period_ns)
            for name, kind, h, w, seed, pub in cams:
                key = (seed, i % args.distinct if args.distinct else i)
                if key not in cache:
                    image = make_frame(seed, key[1], h, w)
                    cache[key] = (compressed_image if kind == "jpeg" else raw_image)(image, 0, "")
                    if not args.distinct:
                        cache.pop((seed, i - 1), None)
                msg = cache[key]
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                msg.header.frame_id = f"{name}_optical"
                pub.publish(msg)
            i += 1
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
