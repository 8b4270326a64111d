"""The ROS layer's pieces on their own: camera naming, parameters, message conversion,
diagnostics, and how tv3s_node refuses a bad configuration."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tv3s_ros.camera_names import camera_name_from_topic, is_compressed_topic, resolve_camera_names

NODE_EXE = Path(sys.executable).parent / "tv3s_node"


# ---------------------------------------------------------------------------------------------
# naming


@pytest.mark.parametrize("topic, name", [
    ("/sensing/camera/front/image_raw", "front"),
    ("/sensing/camera/front/image_raw/compressed", "front"),
    ("/rear/image_rect_color/compressed", "rear"),
    ("/left/image_rect", "left"),
    ("/left/image_color", "left"),
    ("/cam0/image", "cam0"),
    ("/right/compressed", "right"),
    ("front_cam", "front_cam"),
    ("/a/b/raw_frames", "raw_frames"),
])
def test_camera_name_from_topic(topic, name):
    assert camera_name_from_topic(topic) == name


def test_camera_name_rules_reject_what_cannot_name_a_camera():
    for topic in ("/image_raw", "/image_raw/compressed", "/compressed", ""):
        with pytest.raises(ValueError, match="camera_names"):
            camera_name_from_topic(topic)
    with pytest.raises(ValueError, match="not a valid ROS name"):
        camera_name_from_topic("/1st/image_raw")


def test_compressed_topic_detection():
    assert is_compressed_topic("/front/image_raw/compressed")
    assert not is_compressed_topic("/front/image_raw")
    assert not is_compressed_topic("/front/compressed_image")


def test_resolve_camera_names():
    topics = ["/a/front/image_raw", "/b/rear/image_raw/compressed"]
    assert resolve_camera_names(topics) == ["front", "rear"]
    assert resolve_camera_names(topics, ["f", "r"]) == ["f", "r"]
    with pytest.raises(ValueError, match="both give camera name 'front'"):
        resolve_camera_names(["/a/front/image_raw", "/b/front/image_raw/compressed"])
    with pytest.raises(ValueError, match="same topic"):
        resolve_camera_names(["/a/front/image_raw", "/a/front/image_raw"])
    with pytest.raises(ValueError, match="2 entries"):
        resolve_camera_names(["/a/x/image_raw"], ["x", "y"])
    with pytest.raises(ValueError, match="both give camera name"):
        resolve_camera_names(topics, ["same", "same"])
    with pytest.raises(ValueError, match="at least one"):
        resolve_camera_names([])


# ---------------------------------------------------------------------------------------------
# parameters (a real rclpy node in this process, no graph traffic)




@pytest.mark.ros
def test_parameters_are_declared_with_descriptors(param_node):
    from tv3s_ros.ros.params import PARAMETERS

    node = param_node()
    for spec in PARAMETERS:
        assert node.has_parameter(spec.name)
        desc = node.describe_parameter(spec.name)
        assert desc.description and desc.read_only == spec.read_only, spec.name
    assert node.describe_parameter("overlay_alpha").floating_point_range[0].to_value == 1.0
    assert node.describe_parameter("max_state_frames").integer_range[0].from_value == 0


@pytest.mark.ros
def test_settings_defaults_and_overrides(param_node, tmp_path):
    from tv3s_ros.ros.params import read_settings

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    s = read_settings(param_node(weights=str(weights),
                                 camera_topics=["/s/front/image_raw", "/s/rear/image_raw/compressed"],
                                 publish=["labels", "coverage", "overlay"], model_overrides="{num_classes: 7}"))
    assert s.camera_names == ["front", "rear"] and s.compressed == [False, True]
    assert s.publish == ["labels", "overlay"] and s.model_overrides == {"num_classes": 7}
    assert (s.reliability, s.max_gap_s, s.max_state_frames, s.device) == ("best_effort", 1.0, 0, "auto")
    s = read_settings(param_node(allow_random_weights=True, camera_topics=["/x/image_raw", "/y/image_raw"],
                                 camera_names=["left", "right"]))
    assert s.weights is None and s.camera_names == ["left", "right"]


@pytest.mark.ros
def test_invalid_settings_list_every_problem(param_node):
    from tv3s_ros.ros.params import ParameterError, read_settings

    node = param_node(weights="/no/such/file.pth", device="tpu", precision="fp8", input_size="huge",
                      output_resolution="4k", publish=["labels", "depth"], reliability="sometimes",
                      camera_topics=["/a/front/image_raw", "/b/front/image_raw"], model_overrides="[1, 2]")
    with pytest.raises(ParameterError) as err:
        read_settings(node)
    text = str(err.value)
    for needle in ("weights file not found", "device must be", "precision must be", "input_size",
                   "output_resolution", "unknown output 'depth'", "reliability", "both give camera name",
                   "model_overrides must be a YAML mapping"):
        assert needle in text, (needle, text)
    with pytest.raises(ParameterError, match="weights is not set"):
        read_settings(param_node())


@pytest.mark.ros
def test_out_of_range_values_are_refused_at_declaration(param_node):
    from rclpy.exceptions import InvalidParameterValueException

    with pytest.raises(InvalidParameterValueException):
        param_node(overlay_alpha=1.5)
    with pytest.raises(InvalidParameterValueException):
        param_node(max_state_frames=-1)


# ---------------------------------------------------------------------------------------------
# conversion


@pytest.mark.ros
@pytest.mark.parametrize("compressed", [False, True])
def test_peek_header_reads_the_serialized_header(compressed):
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage, Image

    from tv3s_ros.ros.convert import deserialize_camera, peek_header

    msg = CompressedImage(format="jpeg") if compressed else Image(encoding="rgb8", height=1, width=1, step=3)
    msg.data = [1, 2, 3]
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_123, 456_789
    msg.header.frame_id = "cam_ünï_optical"
    raw = serialize_message(msg)
    assert peek_header(raw, compressed) == (1_700_000_123_000_456_789, "cam_ünï_optical")
    assert deserialize_camera(raw, compressed).header.frame_id == "cam_ünï_optical"
    # Big-endian CDR (other DDS vendors may send it): the header is read with that byte order.
    frame_id = "be_cam".encode() + b"\0"
    big = bytes([0, 0, 0, 0]) + struct.pack(">iII", 7, 8, len(frame_id)) + frame_id
    assert peek_header(big, compressed) == (7_000_000_008, "be_cam")


@pytest.mark.ros
def test_output_messages_keep_the_source_header_and_layout():
    from std_msgs.msg import Header

    from tv3s_ros.ros.convert import coverage_msg, image_msg, labels_msg

    header = Header(frame_id="front_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    labels8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = labels_msg(header, labels8)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("mono8", 3, 4, 4)
    assert bytes(msg.data) == labels8.tobytes() and msg.header is header
    labels16 = (np.arange(12, dtype=np.uint16) * 300).reshape(3, 4)
    msg = labels_msg(header, labels16)
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("mono16", 8, 0)
    assert np.array_equal(np.frombuffer(bytes(msg.data), "<u2").reshape(3, 4), labels16)
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    msg = image_msg(header, rgb[:, ::-1], "rgb8")   # a non-contiguous view is packed
    assert (msg.step, len(msg.data)) == (21, 105) and bytes(msg.data) == np.ascontiguousarray(rgb[:, ::-1]).tobytes()

    out = SimpleNamespace(class_ids=np.array([0, 5], np.uint16), pixel_count=np.array([3, 9], np.uint32),
                          fraction=np.array([0.25, 0.75], np.float32), mean_confidence=np.array([0.5, 1.0], np.float32),
                          width=4, height=3, num_classes=6, frames_since_reset=0, reset_reason="gap",
                          skipped_frames=2, model_time_s=0.01)
    cov = coverage_msg(header, "front", out, ["road", "a", "b", "c", "d", "car"], 0.05)
    assert cov.header is header and cov.camera_name == "front"
    assert list(cov.class_ids) == [0, 5] and cov.class_names == ["road", "car"]
    assert list(cov.pixel_count) == [3, 9] and list(cov.fraction) == [0.25, 0.75]
    assert (cov.reset_reason, cov.frames_since_reset, cov.skipped_frames) == ("gap", 0, 2)


@pytest.mark.parametrize("error, reason", [
    ("unsupported image encoding 'foo' (supported: ...)", "unsupported_encoding"),
    ("unsupported compressed format 'h264' (supported: jpeg, png)", "unsupported_encoding"),
    ("rgb8 image has zero size (0x0)", "bad_size"),
    ("rgb8 image 64x48 step 192: data has 100 bytes, expected step * height = 9216", "wrong_data_length"),
    ("rgb8 image 64x48: step 10 is smaller than one row (192 bytes)", "wrong_data_length"),
    ("corrupt or truncated jpeg data (1234 bytes)", "corrupt_compressed"),
    ("jpeg data (99 bytes) is truncated (no end-of-image marker)", "corrupt_compressed"),
])
def test_reject_reasons(error, reason):
    pytest.importorskip("rclpy")
    from tv3s_ros.ros.convert import ImageDecodeError, reject_reason

    assert reject_reason(ImageDecodeError(error)) == reason


@pytest.mark.ros
def test_reject_reasons_match_the_decoder():
    """The categories hold for what image_codec really raises (not only for sample texts)."""
    from tv3s_ros.image_codec import ImageDecodeError, decode_compressed, decode_image
    from tv3s_ros.ros.convert import reject_reason

    cases = [
        (lambda: decode_image("foo16", 2, 2, 4, bytes(8)), "unsupported_encoding"),
        (lambda: decode_image("rgb8", 0, 0, 0, b""), "bad_size"),
        (lambda: decode_image("rgb8", 2, 2, 6, bytes(5)), "wrong_data_length"),
        (lambda: decode_compressed("jpeg", b"\xff\xd8\xff" + bytes(50) + b"\xff\xd9"), "corrupt_compressed"),
        (lambda: decode_compressed("jpeg", b"\xff\xd8\xff" + bytes(50)), "corrupt_compressed"),
        (lambda: decode_compressed("h264", b"\x00\x00\x01"), "unsupported_encoding"),
    ]
    for call, reason in cases:
        with pytest.raises(ImageDecodeError) as err:
            call()
        assert reject_reason(err.value) == reason, str(err.value)


# ---------------------------------------------------------------------------------------------
# diagnostics


@pytest.mark.ros
def test_diagnostics_report_rates_counters_and_levels():
    from diagnostic_msgs.msg import DiagnosticStatus

    from tv3s_ros.ros.diagnostics import CameraHealth, DiagnosticsReporter

    reporter = DiagnosticsReporter("tv3s_node", "cpu", [("device", "cpu"), ("precision", "fp32")],
                                   node_warning="RANDOM WEIGHTS")
    front, rear = CameraHealth("front", "/f/image_raw", "Image"), CameraHealth("rear", "/r/image_raw", "Image")
    reporter.build([front, rear], {}, now_s=0.0)
    for i in range(30):
        front.note_received(0.1 * i)
    for i in range(10):
        front.note_published(0.010 + 0.001 * i, 0.005)
    front.note_rejected("bad_size", "rgb8 image has zero size (0x0)")
    stream = SimpleNamespace(processed=10, skipped=20, frames_since_reset=9, width=64, height=48,
                             frame_id="front_optical", resets={"first_frame": 1, "gap": 0})
    node_status, f, r = reporter.build([front, rear], {"front": stream}, now_s=2.0)

    assert node_status.level == DiagnosticStatus.WARN and node_status.message == "RANDOM WEIGHTS"
    assert {kv.key for kv in node_status.values} >= {"device", "precision", "rss_mb"}
    values = {kv.key: kv.value for kv in f.values}
    assert f.name == "tv3s_node: camera front" and f.level == DiagnosticStatus.WARN
    assert values["input_rate_hz"] == "15.00" and values["processed_rate_hz"] == "5.00"
    assert (values["skipped"], values["rejected"], values["rejected.bad_size"]) == ("20", "1", "1")
    assert (values["resets"], values["resets.first_frame"]) == ("1", "1")
    assert values["latency_p50_ms"] == "14.5" and values["model_time_p50_ms"] == "5.0"
    assert r.level == DiagnosticStatus.STALE
    # Next period without rejections: OK again.
    f = reporter.build([front, rear], {"front": stream}, now_s=3.0)[1]
    assert f.level == DiagnosticStatus.OK


# ---------------------------------------------------------------------------------------------
# start-up refusals (the real console script, no traceback)


def _run_node(*ros_args, timeout=60):
    env = dict(os.environ, RCUTILS_LOGGING_BUFFERED_STREAM="0")
    return subprocess.run([str(NODE_EXE), *ros_args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.ros
@pytest.mark.parametrize("args, code, message", [
    (["-p", "camera_topics:=[/x/image_raw]"], 2, "weights is not set"),
    (["-p", "weights:=/nonexistent.pth", "-p", "camera_topics:=[/x/image_raw]"], 2, "weights file not found"),
    (["-p", "allow_random_weights:=true", "-p", "camera_topics:=[/a/cam/image_raw, /b/cam/image_raw]"], 2,
     "both give camera name 'cam'"),
    (["-p", "allow_random_weights:=true", "-p", "model:=no_such_preset", "-p", "device:=cpu"], 1,
     "unknown preset 'no_such_preset'"),
])
def test_bad_configuration_stops_with_a_clear_message(args, code, message):
    result = _run_node("--ros-args", *args)
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert message in output and "Traceback" not in output, output


def test_help_lists_the_parameters():
    result = _run_node("--help")
    assert result.returncode == 0
    from tv3s_ros.ros.params import PARAMETER_NAMES

    for name in PARAMETER_NAMES:
        assert f"  {name} (" in result.stdout
