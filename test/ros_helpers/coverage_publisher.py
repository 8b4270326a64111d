"""Publishes ClassCoverage messages on /coverage_test until killed (child process of a test)."""
import sys

import rclpy
from rclpy.node import Node

from tv3s_ros.msg import ClassCoverage


def main() -> None:
    rclpy.init()
    node = Node("coverage_publisher")
    pub = node.create_publisher(ClassCoverage, "/coverage_test", 10)
    count = [0]

    def tick():
        msg = ClassCoverage()
        msg.header.stamp.sec = 1000 + count[0]
        msg.header.frame_id = "front_camera"
        msg.camera_name = "front"
        msg.class_ids = [0, 2, 7]
        msg.class_names = ["road", "building", "traffic sign"]
        msg.fraction = [0.5, 0.25, 0.25]
        msg.pixel_count = [8, 4, 4]
        msg.mean_confidence = [0.9, 0.8, 0.7]
        msg.width, msg.height, msg.num_classes = 4, 4, 19
        msg.frames_since_reset = count[0]
        msg.reset_reason = "first_frame" if count[0] == 0 else ""
        pub.publish(msg)
        count[0] += 1

    node.create_timer(0.05, tick)
    print("publishing", flush=True)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
