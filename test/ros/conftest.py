"""Fixtures shared by the ROS layer's tests."""
from __future__ import annotations

import pytest
from ros_helpers.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny test network (preset YAML, checkpoint), seed 5; modules needing another override it."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=5)


@pytest.fixture
def param_node():
    """Factory: an rclpy node with the tv3s parameters declared from ``-p`` style overrides
    (a real node in this process, its own context, no graph traffic)."""
    import rclpy
    from rclpy.parameter import Parameter

    from tv3s_ros.ros.params import declare_parameters

    context = rclpy.Context()
    rclpy.init(context=context)
    nodes = []

    def make(**overrides):
        params = [Parameter(k, value=v) for k, v in overrides.items()]
        node = rclpy.create_node(f"params_{len(nodes)}", context=context, parameter_overrides=params)
        nodes.append(node)
        declare_parameters(node)
        return node

    yield make
    for node in nodes:
        node.destroy_node()
    context.try_shutdown()
