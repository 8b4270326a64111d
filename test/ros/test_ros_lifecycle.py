"""tv3s_node --lifecycle in a real ROS 2 graph: the node in its own process, driven through the
lifecycle_msgs services ``~/change_state`` and ``~/get_state`` from this test process.

- outputs only while active: frames sent while unconfigured or inactive produce nothing; after
  activate they do; deactivate + activate works again; the reset service answers while inactive;
- cleanup releases the model: a model of ~170 MB, the process's RSS drops by most of it and
  /diagnostics says model_loaded false; configure loads it again;
- configure with missing weights: the node stays unconfigured and logs why, once per attempt;
- shutdown from active, inactive and unconfigured ends the process with code 0.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_helpers.feed import CameraFeed, labels_array
from ros_helpers.graph import NodeProcess, Probe, diagnostics_probe
from ros_helpers.lifecycle import change_state, get_state, status_values, wait_node_status
from ros_helpers.tiny_model import NUM_CLASSES, TINY_YAML

pytestmark = pytest.mark.ros

QUIET_S = 1.5       # how long "nothing arrives" is watched


@pytest.fixture(scope="module")
def probe():
    p = diagnostics_probe("tv3s_lifecycle_probe")
    yield p
    p.close()


def _start(tmp_path: Path, ns: str, params: dict) -> NodeProcess:
    node = NodeProcess(tmp_path / "node.log", params, namespace=ns, node_args=["--lifecycle"])
    node.wait_for_log("is unconfigured")
    return node


def _stop_by_shutdown(probe: Probe, node: NodeProcess, name: str, transition: str) -> None:
    """Shut the node down through the lifecycle service: finalized, then the process exits 0."""
    assert change_state(probe, name, transition)
    node.proc.wait(15.0)
    assert node.stop() == 0, node.log()
    assert "Traceback" not in node.log(), node.log()


def _nothing_arrives(probe: Probe, topic: str, seconds: float = QUIET_S) -> None:
    time.sleep(seconds)
    assert probe.received(topic) == [], f"{topic} published while the node was not active"


# ---------------------------------------------------------------------------------------------
# outputs only while active, deactivate/activate, reset while inactive, shutdown from active


def test_outputs_only_while_active(tiny, probe, tmp_path):
    from sensor_msgs.msg import Image

    ns = "/t_lc_a"
    name = f"{ns}/tv3s_node"
    preset, weights = tiny
    node = _start(tmp_path, ns, {"model": preset, "weights": weights, "device": "cpu",
                                 "camera_topics": [f"{ns}/front/image_raw"], "reliability": "reliable",
                                 "diagnostics_period_s": 0.2})
    try:
        feed = CameraFeed(probe, ns, "front", f"{ns}/front/image_raw", False, 48, 64, seed=21)
        assert get_state(probe, name) == "unconfigured"
        status = wait_node_status(probe, name, lifecycle_state="unconfigured", model_loaded="false")
        assert "no model loaded" in status.message
        assert probe.node.count_publishers(feed.coverage_topic) == 0   # nothing created yet

        # configure: model loaded, publishers exist, no camera subscription, no output
        assert change_state(probe, name, "configure")
        assert get_state(probe, name) == "inactive"
        node.wait_for_log("configured:")
        probe.wait_for_publishers(feed.coverage_topic)
        probe.wait_for_publishers(feed.labels_topic)
        wait_node_status(probe, name, lifecycle_state="inactive", model_loaded="true")
        time.sleep(0.5)
        assert probe.publisher(Image, feed.topic).get_subscription_count() == 0
        for _ in range(5):
            probe.publish(feed.topic, feed.message(feed.next_image(), feed.stamp_ns, feed.frame_id))
            time.sleep(0.05)
        _nothing_arrives(probe, feed.coverage_topic)
        assert probe.received(feed.labels_topic) == []

        # activate: frames are processed
        assert change_state(probe, name, "activate")
        assert get_state(probe, name) == "active"
        feed.wait_connected()
        time.sleep(0.3)
        first = feed.send()
        labels = labels_array(first.labels)
        assert labels.shape == (48, 64) and labels.max() < NUM_CLASSES
        assert first.coverage.reset_reason == "first_frame"
        wait_node_status(probe, name, lifecycle_state="active", model_loaded="true")

        # deactivate: unsubscribed, silent; the reset service still answers
        assert change_state(probe, name, "deactivate")
        assert get_state(probe, name) == "inactive"
        probe.wait_for(lambda: probe.publisher(Image, feed.topic).get_subscription_count() == 0, 10.0,
                       "the node to unsubscribe from the camera")
        probe.clear(feed.coverage_topic)
        probe.clear(feed.labels_topic)
        for _ in range(5):
            probe.publish(feed.topic, feed.message(feed.next_image(), feed.stamp_ns, feed.frame_id))
            time.sleep(0.05)
        _nothing_arrives(probe, feed.coverage_topic)
        assert probe.received(feed.labels_topic) == []
        inactive = wait_node_status(probe, name, lifecycle_state="inactive", model_loaded="true")
        assert status_values(inactive)["model_loaded"] == "true"
        reply = probe.call_trigger(f"{name}/reset")
        assert reply.success, reply.message

        # activate again: processing resumes, with the reset requested while inactive
        assert change_state(probe, name, "activate")
        feed.wait_connected()
        time.sleep(0.3)
        again = feed.send()
        assert again.coverage.reset_reason == "service"
        assert labels_array(again.labels).shape == (48, 64)
        follow = feed.send()
        assert follow.coverage.frames_since_reset == 1

        _stop_by_shutdown(probe, node, name, "active_shutdown")
        log = node.log()
        assert "shut down from active" in log
    finally:
        node.stop()


# ---------------------------------------------------------------------------------------------
# cleanup releases the model


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A ~170 MB model (MiT-B3 backbone): its release is far above the RSS noise."""
    import torch

    from tv3s_ros.model import build_model, save_checkpoint

    directory = tmp_path_factory.mktemp("big_model")
    preset = directory / "big.yaml"
    preset.write_text(yaml.safe_dump({**TINY_YAML, "name": "tv3s_big_test", "backbone": "mit_b3"}))
    torch.manual_seed(0)
    model = build_model(preset)
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    weights = save_checkpoint(model, directory / "big.pth")
    del model
    return preset, weights, size_mb


