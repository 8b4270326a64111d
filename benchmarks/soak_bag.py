"""Soak of tv3s-bag: resident memory, threads and file handles over a long run.

    python benchmarks/soak_bag.py --frames 10000            # the recorded soak (benchmarks/README.md)
    python benchmarks/soak_bag.py --frames 1000 --json x.json

Writes a rosbag2 with two cameras (a raw rgb8 Image and a jpeg CompressedImage), FRAMES
frames in all, the image size changing every --size-every frames per camera and 1 % corrupt
messages (truncated CDR on the raw camera, garbled jpeg on the other), runs a real tv3s-bag
process on it (tiny random model, one CPU thread) and samples the child's /proc every
--sample-s: VmRSS, threads (/proc/PID/task) and open file descriptors (/proc/PID/fd). The
frame count at each sample comes from the progress bar. Verdict after warm-up (the first
--warmup frames): RSS growth under --max-growth-mb, and no more threads or descriptors than
at the end of warm-up. Exit status 0 when the verdict holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

RAW_TOPIC = "/cam/front/image_raw"
JPEG_TOPIC = "/cam/left/image_raw/compressed"
SIZES = [(24, 32), (32, 48), (40, 40), (28, 56)]  # cycled every --size-every frames
T0 = 1_700_000_000 * 10**9
TINY_CLI = "{embed_dim: 32, window: 4, shift: 2, n_mambas: 2}"


def write_soak_bag(path: Path, frames: int, size_every: int = 500, corrupt_every: int = 100) -> dict:
    """Two cameras, ``frames`` messages in all; returns what was written."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    raw = writer.add_connection(RAW_TOPIC, "sensor_msgs/msg/Image", typestore=store)
    jpeg = writer.add_connection(JPEG_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=store)
    corrupt = 0
    for n in range(frames):
        camera, i = n % 2, n // 2
        h, w = SIZES[(i // size_every) % len(SIZES)]
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([(x * 9 + i) % 256, (y * 7 + 50 * camera) % 256, (x + y + 5 * i) % 256],
                       -1).astype(np.uint8)
        stamp = T0 + i * 100_000_000 + camera * 1_000_000
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
            frame_id=("front", "left")[camera])
        bad = n % corrupt_every == corrupt_every // 2
        corrupt += bad
        if camera == 0:
            msg = types["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="rgb8",
                                                 is_bigendian=0, step=3 * w, data=rgb.reshape(-1))
            data = bytes(store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            writer.write(raw, stamp, data[:40] if bad else data)
        else:
            ok, enc = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            payload = np.frombuffer(b"\xff\xd8\xff\xe0garbage" * 4, np.uint8) if bad else enc.reshape(-1)
            msg = types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=payload)
            writer.write(jpeg, stamp, store.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
    writer.close()
    return {"frames": frames, "corrupt": corrupt, "size_every": size_every}


def _proc_sample(pid: int) -> Optional[dict]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        return {"rss_mb": rss_kb / 1024, "threads": len(os.listdir(f"/proc/{pid}/task")),
                "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except (OSError, AttributeError):  # the process has just ended
        return None


def run_soak(workdir: Path, frames: int, size_every: int = 500, warmup: int = 1000,
             sample_s: float = 0.5, max_growth_mb: float = 50.0, input_size: str = "keep_aspect:32",
             timeout_s: float = 3600) -> dict:
    """Write the bag, run tv3s-bag on it, sample its /proc; returns the figures and verdict."""
    bag, out = workdir / "soak", workdir / "soak_seg"
    written = write_soak_bag(bag, frames, size_every)
    cmd = [sys.executable, "-m", "tv3s_ros.tools.bag", str(bag), str(out), "--overwrite",
           "--model", "tv3s_b0_cityscapes", "--allow-random-weights", "--seed", "0",
           "--model-overrides", TINY_CLI, "--input-size", input_size, "--device", "cpu",
           "--cpu-threads", "1", "--summary-json", str(workdir / "summary.json")]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = {"done": 0, "stderr": ""}

    def read_progress():
        for chunk in iter(lambda: proc.stderr.read(256), ""):
            state["stderr"] = (state["stderr"] + chunk)[-20000:]
            counts = re.findall(r"(\d+)/\d+ \[", state["stderr"][-600:])
            if counts:
                state["done"] = int(counts[-1])

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    samples = []
    while proc.poll() is None:
        sample = _proc_sample(proc.pid)
        if sample is not None:
            sample.update(frames_done=state["done"], t_s=round(time.monotonic() - started, 1))
            samples.append(sample)
        if time.monotonic() - started > timeout_s:
            proc.kill()
            break
        time.sleep(sample_s)
    stdout = proc.stdout.read()
    reader.join(timeout=10)
    wall = time.monotonic() - started
    after = [s for s in samples if s["frames_done"] >= warmup]
    figures = {
        "frames": written["frames"], "corrupt_written": written["corrupt"],
        "size_every": size_every, "input_size": input_size, "exit_status": proc.returncode,
        "wall_s": round(wall, 1), "samples": len(samples), "warmup_frames": warmup,
    }
    if after:
        base = after[0]
        figures.update(
            rss_start_mb=round(samples[0]["rss_mb"], 1),
            rss_after_warmup_mb=round(base["rss_mb"], 1),
            rss_max_mb=round(max(s["rss_mb"] for s in after), 1),
            rss_end_mb=round(after[-1]["rss_mb"], 1),
            rss_growth_mb=round(max(s["rss_mb"] for s in after) - base["rss_mb"], 1),
            threads_after_warmup=base["threads"], threads_max=max(s["threads"] for s in after),
            fds_after_warmup=base["fds"], fds_max=max(s["fds"] for s in after),
            # A leak raises the floor; a single sample can catch a descriptor that lives for
            # one decode (the jpeg stderr pipe) or the final metadata/summary writes.
            threads_end=min(s["threads"] for s in after[-max(1, len(after) // 4):]),
            fds_end=min(s["fds"] for s in after[-max(1, len(after) // 4):]))
    summary_path = workdir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        bag_summary = summary["bags"][0]
        figures.update(frames_processed=summary["frames"],
                       corrupt_skipped=sum(c["count"] for c in bag_summary["corrupt"]),
                       resets={name: cam["resets"] for name, cam in bag_summary["cameras"].items()},
                       fps=round(summary["fps"], 1))
    figures["ok"] = bool(
        proc.returncode == 0 and after
        and figures["rss_growth_mb"] < max_growth_mb
        and figures["threads_end"] <= figures["threads_after_warmup"]
        and figures["fds_end"] <= figures["fds_after_warmup"]
        and figures.get("frames_processed", 0) + figures.get("corrupt_skipped", 0) == frames)
    if not figures["ok"]:
        figures["stderr_tail"] = state["stderr"][-2000:]
        figures["stdout_tail"] = stdout[-2000:]
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10000, help="messages in all (two cameras)")
    parser.add_argument("--size-every", type=int, default=500,
                        help="frames per camera between image size changes (default 500)")
    parser.add_argument("--warmup", type=int, default=1000, help="frames before the RSS baseline")
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--input-size", default="keep_aspect:32")
    parser.add_argument("--workdir", type=Path, help="keep the bags here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tv3s_soak_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        figures = run_soak(workdir, args.frames, args.size_every, args.warmup,
                           max_growth_mb=args.max_growth_mb, input_size=args.input_size)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
