"""tv3s-demo: run tv3s_node on the synthetic driving world and show what it segments.

This process publishes a camera (``sensor_msgs/Image``, rgb8) of the synthetic world
(``tv3s_ros.data.World``, a fixed seed, 256x512) through a real ROS 2 graph, starts
``tv3s_node`` as a separate process, prints every ``ClassCoverage`` it receives and writes an
image of a few frames: camera | predicted overlay | ground-truth overlay.

By default the node runs the ``tv3s_demo`` preset with the weights it ships (trained on this
world by tv3s-train), so the printed classes are real: road, car, sky, building, ...
``--model tv3s_b0_cityscapes --allow-random-weights`` runs the old smoke test instead: a tiny
random-weight network, real pipeline, meaningless classes.
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
  tv3s-demo                                  # the shipped demo model on the synthetic world
  tv3s-demo --frames 40 --rate 2 --save demo.png
  tv3s-demo --save docs/demo.png --frames 24 --rate 1 --panels 2 --panel-scale 0.5   # README image
  tv3s-demo --model tv3s_b0_cityscapes --allow-random-weights   # tiny random model: plumbing only
  tv3s-demo --model tv3s_b1_cityscapes --weights model/weights/tv3s_b1_city.pth

The node's own log goes to the file printed at the start (or to the terminal with --node-log -).
DDS traffic stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, private ROS_DOMAIN_ID).
"""

# Small enough for a laptop CPU: MiT-B0 with a narrow head (random-weight mode only).
TINY_OVERRIDES = "{embed_dim: 64, n_mambas: 4}"
WORLD_SEED = 2000          # not one the demo model was trained on (1000..1023)
WORLD_SIZE = (256, 512)
TOPIC = "/demo/front/image_raw"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tv3s-demo", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20, help="frames to publish (default 20)")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="camera rate in Hz (default 2; a slower model skips frames, newest wins)")
    parser.add_argument("--seed", type=int, default=WORLD_SEED, help=f"world seed (default {WORLD_SEED})")
    parser.add_argument("--model", default="tv3s_demo", help="preset name or YAML path (default tv3s_demo)")
    parser.add_argument("--weights", default="",
                        help="checkpoint (.pth); default: the weights the preset ships (tv3s_demo)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run a preset without weights (random: the classes are meaningless)")
    parser.add_argument("--model-overrides", default=None,
                        help=f"YAML dict of preset overrides (default for random weights: {TINY_OVERRIDES})")
    parser.add_argument("--input-size", default="official",
                        help="model input size policy (default official: 384x768 for tv3s_demo)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--save", default=None, metavar="PATH",
                        help="image to write (.png; default: tv3s-demo.png in the temp folder)")
    parser.add_argument("--panels", type=int, default=3, help="frames shown in the image (default 3)")
    parser.add_argument("--panel-scale", type=float, default=1.0, help="scale of each panel (default 1)")
    parser.add_argument("--node-log", default=None, help="file for the node's log ('-' for the terminal)")
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    return parser.parse_args(argv)


