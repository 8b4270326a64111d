#!/usr/bin/env python3
"""Soak test of tv3s_node (the live ROS node; tv3s-bag has its own soak): many frames through a
real ROS 2 graph, watching the node process's memory, threads and file handles.

Two cameras (``front``: sensor_msgs/Image rgb8, ``rear``: CompressedImage jpeg) are published
from this process; the node is the ``tv3s_node`` console script with a tiny random model
(test/ros_helpers/tiny_model.py, written as a real preset + checkpoint). Each camera changes
its image size every ``--size-every`` of its frames and sends a corrupt message every
``1 / --corrupt`` frames (front: wrong data length, rear: truncated jpeg). Messages are paced
at ``--rate`` per second in total, above the model rate, so the node's newest-frame-wins path
is soaked too (overwritten frames are counted as skipped). This process subscribes to both
cameras' coverage and the front labels, so image outputs are computed as well.

Every 0.5 s it samples the node's VmRSS, thread count (/proc/<pid>/status) and open file
descriptors (/proc/<pid>/fd). After ``--warmup`` frames the figures must stay flat: RSS growth
(median of the last samples minus median of the first after warm-up) under ``--max-growth-mb``
and no more threads or descriptors at the end than after warm-up. Exit code 0 when all hold,
1 otherwise; ``--json`` prints the figures as one JSON object.

    python benchmarks/soak_node.py                      # 10,000 messages, ~50 s at 200 msg/s
    python benchmarks/soak_node.py --frames 50000 --rate 400 --json

Discovery stays on localhost; the domain is $ROS_DOMAIN_ID (77 when unset).
"""
from __future__ import annotations

import argparse
import array
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.pop("ROS_LOCALHOST_ONLY", None)
os.environ.setdefault("ROS_DOMAIN_ID", "77")

NS = "/soak"
SIZES = {  # per camera, cycled every --size-every frames of that camera
    "front": [(48, 64), (60, 80), (72, 96), (40, 56)],
    "rear": [(60, 80), (48, 64), (64, 112), (56, 72)],
}
DISTINCT = 6   # pre-rendered frames per camera and size (rendering is not what is soaked)


def _proc_figures(pid: int):
    rss_mb = threads = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_mb = int(line.split()[1]) / 1024.0
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_mb, threads, len(os.listdir(f"/proc/{pid}/fd"))


