"""The pieces behind ~/label_info and ~/<camera>/camera_info on their own: the camera_info
topic rule, the camera_info_topics parameter, CameraInfo conversion, the LabelInfo message
and the vision_msgs subset's definitions."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tv3s_ros.camera_names import camera_info_topic


@pytest.mark.parametrize("image_topic, info_topic", [
    ("/cam/front/image_raw", "/cam/front/camera_info"),
    ("/cam/front/image_raw/compressed", "/cam/front/camera_info"),
    ("/cam/front/image_rect_color", "/cam/front/camera_info"),
    ("/stereo/left/image", "/stereo/left/camera_info"),
    ("/image", "/camera_info"),
    ("image_raw/compressed", "camera_info"),
    ("front/image_raw", "front/camera_info"),
    ("~/cam/image", "~/cam/camera_info"),
])
def test_camera_info_topic_is_the_image_topics_sibling(image_topic, info_topic):
    assert camera_info_topic(image_topic) == info_topic


def test_camera_info_topic_needs_a_segment():
    for topic in ("compressed", "/compressed", "", "~"):
        with pytest.raises(ValueError, match="camera_info topic"):
            camera_info_topic(topic)


@pytest.fixture
def param_node(param_node):
    """The shared factory (test/ros/conftest.py), allow_random_weights by default: no weights here."""
    return lambda **overrides: param_node(**{"allow_random_weights": True, **overrides})


@pytest.mark.ros
def test_camera_info_topics_parameter(param_node):
    from tv3s_ros.ros.params import ParameterError, read_settings

    topics = ["/a/front/image_raw", "/b/rear/image_raw/compressed", "/c/side/image_raw"]
    s = read_settings(param_node(camera_topics=topics))
    assert s.camera_info_topics == ("/a/front/camera_info", "/b/rear/camera_info", "/c/side/camera_info")
    s = read_settings(param_node(camera_topics=topics, camera_info_topics=["", "/calib/rear", "none"]))
    assert s.camera_info_topics == ("/a/front/camera_info", "/calib/rear", "")
    with pytest.raises(ParameterError, match="camera_info_topics has 1 entries but camera_topics has 3"):
        read_settings(param_node(camera_topics=topics, camera_info_topics=["/x"]))
    with pytest.raises(ParameterError, match="no valid camera_info topic .*must not contain"):
        read_settings(param_node(camera_topics=topics[:1], camera_info_topics=["/bad topic"]))


@pytest.mark.ros
def test_camera_info_message_round_trip():
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    from tv3s_ros.ros.camera_info import camera_info_msg, camera_model_from_msg

    msg = CameraInfo(width=640, height=480, distortion_model="plumb_bob", d=[0.1, -0.2, 0.0, 0.0, 0.01],
                     k=[500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0],
                     p=[500.0, 0.0, 320.0, 0.0, 0.0, 500.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0], binning_x=2)
    msg.roi.x_offset, msg.roi.width, msg.roi.height = 8, 320, 240
    model = camera_model_from_msg(msg)
    assert model.binning_x == 2 and model.roi == (8, 0, 320, 240, False)
    header = Header(frame_id="cam_optical")
    header.stamp.sec = 7
    back = camera_info_msg(header, model)
    assert back == CameraInfo(header=header, width=640, height=480, distortion_model="plumb_bob", d=msg.d,
                              k=msg.k, r=msg.r, p=msg.p, binning_x=2, roi=msg.roi)


@pytest.mark.ros
def test_label_info_message():
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs (./setup.sh builds it into .venv)")
    from rclpy.serialization import deserialize_message, serialize_message
    from vision_msgs.msg import LabelInfo

    from tv3s_ros.ros.label_info import LABEL_INFO_QOS, label_info_msg

    msg = deserialize_message(serialize_message(label_info_msg(["road", "car", "person"])), LabelInfo)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, "road"), (1, "car"), (2, "person")]
    assert msg.threshold == 0.0
    assert LABEL_INFO_QOS.depth == 1 and LABEL_INFO_QOS.durability.name == "TRANSIENT_LOCAL"
    assert LABEL_INFO_QOS.reliability.name == "RELIABLE"


def _share(package: str) -> Path:
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        if (Path(prefix) / "share" / package).is_dir():
            return Path(prefix) / "share" / package
    pytest.skip(f"{package} is not installed (./setup.sh builds the subset into .venv)")


def test_vision_msgs_definitions_hash_like_vision_msgs_4():
    """LabelInfo/VisionClass (the pip setup's subset, or the real package) have the type hashes
    rosidl computes from vision_msgs 4.1.1's own .msg files, so nodes built against either
    talk to each other (Jazzy matches types by hash)."""
    share = _share("vision_msgs") / "msg"
    hashes = {}
    for name in ("LabelInfo", "VisionClass"):
        for entry in json.loads((share / f"{name}.json").read_text())["type_hashes"]:
            hashes[entry["type_name"]] = entry["hash_string"]
    assert hashes["vision_msgs/msg/LabelInfo"] == \
        "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783"
    assert hashes["vision_msgs/msg/VisionClass"] == \
        "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a"


def test_the_subset_stays_out_of_ros_workspaces():
    """colcon and rosdep must not take the subset for a workspace package (it would shadow the
    real vision_msgs): ignore markers next to its package.xml."""
    subset = Path(__file__).resolve().parents[2] / "third_party" / "vision_msgs_subset"
    assert (subset / "package.xml").is_file()
    for marker in ("COLCON_IGNORE", "AMENT_IGNORE", "CATKIN_IGNORE"):
        assert (subset / marker).is_file(), marker
    from catkin_pkg.packages import find_packages

    assert "vision_msgs" not in {p.name for p in find_packages(str(subset.parent)).values()}
