"""Video datasets on disk (ROS-free): readers for the layouts tv3s-eval and tv3s-train use."""
