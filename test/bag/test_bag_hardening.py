"""Bad state and bad frames in tv3s-bag: the bag tool shares the node's Engine, so a NaN state resets
the camera (reason non_finite, in the coverage and the summary) and a degenerate frame is
skipped as a bad frame while every other frame gets its output. Real bags, real tool."""
from __future__ import annotations

import numpy as np
import torch
from test_bag_tool import FRONT, FRONT_SIZE, LOG0, PRESET, T0, TINY, Frame, read_bag, scene, tool_args, write_rosbag2

from tv3s_ros.model import build_model, save_checkpoint
from tv3s_ros.tools import bag as bag_tool


def _front(n, extra=()):
    frames = [Frame(FRONT, LOG0 + i * 100_000_000, T0 + i * 100_000_000, "cam_front", scene(i, FRONT_SIZE, 1))
              for i in range(n)]
    return sorted(frames + list(extra), key=lambda f: f.log_ns)


def test_nan_state_resets_with_reason_non_finite(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model(PRESET, **TINY)
    with torch.no_grad():   # dt goes NaN, and with it the carried SSM state
        model.decode_head.vs.layers[0].mixer.dt_proj.bias[0] = float("nan")
    weights = save_checkpoint(model, tmp_path / "nan.pth")
    write_rosbag2(tmp_path / "drive", _front(3), "mcap")
    status = bag_tool.main([str(tmp_path / "drive"), str(tmp_path / "out"), *tool_args(weights)])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    coverage = read_bag(tmp_path / "out")["/tv3s/front/coverage"]
    assert [m.reset_reason for _, m, _ in coverage] == ["first_frame", "non_finite", "non_finite"]
    assert "non_finite 2" in printed.out


def test_degenerate_frame_is_skipped_and_the_rest_processed(tmp_path, capsys):
    torch.manual_seed(0)
    weights = save_checkpoint(build_model(PRESET, **TINY), tmp_path / "tiny.pth")
    thin = Frame(FRONT, LOG0 + 150_000_000, T0 + 150_000_000, "cam_front",
                 np.full((1, 4000, 3), 90, np.uint8))
    write_rosbag2(tmp_path / "drive", _front(4, [thin]), "mcap")
    # A fixed input size: the thin frame would fit the model, only max_aspect refuses it.
    status = bag_tool.main([str(tmp_path / "drive"), str(tmp_path / "out"),
                            *tool_args(weights, "--input-size", "64x96")])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    coverage = read_bag(tmp_path / "out")["/tv3s/front/coverage"]
    assert [m.reset_reason for _, m, _ in coverage] == ["first_frame", "", "", ""]
    assert "1 corrupt message skipped" in printed.out and "FrameRejected" in printed.out


def _write_mono16_bag(path, n: int) -> str:
    """A rosbag2 with one 16-bit mono camera (a thermal camera, or depth on the wrong topic)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types, topic = store.types, "/sensing/camera/thermal/image_raw"
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conn = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=store)
    for i in range(n):
        stamp = T0 + i * 100_000_000
        image = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 13 + i * 500).astype("<u2")
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
            frame_id="thermal")
        msg = types["sensor_msgs/msg/Image"](header=header, height=48, width=64, encoding="16UC1",
                                             is_bigendian=0, step=128, data=image.view(np.uint8).reshape(-1))
        writer.write(conn, LOG0 + i * 100_000_000, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    writer.close()
    return topic


def test_16bit_frames_are_refused_unless_the_camera_is_allowed(tmp_path, capsys):
    torch.manual_seed(0)
    weights = save_checkpoint(build_model(PRESET, **TINY), tmp_path / "tiny.pth")
    topic = _write_mono16_bag(tmp_path / "drive", 3)
    bag_tool.main([str(tmp_path / "drive"), str(tmp_path / "refused"), *tool_args(weights), "--topics", topic])
    printed = capsys.readouterr()
    assert "3 corrupt messages skipped" in printed.out and "depth" in printed.out
    assert "/tv3s/thermal/coverage" not in read_bag(tmp_path / "refused")
    status = bag_tool.main([str(tmp_path / "drive"), str(tmp_path / "allowed"), *tool_args(weights),
                            "--topics", topic, "--allow-16bit-cameras", "thermal"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    coverage = read_bag(tmp_path / "allowed")["/tv3s/thermal/coverage"]
    assert [m.reset_reason for _, m, _ in coverage] == ["first_frame", "", ""]
