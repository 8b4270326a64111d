"""tv3s-bag end to end: bags built with rosbags, processed by the tool, read back with rosbags.

The input bags hold two cameras (a raw bgr8 ``Image`` and a png ``CompressedImage``) whose
header stamps contain a long gap and a jump backwards, plus corrupt messages. Labels in the
output are compared with the model run offline (``build_model`` + the same checkpoint,
``forward_stream`` frame by frame with resets where the recording calls for them), so the
tool cannot drift from the model or lose state between frames.

Tiny random-weight model (MiT-B0, 32-wide head, 2 Mamba layers) on 64-pixel-high inputs: the
whole file runs in well under a minute on two cores.
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from tiny import TINY_PRESET, tiny_cli, tiny_overrides

from tv3s_ros.model import build_model, load_checkpoint, save_checkpoint
from tv3s_ros.preprocess import logits_to_size, parse_input_size, to_model_input
from tv3s_ros.tools import bag as bag_tool

REPO = Path(__file__).resolve().parents[2]
TV3S_BAG = Path(sys.executable).parent / "tv3s-bag"

PRESET = TINY_PRESET
TINY = tiny_overrides()
TINY_CLI = tiny_cli()
INPUT_SIZE = "keep_aspect:64"   # front 48x64 -> 64x96, left 32x96 -> 64x192: separate batches
MAX_GAP_S = 1.0

FRONT = "/sensing/camera/front/image_raw"             # sensor_msgs/Image, bgr8
LEFT = "/sensing/camera/left/image_raw/compressed"    # sensor_msgs/CompressedImage, png
FRONT_SIZE = (48, 64)
LEFT_SIZE = (32, 96)
T0 = 1_700_000_000 * 10**9      # header stamps (epoch ns)
LOG0 = 1_700_000_100 * 10**9    # recorder (log) times

# Front header stamps (s after T0): 2.0 s gap before index 4 (> max_gap_s), jump back before
# index 6 (a bag loop recorded again). Left: regular 10 Hz. Expected resets by construction.
FRONT_T = [0.0, 0.1, 0.2, 0.3, 2.3, 2.4, 1.0, 1.1]
FRONT_RESETS = {0: "first_frame", 4: "gap", 6: "time_backwards"}
LEFT_T = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55]
LEFT_RESETS = {0: "first_frame"}


# ---------------------------------------------------------------------------------- inputs
def scene(t: int, size, seed: int) -> np.ndarray:
    """Deterministic RGB frame: gradients plus a moving bright square."""
    h, w = size
    rng = np.random.default_rng(seed * 1000 + t)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w), (y * 255 // h), ((x + y + 9 * t) * 3) % 256], -1)
    img = (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
    cx = (5 + 6 * t) % w
    img[h // 4: h // 4 + 10, cx: cx + 10] = (250, 240, 30)
    return img


@dataclass
class Frame:
    topic: str
    log_ns: int
    stamp_ns: int
    frame_id: str
    rgb: np.ndarray | None      # None: corrupt message


def camera_frames() -> list:
    """Both cameras interleaved in recording order, with two corrupt messages."""
    frames = []
    for i, t in enumerate(FRONT_T):
        frames.append(Frame(FRONT, LOG0 + i * 100_000_000, T0 + int(t * 1e9), "cam_front",
                            scene(i, FRONT_SIZE, 1)))
    for i, t in enumerate(LEFT_T):
        frames.append(Frame(LEFT, LOG0 + i * 100_000_000 + 50_000_000, T0 + int(t * 1e9),
                            "cam_left", scene(i, LEFT_SIZE, 2)))
    # Corrupt: a truncated message on front (bytes cut short) and a broken png on left,
    # both recorded between valid frames: the state must carry across them.
    frames.append(Frame(FRONT, LOG0 + 250_000_000, T0 + 250_000_000, "cam_front", None))
    frames.append(Frame(LEFT, LOG0 + 260_000_000, T0 + 260_000_000, "cam_left", None))
    return sorted(frames, key=lambda f: f.log_ns)


def _header(types, stamp_ns: int, frame_id: str, ros1: bool = False):
    stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    if ros1:
        return types["std_msgs/msg/Header"](seq=0, stamp=stamp, frame_id=frame_id)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def image_message(store, frame: Frame, ros1: bool = False):
    types = store.types
    header = _header(types, frame.stamp_ns, frame.frame_id, ros1)
    if frame.topic == LEFT:
        if frame.rgb is None:
            data = np.frombuffer(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8, np.uint8)
        else:
            ok, png = cv2.imencode(".png", frame.rgb[:, :, ::-1])  # image_transport stores BGR
            assert ok
            data = png.reshape(-1)
        return "sensor_msgs/msg/CompressedImage", types["sensor_msgs/msg/CompressedImage"](
            header=header, format="png", data=data)
    rgb = frame.rgb if frame.rgb is not None else np.zeros((*FRONT_SIZE, 3), np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    return "sensor_msgs/msg/Image", types["sensor_msgs/msg/Image"](
        header=header, height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8",
        is_bigendian=0, step=bgr.shape[1] * 3, data=bgr.reshape(-1))


def write_rosbag2(path: Path, frames, storage: str = "mcap") -> None:
    store = get_typestore(Stores.ROS2_JAZZY)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(path, version=8, storage_plugin=plugin)
    writer.open()
    conns = {}
    extra = writer.add_connection("/vehicle/speed", "std_msgs/msg/Float32", typestore=store)
    writer.write(extra, LOG0, store.serialize_cdr(store.types["std_msgs/msg/Float32"](data=1.0),
                                                  "std_msgs/msg/Float32"))
    for frame in frames:
        msgtype, msg = image_message(store, frame)
        if frame.topic not in conns:
            conns[frame.topic] = writer.add_connection(frame.topic, msgtype, typestore=store)
        raw = bytes(store.serialize_cdr(msg, msgtype))
        if frame.rgb is None and frame.topic == FRONT:
            raw = raw[:60]  # truncated in the middle: cannot be deserialized
        writer.write(conns[frame.topic], frame.log_ns, raw)
    writer.close()


def write_ros1(path: Path, frames) -> None:
    store = get_typestore(Stores.ROS1_NOETIC)
    writer = Ros1Writer(path)
    writer.open()
    conns = {}
    for frame in frames:
        msgtype, msg = image_message(store, frame, ros1=True)
        if frame.topic not in conns:
            conns[frame.topic] = writer.add_connection(frame.topic, msgtype, typestore=store)
        writer.write(conns[frame.topic], frame.log_ns, store.serialize_ros1(msg, msgtype))
    writer.close()


# ---------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(PRESET, **TINY)
    return save_checkpoint(model, tmp_path_factory.mktemp("weights") / "tiny.pth")


@pytest.fixture(scope="module")
def offline_model(checkpoint):
    model = build_model(PRESET, **TINY)
    load_checkpoint(model, checkpoint)
    return model.eval()


@contextlib.contextmanager
def one_cpu_thread():
    """One torch thread: steady timings on a shared two-core machine (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def offline_labels(model, images, resets) -> list:
    """The model run by hand: forward_stream per frame, a fresh state where ``resets`` says."""
    policy = parse_input_size(INPUT_SIZE)
    labels, state = [], None
    with torch.inference_mode(), one_cpu_thread():
        for i, image in enumerate(images):
            if i in resets:
                state = model.new_state(1)
            x = to_model_input(torch.from_numpy(image[None]), model.cfg, policy)
            logits, state = model.forward_stream(x, state)
            logits = logits_to_size(logits, image.shape[:2])
            labels.append(logits.argmax(1)[0].numpy().astype(np.uint8))
    return labels


def tool_args(checkpoint, *extra) -> list:
    return ["--model", PRESET, "--weights", str(checkpoint), "--model-overrides", TINY_CLI,
            "--input-size", INPUT_SIZE, "--device", "cpu", "--max-gap-s", str(MAX_GAP_S),
            "--cpu-threads", "1", "--no-progress", *extra]


# ---------------------------------------------------------------------------------- output
def read_bag(path: Path) -> dict:
    """topic -> list of (log_ns, message, msgtype) in bag order, decoded with the bag's own types."""
    topics: dict = {}
    with AnyReader([path]) as reader:
        for conn, log_ns, raw in reader.messages():
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception:  # noqa: BLE001 - a corrupt input message copied by --copy-input
                msg = None
            topics.setdefault(conn.topic, []).append((log_ns, msg, conn.msgtype))
        topics["__connections__"] = list(reader.connections)
    return topics


def image_array(msg) -> np.ndarray:
    data = np.asarray(msg.data, np.uint8)
    if msg.encoding == "mono8":
        return data.reshape(msg.height, msg.width)
    if msg.encoding == "mono16":
        return data.view("<u2").reshape(msg.height, msg.width)
    return data.reshape(msg.height, msg.width, 3)


def stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def check_camera(out: dict, camera: str, inputs: list, resets: dict, model) -> None:
    """Outputs of one camera: one per valid frame, headers, resets and labels vs offline."""
    valid = [f for f in inputs if f.rgb is not None]
    labels = out[f"/tv3s/{camera}/labels"]
    coverage = out[f"/tv3s/{camera}/coverage"]
    assert len(labels) == len(coverage) == len(valid), "one output per input frame"
    for frame, (log_ns, lab, _), (cov_log, cov, cov_type) in zip(valid, labels, coverage):
        assert cov_type == "tv3s_ros/msg/ClassCoverage"
        assert log_ns == cov_log == frame.log_ns                 # written at the input's bag time
        for msg in (lab, cov):
            assert stamp_ns(msg.header) == frame.stamp_ns           # source header unchanged
            assert msg.header.frame_id == frame.frame_id
        assert lab.encoding == "mono8" and (lab.height, lab.width) == frame.rgb.shape[:2]
        assert cov.camera_name == camera and cov.skipped_frames == 0
        assert abs(float(np.sum(cov.fraction)) - 1.0) < 1e-4
        assert int(np.sum(cov.pixel_count)) == lab.height * lab.width
    got_resets = {i: c.reset_reason for i, (_, c, _) in enumerate(coverage) if c.frames_since_reset == 0}
    assert got_resets == resets
    assert all(c.reset_reason == "" for i, (_, c, _) in enumerate(coverage) if i not in resets)
    expected = offline_labels(model, [f.rgb for f in valid], set(resets))
    for i, ((_, lab, _), ref) in enumerate(zip(labels, expected)):
        np.testing.assert_array_equal(image_array(lab), ref, err_msg=f"{camera} frame {i}")
    # The comparison has teeth: the tiny model gives several classes per frame, the carried
    # state changes the labels, and so would a missed reset.
    assert all(len(np.unique(r)) > 1 for r in expected)
    if len(valid) > 1:
        stateless = offline_labels(model, [f.rgb for f in valid], set(range(len(valid))))
        assert any((a != b).any() for a, b in zip(expected, stateless))
    for index in set(resets) - {0}:
        missed = offline_labels(model, [f.rgb for f in valid], set(resets) - {index})
        assert (missed[index] != expected[index]).any()


# ---------------------------------------------------------------------------------- tests
def test_mcap_two_cameras_match_offline_model(tmp_path, checkpoint, offline_model, capsys):
    frames = camera_frames()
    write_rosbag2(tmp_path / "drive", frames, "mcap")
    status = bag_tool.main([str(tmp_path / "drive"), str(tmp_path / "out"),
                            *tool_args(checkpoint)])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    out = read_bag(tmp_path / "out")
    meta = (tmp_path / "out" / "metadata.yaml").read_text()
    assert "storage_identifier: mcap" in meta
    check_camera(out, "front", [f for f in frames if f.topic == FRONT], FRONT_RESETS, offline_model)
    check_camera(out, "left", [f for f in frames if f.topic == LEFT], LEFT_RESETS, offline_model)
    for camera in ("front", "left"):
        assert len(out[f"/tv3s/{camera}/color"]) == len(out[f"/tv3s/{camera}/overlay"]) \
            == len(out[f"/tv3s/{camera}/labels"])
        assert out[f"/tv3s/{camera}/color"][0][1].encoding == "rgb8"
        assert f"/tv3s/{camera}/confidence" not in out          # not asked for
    assert FRONT not in out and "/vehicle/speed" not in out      # no --copy-input
    # The definition of the custom type is stored in the bag.
    coverage_conn = next(c for c in out["__connections__"] if c.msgtype.endswith("ClassCoverage"))
    assert "uint32 frames_since_reset" in coverage_conn.msgdef.data
    # Corrupt messages: reported per kind with counts, not fatal.
    assert "2 corrupt messages skipped" in printed.out
    assert f"1 x {FRONT}: deserialize" in printed.out
    assert f"1 x {LEFT}: decode" in printed.out
    assert f"camera front ({FRONT}): 8 frames, 3 resets (first_frame 1, gap 1, " \
        "time_backwards 1)" in printed.out
    assert "mean coverage:" in printed.out and "frames/s" in printed.out


def test_sqlite3_via_console_script(tmp_path, checkpoint, offline_model):
    """The installed console script, sqlite3 in and out, with input copy, plot and JSON."""
    assert TV3S_BAG.exists(), "console script missing: run ./setup.sh"
    frames = camera_frames()
    write_rosbag2(tmp_path / "drive", frames, "sqlite3")
    cmd = [str(TV3S_BAG), str(tmp_path / "drive"), str(tmp_path / "out"),
           *tool_args(checkpoint, "--storage", "sqlite3", "--copy-input",
                      "--outputs", "labels,confidence", "--plot", str(tmp_path / "cov.png"),
                      "--summary-json", str(tmp_path / "summary.json"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "storage_identifier: sqlite3" in (tmp_path / "out" / "metadata.yaml").read_text()
    out = read_bag(tmp_path / "out")
    check_camera(out, "front", [f for f in frames if f.topic == FRONT], FRONT_RESETS, offline_model)
    check_camera(out, "left", [f for f in frames if f.topic == LEFT], LEFT_RESETS, offline_model)
    # --copy-input: the camera topics as recorded (the corrupt ones too, bytes unchanged).
    assert len(out[FRONT]) == len([f for f in frames if f.topic == FRONT])
    assert len(out[LEFT]) == len([f for f in frames if f.topic == LEFT])
    assert "/vehicle/speed" not in out
    assert "/tv3s/front/color" not in out and len(out["/tv3s/front/confidence"]) == 8
    assert out["/tv3s/front/confidence"][0][1].encoding == "mono8"
    png = (tmp_path / "cov.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    summary = json.loads((tmp_path / "summary.json").read_text())
    bag = summary["bags"][0]
    assert bag["frames"] == 14 and summary["fps"] > 0
    assert bag["cameras"]["front"]["resets"] == {"first_frame": 1, "gap": 1, "time_backwards": 1}
    assert sorted((c["topic"], c["count"]) for c in bag["corrupt"]) == [(FRONT, 1), (LEFT, 1)]
    assert abs(sum(bag["cameras"]["left"]["mean_coverage"].values()) - 1.0) < 1e-3
    assert "throughput:" in proc.stdout


def test_directory_of_bags_ros1_and_rosbag2(tmp_path, checkpoint, offline_model):
    """Bags processed one after another, one output each; state never crosses bags."""
    frames = [f for f in camera_frames() if f.topic == FRONT and f.rgb is not None][:4]
    first, second = frames[:2], frames[2:]   # stamps continue smoothly across the two bags
    (tmp_path / "in").mkdir()
    write_rosbag2(tmp_path / "in" / "part_a", first, "mcap")
    write_ros1(tmp_path / "in" / "part_b.bag", second)
    status = bag_tool.main([str(tmp_path / "in"), str(tmp_path / "out"),
                            *tool_args(checkpoint, "--topics", FRONT, "--copy-input")])
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part_a", "part_b"]
    for name, part in (("part_a", first), ("part_b", second)):
        out = read_bag(tmp_path / "out" / name)
        check_camera(out, "front", part, {0: "first_frame"}, offline_model)
        # The copied camera topic is ROS 2 data even from the ROS 1 bag (no header seq).
        copied = out[FRONT]
        assert [m.header.frame_id for _, m, _ in copied] == ["cam_front"] * len(part)
        assert not hasattr(copied[0][1].header, "seq")
        np.testing.assert_array_equal(image_array(copied[0][1]), part[0].rgb[:, :, ::-1])


def test_missing_topic_lists_image_topics(tmp_path, checkpoint, capsys):
    write_rosbag2(tmp_path / "drive", camera_frames()[:3], "mcap")
    status = bag_tool.main([str(tmp_path / "drive"), str(tmp_path / "out"),
                            *tool_args(checkpoint, "--topics", "/camera/rear/image_raw")])
    err = capsys.readouterr().err
    assert status == 2
    assert "not in the bag: /camera/rear/image_raw" in err
    assert FRONT in err and LEFT in err and "CompressedImage" in err
    assert "/vehicle/speed" not in err                 # only image topics are offered
    assert not (tmp_path / "out").exists()


def test_every_n_and_time_window(tmp_path, checkpoint, capsys):
    frames = camera_frames()
    write_rosbag2(tmp_path / "drive", frames, "mcap")
    # Bag time runs LOG0 .. LOG0 + 0.75 s; keep [0.1 s, 0.65 s) and every 2nd frame of each camera.
    status = bag_tool.main([str(tmp_path / "drive"), str(tmp_path / "out"),
                            *tool_args(checkpoint, "--every-n", "2", "--start", "0.1",
                                       "--end", str((LOG0 + 650_000_000) / 1e9))])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "temporal context spans 2 recorded frames" in printed.err
    out = read_bag(tmp_path / "out")
    window = [f for f in frames if LOG0 + 100_000_000 <= f.log_ns < LOG0 + 650_000_000]
    for topic, camera in ((FRONT, "front"), (LEFT, "left")):
        taken = [f for f in window if f.topic == topic][::2]
        expected = [f.stamp_ns for f in taken if f.rgb is not None]
        got = [stamp_ns(m.header) for _, m, _ in out[f"/tv3s/{camera}/coverage"]]
        assert got == expected


def test_existing_output_is_kept(tmp_path, checkpoint, capsys):
    write_rosbag2(tmp_path / "drive", camera_frames()[:2], "mcap")
    (tmp_path / "notabag").mkdir()
    (tmp_path / "notabag" / "precious.txt").write_text("keep me")
    args = [str(tmp_path / "drive"), str(tmp_path / "notabag"), *tool_args(checkpoint)]
    assert bag_tool.main(args) == 2
    assert bag_tool.main(args + ["--overwrite"]) == 2
    assert (tmp_path / "notabag" / "precious.txt").read_text() == "keep me"
    assert "not deleting" in capsys.readouterr().err


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bag_tool.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("examples:", "--topics", "--every-n", "--copy-input", "frames_since_reset",
                   "--storage", "/tv3s/<camera>/labels"):
        assert needle in text


# ---------------------------------------------------------------------------------- static
def test_embedded_class_coverage_matches_msg_file():
    from tv3s_ros.bag import typestore

    file_types = get_types_from_msg((REPO / "msg" / "ClassCoverage.msg").read_text(),
                                    typestore.CLASS_COVERAGE)
    embedded = get_types_from_msg(typestore.EMBEDDED_CLASS_COVERAGE_MSG, typestore.CLASS_COVERAGE)
    assert file_types == embedded
    text, source = typestore.class_coverage_definition()
    assert get_types_from_msg(text, typestore.CLASS_COVERAGE) == file_types
    assert source != "embedded copy in tv3s_ros/bag/typestore.py"  # found the real file


def test_class_coverage_hash_matches_rosidl():
    """The type hash stored in output bags is the one ROS 2 computes for our message."""
    from tv3s_ros.bag.typestore import CLASS_COVERAGE, build_typestore

    description = Path(sys.prefix) / "share" / "tv3s_ros" / "msg" / "ClassCoverage.json"
    if not description.exists():
        pytest.skip("messages not built into the venv (./setup.sh builds them)")
    hashes = json.loads(description.read_text())["type_hashes"]
    rosidl = next(h["hash_string"] for h in hashes if h["type_name"] == CLASS_COVERAGE)
    assert build_typestore().hash_rihs01(CLASS_COVERAGE) == rosidl


def test_replay_launch_is_valid_and_references_existing_files():
    path = REPO / "launch" / "replay.launch.py"
    compile(path.read_text(), str(path), "exec")  # syntax check without writing __pycache__
    tree = ast.parse(path.read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert "tv3s_node" in strings and (REPO / "scripts" / "tv3s_node").exists()
    assert "tv3s_ros" in strings
    params = os.path.join("config", "tv3s.yaml")
    assert (REPO / params).exists(), "the default params file must exist in the package"
    # The bag is played with the clock, the node runs on simulated time.
    source = path.read_text()
    for needle in ('"--clock"', '"--loop"', '"use_sim_time": True', '"--rate"'):
        assert needle in source
    # Parameters it sets are the node's (declared in the shipped params file), and the
    # file's key matches the node under the name "tv3s" the replay gives it.
    config = yaml.safe_load((REPO / params).read_text())
    assert list(config) == ["/**"] and "camera_topics" in config["/**"]["ros__parameters"]
    assert 'DeclareLaunchArgument("node_name", default_value="tv3s"' in source
    from tv3s_ros.ros.params import PARAMETER_NAMES  # the node's declared parameters

    for param in ("camera_topics", "camera_names", "weights"):
        assert f'"{param}"' in source and param in PARAMETER_NAMES
    # Installed where `ros2 launch tv3s_ros replay.launch.py` finds it.
    assert "install(DIRECTORY launch config model" in (REPO / "CMakeLists.txt").read_text()


@pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")
def test_writer_mono16_labels_and_rclpy_reads_coverage(tmp_path):
    """Past 255 classes labels are mono16; the coverage CDR is what ROS 2 itself decodes."""
    from types import SimpleNamespace

    from tv3s_ros.bag.writer import OutputBag

    labels = np.array([[3, 290, 290], [3, 3, 299]], np.uint16)
    result = SimpleNamespace(
        labels=labels, color=None, overlay=None, confidence=None,
        class_ids=np.array([3, 290, 299], np.uint16), fraction=np.array([0.5, 1 / 3, 1 / 6], np.float32),
        pixel_count=np.array([3, 2, 1], np.uint32), mean_confidence=np.array([0.9, 0.5, 0.2], np.float32),
        width=3, height=2, num_classes=300, frames_since_reset=0, reset_reason="first_frame",
        latency_s=0.25, model_time_s=0.125)
    names = [f"c{i}" for i in range(300)]
    with OutputBag(tmp_path / "out", "mcap") as out:
        header = out.header(12, 345, "cam_x")
        out.write_frame("x", 5, header, result, names, ["labels"])
    bag = read_bag(tmp_path / "out")
    msg = bag["/tv3s/x/labels"][0][1]
    assert msg.encoding == "mono16" and msg.step == 6 and msg.is_bigendian == 0
    np.testing.assert_array_equal(image_array(msg), labels)
    cov = bag["/tv3s/x/coverage"][0][1]
    assert list(cov.class_names) == ["c3", "c290", "c299"] and cov.num_classes == 300

    try:
        from rclpy.serialization import deserialize_message

        from tv3s_ros.msg import ClassCoverage
    except ImportError:
        pytest.skip("rclpy or the generated tv3s_ros.msg is not installed")
    with AnyReader([tmp_path / "out"]) as reader:
        raw = next(raw for conn, _, raw in reader.messages() if conn.topic == "/tv3s/x/coverage")
    ros_msg = deserialize_message(bytes(raw), ClassCoverage)
    stamp = ros_msg.header.stamp
    assert (stamp.sec, stamp.nanosec, ros_msg.header.frame_id) == (12, 345, "cam_x")
    assert list(ros_msg.class_ids) == [3, 290, 299] and ros_msg.reset_reason == "first_frame"
    assert ros_msg.camera_name == "x" and abs(ros_msg.latency_s - 0.25) < 1e-6


def test_bag_modules_import_without_rclpy():
    """The tool must run where no ROS is installed: its import chain never pulls in rclpy."""
    code = ("import sys; import tv3s_ros.tools.bag, tv3s_ros.bag.runner as r; "
            "r.camera_names_for(['/a/front/image_raw'], None); "
            "assert 'rclpy' not in sys.modules, 'rclpy imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_synthetic_drive_for_benchmarks(tmp_path):
    """The benchmark bag generator writes what the tool reads: two cameras, N frames each."""
    from tv3s_ros.bag.source import BagSource
    from tv3s_ros.bag.synthetic import JPEG_TOPIC, RAW_TOPIC, write_drive

    write_drive(tmp_path / "drive", frames=3, height=32, width=48)
    with BagSource(tmp_path / "drive") as source:
        assert source.image_topics() == {RAW_TOPIC: "sensor_msgs/msg/Image",
                                         JPEG_TOPIC: "sensor_msgs/msg/CompressedImage"}
        assert source.message_counts() == {RAW_TOPIC: 3, JPEG_TOPIC: 3}
