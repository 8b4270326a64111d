"""ROS-free rosbag I/O for the offline bag tool (``tv3s-bag``), built on ``rosbags``.

- ``typestore``: the Jazzy type store plus ``tv3s_ros/msg/ClassCoverage``.
- ``source``: finding bags, listing image topics, reading camera frames in recording order.
- ``writer``: the output rosbag2 with the node's topics and headers.
- ``summary``: per-camera statistics, the end-of-run summary and the coverage plot.
- ``runner``: one bag through the shared ``Engine``, frame by frame, in recording order.

Nothing here imports rclpy: bags are processed on machines without a ROS install.
"""
