"""tv3s-bag --ray on a real local Ray cluster (2 CPUs, started once for the module, no mocks).

Every fleet output is compared with the sequential tool's output of the same bag: labels
pixel for pixel, and per frame the header, bag time, reset reason and class coverage.
Tiny random-weight model on 24x32 frames, as the other bag tests.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tiny import TINY_PRESET, tiny_cli, tiny_overrides

from tv3s_ros.model import build_model, save_checkpoint
from tv3s_ros.tools import bag as bag_tool

ray = pytest.importorskip("ray")

PRESET = TINY_PRESET
TINY = tiny_overrides()
TINY_CLI = tiny_cli()
T0 = 1_700_000_000 * 10**9
FRONT, LEFT = "/cam/front/image_raw", "/cam/left/image_raw"


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray instance, bound to localhost; the tool joins it (--ray auto)."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(PRESET, **TINY),
                           tmp_path_factory.mktemp("weights") / "tiny.pth")


def write_bag(path: Path, stamps_s: dict, size=(24, 32)) -> None:
    """Raw rgb8 cameras; ``stamps_s``: topic -> header stamps (s), written at those bag times."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    messages = []
    for k, (topic, stamps) in enumerate(stamps_s.items()):
        conn = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=store)
        for i, t in enumerate(stamps):
            messages.append((T0 + i * 100_000_000 + k * 1_000_000, conn, int(T0 + t * 1e9), i, k))
    for log_ns, conn, stamp, i, k in sorted(messages, key=lambda m: m[0]):
        rgb = np.stack([(x * 7 + i) % 256, (y * 5 + 40 * k) % 256, (x + y + 3 * i) % 256],
                       -1).astype(np.uint8)
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
            frame_id=conn.topic.split("/")[2])
        msg = types["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="rgb8",
                                             is_bigendian=0, step=3 * w, data=rgb.reshape(-1))
        writer.write(conn, log_ns, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    writer.close()


def steady(n: int) -> dict:
    return {FRONT: [i * 0.1 for i in range(n)]}


def tool_args(checkpoint, *extra) -> list:
    return ["--model", PRESET, "--weights", str(checkpoint), "--model-overrides", TINY_CLI,
            "--input-size", "32x64", "--device", "cpu", "--cpu-threads", "1", "--no-progress",
            *map(str, extra)]


def outputs(bag: Path) -> dict:
    """topic -> per message: bag time, header, labels bytes / coverage fields."""
    got: dict = {}
    with AnyReader([bag]) as reader:
        for conn, log_ns, raw in reader.messages():
            if not conn.topic.startswith("/tv3s/"):
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            head = (log_ns, msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)
            if conn.topic.endswith("/labels"):
                item = head + (bytes(np.asarray(msg.data, np.uint8)),)
            elif conn.topic.endswith("/coverage"):
                item = head + (msg.reset_reason, msg.frames_since_reset,
                               tuple(msg.class_ids.tolist()), tuple(msg.pixel_count.tolist()))
            else:
                continue
            got.setdefault(conn.topic, []).append(item)
    return got


def assert_identical(fleet_bag: Path, sequential_bag: Path) -> None:
    a, b = outputs(fleet_bag), outputs(sequential_bag)
    assert sorted(a) == sorted(b)
    for topic in b:
        assert len(a[topic]) == len(b[topic]) > 0, topic
        for i, (x, y) in enumerate(zip(a[topic], b[topic])):
            assert x == y, f"{topic} message {i} differs"


def sequential(tmp_path: Path, inputs: Path, checkpoint) -> Path:
    out = tmp_path / "sequential"
    assert bag_tool.main([str(inputs), str(out), *tool_args(checkpoint)]) in (0, 1)
    return out


def summary(path: Path) -> dict:
    return {Path(b["input"]).name: b for b in json.loads(path.read_text())["bags"]}


# ---------------------------------------------------------------------------------- tests
def test_six_bags_on_two_actors_match_sequential(tmp_path, cluster, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(6):
        write_bag(inputs / f"drive_{k}", steady(4 + 2 * k))
    seq = sequential(tmp_path, inputs, checkpoint)
    out = tmp_path / "fleet"
    status = bag_tool.main([str(inputs), str(out), *tool_args(checkpoint, "--ray", "--workers", 2)])
    assert status == 0
    bags = summary(out / "fleet_summary.json")
    assert len(bags) == 6 and all(b["status"] == "complete" for b in bags.values())
    assert len({w for b in bags.values() for w in b["workers"]}) == 2  # both actors worked
    for k in range(6):
        assert_identical(out / f"drive_{k}", seq / f"drive_{k}")
    assert bags["drive_5"]["frames"] == 14 and bags["drive_5"]["resets"] == {"first_frame": 1}
    csv_text = (out / "fleet_summary.csv").read_text()
    assert csv_text.startswith("input,output,status,frames,resets") and csv_text.count("\n") == 7
    assert not list(out.glob("*.tv3s-*"))   # no staging or pieces left


def test_long_bag_split_at_reset_points_merges_identically(tmp_path, cluster, checkpoint):
    # Both cameras jump 2 s at frame 10 and back in time at frame 30: the state resets for
    # both there (cut points). At frame 20 only front has a gap: no cut (left carries state).
    front = [i * 0.1 + (2 if i >= 10 else 0) + (2 if i >= 20 else 0) - (8 if i >= 30 else 0)
             for i in range(40)]
    left = [i * 0.1 + 0.05 + (2 if i >= 10 else 0) - (6 if i >= 30 else 0) for i in range(40)]
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_bag(inputs / "long", {FRONT: front, LEFT: left})
    seq = sequential(tmp_path, inputs / "long", checkpoint)
    out = tmp_path / "fleet"
    status = bag_tool.main([str(inputs / "long"), str(out),
                            *tool_args(checkpoint, "--ray", "--workers", 2,
                                       "--split-min-frames", 8)])
    assert status == 0
    row = summary(tmp_path / "fleet.fleet_summary.json")["long"]
    assert row["pieces"] == 3 and row["frames"] == 80
    assert row["resets"] == {"first_frame": 2, "gap": 3, "time_backwards": 2}
    assert_identical(out, seq)
    assert not (tmp_path / "fleet.tv3s-pieces").exists()


def _actor_names():
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("tv3s-bag-worker") and a["name"].endswith(f"-{os.getpid()}")]


def test_killed_actor_bag_completes_on_another_actor(tmp_path, cluster, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_bag(inputs / "big", steady(120))
    write_bag(inputs / "small", steady(6))
    seq = sequential(tmp_path, inputs, checkpoint)
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for name in _actor_names():
                try:
                    actor = ray.get_actor(name, namespace=ray.get_runtime_context().namespace)
                    frames, current = ray.get(actor.progress.remote(), timeout=5)
                except Exception:  # noqa: BLE001 - a dying actor: the test reads the outcome
                    continue
                if current.startswith("big") and frames >= 5:
                    ray.kill(actor)   # mid-bag: its partial output stays in staging
                    killed.append(name)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = tmp_path / "fleet"
    status = bag_tool.main([str(inputs), str(out),
                            *tool_args(checkpoint, "--ray", "--workers", 2, "--verbose")])
    thread.join()
    assert killed, "no actor was killed mid-bag"
    assert status == 0
    bags = summary(out / "fleet_summary.json")
    assert bags["big"]["status"] == "complete" and bags["big"]["retries"] == 1
    assert bags["small"]["retries"] == 0
    lost = killed[0].split("-")[3]   # tv3s-bag-worker-N-PID -> N
    assert bags["big"]["workers"][0] == f"worker-{lost} (lost)"
    assert len(bags["big"]["workers"]) == 2 and bags["big"]["workers"][1] != f"worker-{lost}"
    for name in ("big", "small"):
        assert_identical(out / name, seq / name)


def test_rerun_after_interruption_skips_complete_outputs(tmp_path, cluster, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_bag(inputs / "big", steady(300))
    for k in range(3):
        write_bag(inputs / f"small_{k}", steady(5))
    out = tmp_path / "fleet"

    def interrupt():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any((out / f"small_{k}").exists() for k in range(3)):
                os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C: the driver stops the fleet
                return
            time.sleep(0.02)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    status = bag_tool.main([str(inputs), str(out), *tool_args(checkpoint, "--ray", "--workers", 2)])
    thread.join()
    assert status == 130
    assert not (out / "big").exists()
    staged = out / "big.tv3s-incomplete" / "big"
    meta = yaml.safe_load((staged / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["custom_data"]["tv3s.status"].startswith("incomplete: interrupted by SIGINT")
    first = summary(out / "fleet_summary.json")
    assert first["big"]["status"] == "interrupted"
    done = {n: (out / n / "metadata.yaml").stat().st_mtime_ns for n, b in first.items()
            if b["status"] == "complete"}
    assert done

    status = bag_tool.main([str(inputs), str(out), *tool_args(checkpoint, "--ray", "--workers", 2)])
    assert status == 0
    second = summary(out / "fleet_summary.json")
    for name, mtime in done.items():
        assert second[name]["status"] == "skipped"
        assert (out / name / "metadata.yaml").stat().st_mtime_ns == mtime  # not rewritten
    assert second["big"]["status"] == "complete" and not (out / "big.tv3s-incomplete").exists()
    seq = sequential(tmp_path, inputs, checkpoint)
    for name in second:
        assert_identical(out / name, seq / name)


def test_corrupt_bag_is_reported_and_the_rest_complete(tmp_path, cluster, checkpoint, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_bag(inputs / "good_a", steady(4))
    write_bag(inputs / "good_b", steady(6))
    (inputs / "broken.mcap").write_bytes(b"\x89MCAP0\r\n" + os.urandom(300))
    out = tmp_path / "fleet"
    status = bag_tool.main([str(inputs), str(out), *tool_args(checkpoint, "--ray", "--workers", 2)])
    assert status == 1
    err = capsys.readouterr().err
    assert sum("broken.mcap" in line for line in err.splitlines()
               if line.startswith("tv3s-bag: error:")) == 1
    bags = summary(out / "fleet_summary.json")
    assert bags["broken.mcap"]["status"] == "failed" and bags["broken.mcap"]["error"]
    assert bags["good_a"]["status"] == bags["good_b"]["status"] == "complete"
    assert (out / "good_a" / "metadata.yaml").exists() and not (out / "broken").exists()


def test_without_ray_one_line_error_exit_2(tmp_path, checkpoint):
    write_bag(tmp_path / "drive", steady(2))
    code = ("import sys; sys.modules['ray'] = None  # import ray now raises ImportError\n"
            "from tv3s_ros.tools.bag import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "drive"), str(tmp_path / "out"),
                           *tool_args(checkpoint, "--ray")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["tv3s-bag: error: --ray needs Ray, an optional extra of tv3s_ros: "
                     "pip install .[fleet] (or pip install ray==2.40.0)"], proc.stderr
    assert not (tmp_path / "out").exists()
    # The module imports without Ray (lazy imports).
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['ray'] = None; "
                           "import tv3s_ros.tools.fleet, tv3s_ros.bag.split"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