def test_cleanup_releases_the_model(big_model, probe, tmp_path):
    ns = "/t_lc_m"
    name = f"{ns}/tv3s_node"
    preset, weights, size_mb = big_model
    assert size_mb > 150
    node = _start(tmp_path, ns, {"model": preset, "weights": weights, "device": "cpu",
                                 "camera_topics": [f"{ns}/front/image_raw"], "diagnostics_period_s": 0.2})
    try:
        coverage = f"{name}/front/coverage"
        before_mb = node.rss_mb()
        assert change_state(probe, name, "configure", timeout=180.0)
        wait_node_status(probe, name, lifecycle_state="inactive", model_loaded="true")
        loaded_mb = node.rss_mb()
        probe.wait_for_publishers(coverage)
        assert loaded_mb - before_mb > 0.8 * size_mb, (before_mb, loaded_mb, size_mb)

        assert change_state(probe, name, "cleanup")
        assert get_state(probe, name) == "unconfigured"
        status = wait_node_status(probe, name, lifecycle_state="unconfigured", model_loaded="false")
        released_mb = node.rss_mb()
        assert loaded_mb - released_mb > 0.8 * size_mb, (loaded_mb, released_mb, size_mb)
        assert float(status_values(status)["rss_mb"]) < loaded_mb - 0.8 * size_mb
        probe.wait_for(lambda: probe.node.count_publishers(coverage) == 0, 10.0, "the outputs to be destroyed")

        # configure loads it again (the same parameters), cleanup releases it again
        assert change_state(probe, name, "configure", timeout=180.0)
        reloaded_mb = node.rss_mb()
        assert reloaded_mb - released_mb > 0.8 * size_mb, (released_mb, reloaded_mb, size_mb)
        print(f"model {size_mb:.0f} MiB; RSS unconfigured {before_mb:.0f}, configured {loaded_mb:.0f}, "
              f"cleaned up {released_mb:.0f}, configured again {reloaded_mb:.0f} MiB")
        wait_node_status(probe, name, lifecycle_state="inactive", model_loaded="true")
        _stop_by_shutdown(probe, node, name, "inactive_shutdown")
        assert "shut down from inactive" in node.log()
    finally:
        node.stop()


# ---------------------------------------------------------------------------------------------
# configure errors leave the node unconfigured


def test_configure_with_missing_weights_stays_unconfigured(tiny, probe, tmp_path):
    ns = "/t_lc_e"
    name = f"{ns}/tv3s_node"
    preset, _ = tiny
    missing = tmp_path / "no_such_weights.pth"
    node = _start(tmp_path, ns, {"model": preset, "weights": missing, "device": "cpu",
                                 "camera_topics": [f"{ns}/front/image_raw"], "diagnostics_period_s": 0.2})
    try:
        assert not change_state(probe, name, "configure")
        assert get_state(probe, name) == "unconfigured"
        log = node.wait_for_log("configure failed")
        assert log.count("configure failed") == 1, log
        assert f"weights file not found: {missing}" in log
        assert "Traceback" not in log
        status = wait_node_status(probe, name, lifecycle_state="unconfigured", model_loaded="false")
        assert "configure failed" in status.message and "weights file not found" in status.message
        assert probe.node.count_publishers(f"{name}/front/coverage") == 0
        services = dict(probe.node.get_service_names_and_types_by_node("tv3s_node", ns))
        assert f"{name}/get_state" in services and f"{name}/reset" not in services

        # a second attempt fails the same way, logged once more; activate is refused
        assert not change_state(probe, name, "configure")
        assert node.wait_for_log("configure failed", count=2).count("configure failed") == 2
        assert not change_state(probe, name, "activate")
        assert get_state(probe, name) == "unconfigured"
        assert "refused transition" in node.wait_for_log("refused transition")

        _stop_by_shutdown(probe, node, name, "unconfigured_shutdown")
        assert "shut down from unconfigured" in node.log()
    finally:
        node.stop()


def test_plain_node_is_still_the_default(tiny, probe, tmp_path):
    """Without --lifecycle: no lifecycle services; the node processes from the start."""
    from lifecycle_msgs.srv import GetState

    ns = "/t_lc_p"
    preset, weights = tiny
    node = NodeProcess(tmp_path / "node.log", {"model": preset, "weights": weights, "device": "cpu",
                                                "camera_topics": [f"{ns}/front/image_raw"],
                                                "reliability": "reliable"}, namespace=ns)
    try:
        node.wait_for_log("ready:")
        feed = CameraFeed(probe, ns, "front", f"{ns}/front/image_raw", False, 48, 64, seed=22)
        feed.wait_connected()
        time.sleep(0.3)
        assert np.asarray(labels_array(feed.send().labels)).shape == (48, 64)
        client = probe.node.create_client(GetState, f"{ns}/tv3s_node/get_state")
        try:
            assert not client.wait_for_service(timeout_sec=1.0)
        finally:
            probe.node.destroy_client(client)
    finally:
        assert node.stop() == 0
