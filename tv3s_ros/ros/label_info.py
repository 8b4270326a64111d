"""``~/label_info``: the class map as ``vision_msgs/LabelInfo``, latched for late subscribers.

Class ids are the label image's pixel values (0 .. num_classes - 1) with the model's class
names. ``threshold`` is 0.0: no confidence threshold is applied, every pixel gets its
highest-scoring class (the ``confidence`` image says how sure that is).

vision_msgs is optional: where it is not installed the node says so once and runs without
``~/label_info`` (ROS: ``sudo apt install ros-jazzy-vision-msgs``; the pip setup builds the two
interfaces into .venv, see third_party/vision_msgs_subset).
"""
from __future__ import annotations

from typing import Optional, Sequence

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["LABEL_INFO_QOS", "LABEL_INFO_THRESHOLD", "label_info_msg", "publish_label_info"]

LABEL_INFO_THRESHOLD = 0.0
# Transient local, depth 1: a subscriber that joins later still gets the one message.
LABEL_INFO_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


def label_info_msg(class_names: Sequence[str], stamp=None):
    """A LabelInfo mapping ids 0..len(class_names)-1 to ``class_names`` (needs vision_msgs)."""
    from vision_msgs.msg import LabelInfo, VisionClass

    msg = LabelInfo(threshold=LABEL_INFO_THRESHOLD)
    if stamp is not None:
        msg.header.stamp = stamp
    msg.class_map = [VisionClass(class_id=i, class_name=str(name)) for i, name in enumerate(class_names)]
    return msg


def publish_label_info(node, class_names: Sequence[str], publish: bool = True) -> Optional[object]:
    """Create ``~/label_info`` on ``node`` and publish the class map once (latched).

    ``publish=False`` only creates it: a lifecycle node publishes at activation (its lifecycle
    publisher drops messages while inactive).

    Returns the publisher (keep it: the latched message lives as long as the publisher), or
    None when vision_msgs is not available (logged once, at info level).
    """
    try:
        from vision_msgs.msg import LabelInfo
    except ImportError as err:
        node.get_logger().info(f"vision_msgs is not available ({err}): ~/label_info (vision_msgs/LabelInfo) is "
                               "not published; install ros-jazzy-vision-msgs for it")
        return None
    if len(class_names) > 65535:
        node.get_logger().warning(f"{len(class_names)} classes do not fit LabelInfo's uint16 ids: "
                                  "~/label_info is not published")
        return None
    publisher = node.create_publisher(LabelInfo, "~/label_info", LABEL_INFO_QOS)
    if publish:
        publisher.publish(label_info_msg(class_names, node.get_clock().now().to_msg()))
    return publisher
