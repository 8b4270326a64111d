"""tv3s-demo: run tv3s_node on a generated two-camera stream and print what it publishes.

A smoke run of the whole product through a real ROS 2 graph: this process publishes two
synthetic cameras (one raw ``sensor_msgs/Image``, one JPEG ``CompressedImage``), starts
``tv3s_node`` as a separate process, and prints every ``ClassCoverage`` it receives.

Without ``--weights`` the network has random weights: the pipeline, state handling and
topics are real, the classes are not. Download an official checkpoint (see model/README.md)
and pass ``--weights`` with the matching ``--model`` for meaningful output.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

EPILOG = """examples:
  tv3s-demo                                  # tiny random-weight model, 20 frames per camera
  tv3s-demo --frames 50 --rate 10
  tv3s-demo --model tv3s_b1_cityscapes --weights model/weights/tv3s_b1_city.pth --input-size official

The node's own log goes to the file printed at the start (or to the terminal with --node-log -).
DDS traffic stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, private ROS_DOMAIN_ID).
"""

# Small enough for a laptop CPU: MiT-B0 with a narrow head.
TINY_OVERRIDES = "{embed_dim: 64, n_mambas: 4}"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tv3s-demo", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20, help="frames to publish per camera (default 20)")
    parser.add_argument("--rate", type=float, default=3.0, help="camera rate in Hz (default 3)")
    parser.add_argument("--model", default="tv3s_b0_cityscapes", help="preset name or YAML path")
    parser.add_argument("--weights", default="", help="checkpoint (.pth); random weights when omitted")
    parser.add_argument("--model-overrides", default=None,
                        help=f"YAML dict of preset overrides (default for random weights: {TINY_OVERRIDES})")
    parser.add_argument("--input-size", default="256x512", help="model input size policy (default 256x512)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--node-log", default=None, help="file for the node's log ('-' for the terminal)")
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    return parser.parse_args(argv)


def synthetic_frame(t: int, height: int, width: int, seed: int) -> np.ndarray:
    """A road-like scene with moving blobs: deterministic per (t, seed), RGB uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2] = (110, 160, 220)                       # sky
    img[height // 2:] = (90, 90, 90)                           # road
    for k in range(4):
        cy, cx = rng.uniform(0.3, 0.9) * height, (rng.uniform(0, 1) * width + 7 * t * (k + 1)) % width
        r = rng.uniform(0.05, 0.15) * height
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = rng.integers(0, 255, 3)
    return img


def _ros_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"   # nothing leaves loopback
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.setdefault("ROS_DOMAIN_ID", str(random.randrange(1, 100)))
    return env


def _node_command(args: argparse.Namespace, topics: List[str]) -> List[str]:
    exe = shutil.which("tv3s_node") or str(Path(sys.executable).with_name("tv3s_node"))
    params = [
        f"model:={args.model}",
        f"camera_topics:=[{', '.join(repr(t) for t in topics)}]",
        f"input_size:={args.input_size}",
        f"device:={args.device}",
        "reliability:=reliable",
    ]
    if args.weights:
        params.append(f"weights:={args.weights}")
    else:
        params.append("allow_random_weights:=true")
        params.append(f"model_overrides:='{args.model_overrides or TINY_OVERRIDES}'")
    if args.weights and args.model_overrides:
        # quoted: -p parses its value as YAML, and the parameter is a string holding YAML
        params.append(f"model_overrides:='{args.model_overrides}'")
    cmd = [exe, "--ros-args", "-r", "__node:=tv3s"]
    for p in params:
        cmd += ["-p", p]
    return cmd


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    env = _ros_env()
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")})
    os.environ.pop("ROS_LOCALHOST_ONLY", None)

    import cv2
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    from tv3s_ros.msg import ClassCoverage

    cameras = {"front": ("/demo/front/image_raw", (240, 320)),
               "rear": ("/demo/rear/image_raw/compressed", (200, 360))}
    topics = [topic for topic, _ in cameras.values()]
    if args.node_log == "-":
        log_file, log_path = None, "terminal"
    else:
        log_path = args.node_log or os.path.join(tempfile.gettempdir(), f"tv3s-demo-node-{os.getpid()}.log")
        log_file = open(log_path, "w")
    cmd = _node_command(args, topics)
    print(f"[demo] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, discovery on localhost only")
    print(f"[demo] starting the node: {' '.join(cmd)}")
    print(f"[demo] node log: {log_path}")
    if not args.weights:
        print("[demo] random weights: the pipeline is real, the class names are not (use --weights)")
    node_proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    rclpy.init()
    node = Node("tv3s_demo")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    publishers = {name: node.create_publisher(CompressedImage if topic.endswith("/compressed") else Image, topic, qos)
                  for name, (topic, _) in cameras.items()}
    received: Dict[str, List[ClassCoverage]] = {name: [] for name in cameras}
    lock = threading.Lock()

    def on_coverage(msg: ClassCoverage) -> None:
        with lock:
            received.setdefault(msg.camera_name, []).append(msg)
        top = sorted(zip(msg.fraction, msg.class_names), reverse=True)[:3]
        classes = ", ".join(f"{name} {100 * frac:.0f}%" for frac, name in top)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        reset = f" reset={msg.reset_reason}" if msg.reset_reason else ""
        print(f"[demo] {msg.camera_name:5s} t={stamp:8.3f} {msg.width}x{msg.height} "
              f"context={msg.frames_since_reset:3d} latency={1000 * msg.latency_s:6.1f} ms | {classes}{reset}")

    for name in cameras:
        node.create_subscription(ClassCoverage, f"/tv3s/{name}/coverage", on_coverage, qos)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def node_ready() -> bool:
        return all(pub.get_subscription_count() > 0 for pub in publishers.values())

    start = time.monotonic()
    status = 0
    try:
        while not node_ready():
            if node_proc.poll() is not None:
                raise RuntimeError(f"tv3s_node exited with code {node_proc.returncode} (log: {log_path})")
            if time.monotonic() - start > args.timeout:
                raise RuntimeError("tv3s_node did not subscribe to the cameras in time")
            time.sleep(0.1)
        print(f"[demo] node subscribed after {time.monotonic() - start:.1f} s; publishing {args.frames} frames per camera at {args.rate:g} Hz")
        for t in range(args.frames):
            now = node.get_clock().now().to_msg()
            for k, (name, (topic, (h, w))) in enumerate(cameras.items()):
                rgb = synthetic_frame(t, h, w, seed=k)
                if topic.endswith("/compressed"):
                    msg = CompressedImage(format="jpeg")
                    msg.data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
                else:
                    msg = Image(height=h, width=w, encoding="rgb8", step=3 * w)
                    msg.data = rgb.tobytes()
                msg.header.stamp = now
                msg.header.frame_id = f"{name}_camera"
                publishers[name].publish(msg)
            time.sleep(1.0 / args.rate)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and node_proc.poll() is None:
            with lock:
                if all(received[name] and received[name][-1].header.stamp == now for name in cameras):
                    break
            time.sleep(0.1)
        with lock:
            counts = {name: len(received[name]) for name in cameras}
        print("[demo] summary: " + ", ".join(f"{name}: {n}/{args.frames} frames segmented" for name, n in counts.items()))
        if node_proc.poll() is not None:
            print(f"[demo] error: tv3s_node exited with code {node_proc.returncode} (log: {log_path})", file=sys.stderr)
            status = 1
        elif not all(counts.values()):
            print(f"[demo] error: no output for some camera (log: {log_path})", file=sys.stderr)
            status = 1
        else:
            print("[demo] skipped frames are expected when the model is slower than the cameras (newest frame wins)")
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"[demo] error: {exc}", file=sys.stderr)
        status = 1
    finally:
        if node_proc.poll() is None:
            node_proc.send_signal(signal.SIGINT)
            try:
                node_proc.wait(15)
            except subprocess.TimeoutExpired:
                node_proc.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        if log_file:
            log_file.close()
        if status and log_path != "terminal":
            print("[demo] last lines of the node log:", file=sys.stderr)
            print("".join(open(log_path).readlines()[-20:]), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