def save_panels(path: str, rows: List[tuple], palette: np.ndarray, scale: float) -> int:
    """Rows of camera | predicted overlay | ground-truth overlay; a palette PNG. Returns bytes."""
    import cv2
    from PIL import Image as PILImage

    def overlay(rgb, labels):
        colour = palette[np.minimum(labels, len(palette) - 1)]
        colour[labels >= len(palette)] = rgb[labels >= len(palette)]    # ignore (255): the image
        return (0.45 * rgb + 0.55 * colour).astype(np.uint8)

    lines = []
    for rgb, pred, gt in rows:
        line = np.concatenate([rgb, overlay(rgb, pred), overlay(rgb, gt)], axis=1)
        if scale != 1.0:
            line = cv2.resize(line, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        lines.append(line)
    sheet = np.concatenate(lines, axis=0)
    # 256 colours are plenty for flat overlays and keep the file small (README image).
    PILImage.fromarray(sheet).quantize(colors=256).save(path, optimize=True)
    return os.path.getsize(path)


def _ros_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"   # nothing leaves loopback
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.setdefault("ROS_DOMAIN_ID", str(random.randrange(1, 100)))
    return env


def _plan(args: argparse.Namespace):
    """(overrides YAML or None, what the node will run): shipped weights unless --weights; a
    tiny random network only with --allow-random-weights and a preset that ships none."""
    from tv3s_ros.model.presets import load_config

    overrides = args.model_overrides
    if args.weights:
        return overrides, f"weights {args.weights}"
    if load_config(args.model, **_yaml_dict(overrides)).weights:
        return overrides, f"the weights shipped with preset {args.model}"
    if args.allow_random_weights:
        return overrides or TINY_OVERRIDES, "RANDOM weights: the pipeline is real, the class names are not"
    raise SystemExit(f"tv3s-demo: error: preset {args.model} ships no weights: pass --weights, or "
                     "--allow-random-weights for a plumbing check")


def _node_command(args: argparse.Namespace, topics: List[str], overrides: Optional[str]) -> List[str]:
    exe = shutil.which("tv3s_node") or str(Path(sys.executable).with_name("tv3s_node"))
    params = [
        f"model:={args.model}",
        f"camera_topics:=[{', '.join(repr(t) for t in topics)}]",
        f"input_size:={args.input_size}",
        f"device:={args.device}",
        "reliability:=reliable",
        "publish:=[labels]",
    ]
    if args.weights:
        params.append(f"weights:={args.weights}")
    if args.allow_random_weights:
        params.append("allow_random_weights:=true")
    if overrides:
        # quoted: -p parses its value as YAML, and the parameter is a string holding YAML
        params.append(f"model_overrides:='{overrides}'")
    cmd = [exe, "--ros-args", "-r", "__node:=tv3s"]
    for p in params:
        cmd += ["-p", p]
    return cmd


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    env = _ros_env()
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")})
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    overrides, note = _plan(args)

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from tv3s_ros.data import World
    from tv3s_ros.model.presets import load_config
    from tv3s_ros.msg import ClassCoverage

    # The world is rendered up front: the camera then publishes at its rate, not the renderer's.
    world = list(World(args.seed, WORLD_SIZE).frames(args.frames))
    if args.node_log == "-":
        log_file, log_path = None, "terminal"
    else:
        log_path = args.node_log or os.path.join(tempfile.gettempdir(), f"tv3s-demo-node-{os.getpid()}.log")
        log_file = open(log_path, "w")
    save = args.save or os.path.join(tempfile.gettempdir(), "tv3s-demo.png")
    cmd = _node_command(args, [TOPIC], overrides)
    print(f"[demo] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, discovery on localhost only")
    print(f"[demo] starting the node: {' '.join(cmd)}")
    print(f"[demo] node log: {log_path}")
    print(f"[demo] model {args.model} with {note}")
    print(f"[demo] camera: synthetic world seed {args.seed}, {WORLD_SIZE[1]}x{WORLD_SIZE[0]}, {args.frames} frames")
    node_proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    rclpy.init()
    node = Node("tv3s_demo")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    publisher = node.create_publisher(Image, TOPIC, qos)
    coverage: List[ClassCoverage] = []
    labels: Dict[int, np.ndarray] = {}      # stamp (ns) -> predicted labels
    lock = threading.Lock()

    def on_coverage(msg: ClassCoverage) -> None:
        with lock:
            coverage.append(msg)
        top = sorted(zip(msg.fraction, msg.class_names), reverse=True)[:4]
        classes = ", ".join(f"{name} {100 * frac:.0f}%" for frac, name in top)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        reset = f" reset={msg.reset_reason}" if msg.reset_reason else ""
        print(f"[demo] {msg.camera_name} t={stamp:7.3f} {msg.width}x{msg.height} "
              f"context={msg.frames_since_reset:3d} latency={1000 * msg.latency_s:6.1f} ms | {classes}{reset}")

    def on_labels(msg: Image) -> None:
        rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width]
        with lock:
            labels[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = rows.copy()

    node.create_subscription(ClassCoverage, "/tv3s/front/coverage", on_coverage, qos)
    node.create_subscription(Image, "/tv3s/front/labels", on_labels, qos)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    start = time.monotonic()
    status = 0
    stamps: List[int] = []
    try:
        while publisher.get_subscription_count() == 0:
            if node_proc.poll() is not None:
                raise RuntimeError(f"tv3s_node exited with code {node_proc.returncode} (log: {log_path})")
            if time.monotonic() - start > args.timeout:
                raise RuntimeError("tv3s_node did not subscribe to the camera in time")
            time.sleep(0.1)
        print(f"[demo] node subscribed after {time.monotonic() - start:.1f} s; publishing {args.frames} "
              f"frames at {args.rate:g} Hz")
        base = node.get_clock().now().nanoseconds
        for t, (rgb, _, _) in enumerate(world):
            stamp = base + int(t * 1e9 / args.rate)
            stamps.append(stamp)
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=3 * rgb.shape[1])
            msg.data = rgb.tobytes()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            msg.header.frame_id = "front_camera"
            publisher.publish(msg)
            time.sleep(1.0 / args.rate)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and node_proc.poll() is None:
            with lock:
                if stamps[-1] in labels:
                    break
            time.sleep(0.1)
        with lock:
            done = {s: labels[s] for s in stamps if s in labels}
            mean = _mean_coverage(coverage)
        print(f"[demo] summary: {len(done)}/{args.frames} frames segmented; mean coverage: {mean}")
        if node_proc.poll() is not None:
            print(f"[demo] error: tv3s_node exited with code {node_proc.returncode} (log: {log_path})", file=sys.stderr)
            status = 1
        elif not done:
            print(f"[demo] error: no output from the node (log: {log_path})", file=sys.stderr)
            status = 1
        else:
            if len(done) < args.frames:
                print("[demo] skipped frames are expected when the model is slower than the camera (newest frame wins)")
            # Frames spread over the run (the last ones have the most temporal context).
            chosen = [s for s in stamps if s in done]
            picks = sorted({chosen[round(k * (len(chosen) - 1) / max(1, args.panels - 1))]
                            for k in range(min(args.panels, len(chosen)))})
            rows = [(world[stamps.index(s)][0], done[s], world[stamps.index(s)][1]) for s in picks]
            cfg = load_config(args.model, **_yaml_dict(overrides))
            size = save_panels(save, rows, np.array(cfg.palette, np.uint8), args.panel_scale)
            print(f"[demo] wrote {save} ({size // 1024} KB): camera | prediction | ground truth, "
                  f"frames {', '.join(str(stamps.index(s)) for s in picks)}")
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


def _yaml_dict(text: Optional[str]) -> dict:
    import yaml

    return (yaml.safe_load(text) or {}) if text else {}


def _mean_coverage(messages) -> str:
    """The classes' mean pixel share over all frames, largest first."""
    totals: Dict[str, float] = {}
    for msg in messages:
        for name, frac in zip(msg.class_names, msg.fraction):
            totals[name] = totals.get(name, 0.0) + float(frac)
    n = max(1, len(messages))
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:8]
    return ", ".join(f"{name} {100 * v / n:.0f}%" for name, v in top) or "none"


if __name__ == "__main__":
    sys.exit(main())
