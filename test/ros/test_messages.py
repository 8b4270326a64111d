"""ClassCoverage: generated for the package, and carried across processes over Fast DDS."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_class_coverage_fields():
    from tv3s_ros.msg import ClassCoverage

    fields = ClassCoverage.get_fields_and_field_types()
    expected = {
        "header": "std_msgs/Header",
        "camera_name": "string",
        "class_ids": "sequence<uint16>",
        "class_names": "sequence<string>",
        "fraction": "sequence<float>",
        "pixel_count": "sequence<uint32>",
        "mean_confidence": "sequence<float>",
        "width": "uint32",
        "height": "uint32",
        "num_classes": "uint16",
        "frames_since_reset": "uint32",
        "reset_reason": "string",
    }
    for name, kind in expected.items():
        assert fields.get(name) == kind, (name, fields.get(name))


@pytest.mark.ros
def test_class_coverage_crosses_processes():
    """A child process publishes; this process receives every field intact."""
    import rclpy
    from rclpy.node import Node

    from tv3s_ros.msg import ClassCoverage

    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    child = subprocess.Popen([sys.executable, str(HERE.parent / "ros_helpers" / "coverage_publisher.py")])
    rclpy.init()
    node = Node("coverage_receiver")
    received = []
    node.create_subscription(ClassCoverage, "/coverage_test", received.append, 10)
    try:
        deadline = time.monotonic() + 30.0
        while len(received) < 3 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
            assert child.poll() is None, "publisher process died"
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    assert len(received) >= 3, "no ClassCoverage arrived over DDS within 30 s"
    msg = received[-1]
    assert msg.header.frame_id == "front_camera"
    assert msg.header.stamp.sec == 1000 + msg.frames_since_reset
    assert msg.camera_name == "front"
    assert list(msg.class_ids) == [0, 2, 7]
    assert list(msg.class_names) == ["road", "building", "traffic sign"]
    assert sum(msg.fraction) == pytest.approx(1.0)
    assert list(msg.pixel_count) == [8, 4, 4]
    assert (msg.width, msg.height, msg.num_classes) == (4, 4, 19)
    # Messages arrive in order: the counter keeps increasing.
    counts = [m.frames_since_reset for m in received]
    assert counts == sorted(counts)
