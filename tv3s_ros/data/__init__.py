"""ROS-free video data: the synthetic driving world (``world``, writers in ``world_io``) and the
dataset readers tv3s-eval and tv3s-train use (``datasets``: VSPW, Cityscapes sequences, the
synthetic world).

Nothing here imports rclpy; ``world_io.write_bag`` uses ``rosbags``. World names are loaded
lazily so that ``python -m tv3s_ros.data.world`` does not import its own module twice.
"""
__all__ = ["CLASSES", "IGNORE_INDEX", "WORLD_VERSION", "World", "video_name"]


def __getattr__(name):
    if name in __all__:
        from tv3s_ros.data import world
        return getattr(world, name)
    raise AttributeError(f"module 'tv3s_ros.data' has no attribute {name!r}")
