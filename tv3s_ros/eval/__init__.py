"""Evaluation of TV3S on labelled video datasets (ROS-free); the CLI is ``tv3s-eval``."""