def _messages(camera: str, compressed: bool, seed: int):
    """{(h, w): [good messages], ...} and one corrupt message per size."""
    from ros_helpers.frames import make_frame
    from ros_helpers.messages import compressed_image, raw_image

    good, bad = {}, {}
    for h, w in SIZES[camera]:
        images = [make_frame(seed, i, h, w) for i in range(DISTINCT)]
        if compressed:
            good[(h, w)] = [compressed_image(im, 0, f"{camera}_optical") for im in images]
            broken = compressed_image(images[0], 0, f"{camera}_optical")
            broken.data = array.array("B", bytes(broken.data)[: len(broken.data) // 2])   # truncated jpeg
        else:
            good[(h, w)] = [raw_image(im, 0, f"{camera}_optical") for im in images]
            broken = raw_image(images[0], 0, f"{camera}_optical")
            broken.data = array.array("B", bytes(100))                                   # wrong data length
        bad[(h, w)] = broken
    return good, bad


def run(frames: int, rate: float, size_every: int, corrupt: float, warmup: int, log_path: Path) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from ros_helpers.tiny_model import write_tiny_model
    from sensor_msgs.msg import CompressedImage, Image

    from tv3s_ros.msg import ClassCoverage

    workdir = Path(tempfile.mkdtemp(prefix="tv3s_soak_"))
    preset, weights = write_tiny_model(workdir, seed=7)
    topics = {"front": f"{NS}/front/image_raw", "rear": f"{NS}/rear/image_raw/compressed"}
    exe = Path(sys.executable).parent / "tv3s_node"
    args = [str(exe), "--ros-args", "-r", f"__ns:={NS}", "-p", f"model:={preset}", "-p", f"weights:={weights}",
            "-p", "device:=cpu", "-p", f"camera_topics:=[{topics['front']}, {topics['rear']}]",
            "-p", "diagnostics_period_s:=0.5"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
    env.setdefault("OMP_NUM_THREADS", "1")
    log = open(log_path, "w")
    node = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))

    context = rclpy.Context()
    rclpy.init(context=context)
    probe = rclpy.create_node("tv3s_soak_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(probe)
    counts = {"front": 0, "rear": 0, "labels": 0}
    diagnostics = {}
    lock = threading.Lock()

    def on_coverage(msg, camera):
        with lock:
            counts[camera] += 1

    def on_labels(msg):
        with lock:
            counts["labels"] += 1

    def on_diag(msg):
        for status in msg.status:
            if status.name.startswith(f"{NS.lstrip('/')}/tv3s_node: camera "):
                with lock:
                    diagnostics[status.name.rsplit(" ", 1)[-1]] = {kv.key: kv.value for kv in status.values}

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for camera in topics:
        probe.create_subscription(ClassCoverage, f"{NS}/tv3s_node/{camera}/coverage",
                                  lambda m, c=camera: on_coverage(m, c), reliable)
    probe.create_subscription(Image, f"{NS}/tv3s_node/front/labels", on_labels, reliable)
    probe.create_subscription(DiagnosticArray, "/diagnostics", on_diag, reliable)
    best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    pubs = {"front": probe.create_publisher(Image, topics["front"], best_effort),
            "rear": probe.create_publisher(CompressedImage, topics["rear"], best_effort)}
    stop = threading.Event()

    def spin():
        while not stop.is_set() and context.ok():
            try:
                executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutting down
                return

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()

    messages = {"front": _messages("front", False, 1), "rear": _messages("rear", True, 2)}
    samples = []   # (frames sent, seconds, rss MB, threads, fds)
    result = {"frames": frames, "rate": rate, "size_every": size_every, "corrupt": corrupt, "warmup": warmup}
    try:
        deadline = time.monotonic() + 180
        while not (all(p.get_subscription_count() for p in pubs.values())
                   and probe.count_publishers(f"{NS}/tv3s_node/front/labels")):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tv3s_node did not come up:\n{log_path.read_text()}")
            time.sleep(0.1)
        time.sleep(0.5)
        corrupt_every = int(round(1 / corrupt)) if corrupt > 0 else 0
        start = last_sample = time.monotonic()
        sent = {"front": 0, "rear": 0}
        corrupt_sent = 0
        for i in range(frames):
            camera = "front" if i % 2 == 0 else "rear"
            k = sent[camera]
            size = SIZES[camera][(k // size_every) % len(SIZES[camera])]
            good, bad = messages[camera]
            if corrupt_every and k % corrupt_every == corrupt_every // 2:
                msg = bad[size]
                corrupt_sent += 1
            else:
                msg = good[size][k % DISTINCT]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
            pubs[camera].publish(msg)
            sent[camera] += 1
            now = time.monotonic()
            if now - last_sample >= 0.5:
                samples.append((i + 1, now - start, *_proc_figures(node.pid)))
                last_sample = now
            if node.poll() is not None:
                raise RuntimeError(f"tv3s_node exited with {node.returncode}:\n{log_path.read_text()[-5000:]}")
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - start
        time.sleep(2.0)   # the last frames processed, a last diagnostics period
        samples.append((frames, time.monotonic() - start, *_proc_figures(node.pid)))
    finally:
        node.send_signal(signal.SIGINT)
        try:
            code = node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
            code = node.wait()
        stop.set()
        spinner.join(5)
        executor.shutdown()
        probe.destroy_node()
        context.try_shutdown()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)

    after = [s for s in samples if s[0] >= warmup]
    if len(after) < 6:
        raise RuntimeError(f"too few samples after warm-up ({len(after)}); send more frames")
    n = max(3, len(after) // 5)
    rss_first = statistics.median(s[2] for s in after[:n])
    rss_last = statistics.median(s[2] for s in after[-n:])
    with lock:
        result.update({
            "seconds": round(elapsed, 1),
            "sent_per_camera": sent, "corrupt_sent": corrupt_sent,
            "published_coverage": {c: counts[c] for c in ("front", "rear")}, "published_front_labels": counts["labels"],
            "diagnostics": {cam: {k: d.get(k) for k in ("received", "processed", "skipped", "rejected", "resets",
                                                         "resets.size_changed", "errors")}
                            for cam, d in diagnostics.items()},
        })
    result.update({
        "node_exit_code": code,
        "rss_mb_at_warmup": round(rss_first, 1), "rss_mb_at_end": round(rss_last, 1),
        "rss_growth_mb": round(rss_last - rss_first, 1),
        "rss_mb_min_max_after_warmup": [round(min(s[2] for s in after), 1), round(max(s[2] for s in after), 1)],
        # "At the end": the floor over the last quarter of the samples. A leak raises it; one
        # sample can catch a descriptor that lives for a single jpeg decode (the stderr pipe).
        "threads_at_warmup": after[0][3], "threads_at_end": min(s[3] for s in after[-max(1, len(after) // 4):]),
        "threads_max_after_warmup": max(s[3] for s in after),
        "fds_at_warmup": after[0][4], "fds_at_end": min(s[4] for s in after[-max(1, len(after) // 4):]),
        "fds_max_after_warmup": max(s[4] for s in after),
        "samples": len(samples), "log": str(log_path),
    })
    return result


def check(result: dict, max_growth_mb: float) -> list:
    """Problems found (empty: the soak passed)."""
    problems = []
    if result["node_exit_code"] != 0:
        problems.append(f"the node exited with {result['node_exit_code']}")
    if result["rss_growth_mb"] >= max_growth_mb:
        problems.append(f"RSS grew by {result['rss_growth_mb']} MB after warm-up (limit {max_growth_mb})")
    if result["threads_at_end"] > result["threads_at_warmup"]:
        problems.append(f"threads {result['threads_at_warmup']} -> {result['threads_at_end']}")
    if result["fds_at_end"] > result["fds_at_warmup"]:
        problems.append(f"file descriptors {result['fds_at_warmup']} -> {result['fds_at_end']}")
    for cam in ("front", "rear"):
        if result["published_coverage"][cam] < 20:
            problems.append(f"{cam}: only {result['published_coverage'][cam]} frames published")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_000, help="messages in total, both cameras (default 10000)")
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second in total (default 200)")
    parser.add_argument("--size-every", type=int, default=500, help="frames of a camera between size changes")
    parser.add_argument("--corrupt", type=float, default=0.01, help="share of corrupt messages (default 0.01)")
    parser.add_argument("--warmup", type=int, default=0, help="frames before the flat-memory window "
                        "(default: a fifth of --frames)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--log", default="", help="node log file (default: a temporary file)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    log_path = Path(args.log) if args.log else Path(tempfile.mkstemp(prefix="tv3s_soak_node_", suffix=".log")[1])
    result = run(args.frames, args.rate, args.size_every, args.corrupt, args.warmup or args.frames // 5, log_path)
    result["problems"] = check(result, args.max_growth_mb)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
