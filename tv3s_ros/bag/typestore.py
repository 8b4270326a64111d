"""Message types for reading and writing bags: ROS 2 Jazzy plus ``tv3s_ros/msg/ClassCoverage``.

The coverage definition is read from ``ClassCoverage.msg`` where the package ships it (the
source checkout's ``msg/`` folder or an installed ``share/tv3s_ros/msg/``). A pip wheel or a
copied module tree has neither, so the field list is also embedded below as a last resort;
a test keeps the embedded copy equal to the file.
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

CLASS_COVERAGE = "tv3s_ros/msg/ClassCoverage"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
# ROS 1 bags name the same types without the "msg/" part; rosbags' readers normalize them,
# but a reader may also hand out the raw ROS 1 name.
ROS1_IMAGE_NAMES = {"sensor_msgs/Image": IMAGE, "sensor_msgs/CompressedImage": COMPRESSED_IMAGE}

# Fallback copy of msg/ClassCoverage.msg (fields only). Kept equal to the file by
# test/bag/test_bag_tool.py::test_embedded_class_coverage_matches_msg_file.
EMBEDDED_CLASS_COVERAGE_MSG = """\
std_msgs/Header header
string camera_name
uint16[] class_ids
string[] class_names
float32[] fraction
uint32[] pixel_count
float32[] mean_confidence
uint32 width
uint32 height
uint16 num_classes
uint32 frames_since_reset
string reset_reason
uint32 skipped_frames
float32 latency_s
float32 model_time_s
"""


def class_coverage_msg_candidates() -> list[Path]:
    """Places a ``ClassCoverage.msg`` may live, most specific first."""
    package_dir = Path(__file__).resolve().parents[1]  # .../tv3s_ros
    candidates = [package_dir.parent / "msg" / "ClassCoverage.msg"]  # source checkout
    # Installed by rosidl_generate_interfaces into <prefix>/share/tv3s_ros/msg/.
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)  # ./setup.sh installs the messages into the venv prefix
    for prefix in prefixes:
        candidates.append(Path(prefix) / "share" / "tv3s_ros" / "msg" / "ClassCoverage.msg")
    return candidates


@lru_cache(maxsize=1)
def class_coverage_definition() -> tuple[str, str]:
    """Return ``(msg text, where it came from)`` for ``tv3s_ros/msg/ClassCoverage``."""
    for path in class_coverage_msg_candidates():
        if path.is_file():
            return path.read_text(encoding="utf-8"), str(path)
    return EMBEDDED_CLASS_COVERAGE_MSG, "embedded copy in tv3s_ros/bag/typestore.py"


def build_typestore() -> Typestore:
    """Jazzy type store with ``tv3s_ros/msg/ClassCoverage`` registered.

    A fresh store per call: rosbags type stores are mutable and cheap to build.
    """
    store = get_typestore(Stores.ROS2_JAZZY)
    text, _ = class_coverage_definition()
    store.register(get_types_from_msg(text, CLASS_COVERAGE))
    return store


def normalize_msgtype(msgtype: str) -> str:
    """Map ROS 1 style image type names onto the ROS 2 names used everywhere else."""
    return ROS1_IMAGE_NAMES.get(msgtype, msgtype)
