"""ROS-free datasets: the synthetic driving world (``world``) and its writers (``world_io``).

Nothing here imports rclpy; ``world_io.write_bag`` uses ``rosbags``.
"""
from tv3s_ros.data.world import CLASSES, IGNORE_INDEX, WORLD_VERSION, World, video_name

__all__ = ["CLASSES", "IGNORE_INDEX", "WORLD_VERSION", "World", "video_name"]
