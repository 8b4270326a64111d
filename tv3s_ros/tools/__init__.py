"""Command-line tools: thin front ends over the ROS-free core (bag processing, benchmark, demo)."""
