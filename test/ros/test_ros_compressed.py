"""Compressed outputs in a real ROS 2 graph: tv3s_node (tiny random model) and this test's probe
node as separate processes.

- ``labels/compressed`` (PNG) decodes pixel for pixel to the raw ``labels`` of the same frame;
  ``color/compressed`` and ``overlay/compressed`` (JPEG) decode close to the raw images, with
  compressed_image_transport's format strings;
- a compressed topic exists for each output in ``publish`` (no other), and nothing is encoded
  for it without a subscriber (``compressed.*`` counters in /diagnostics); a compressed
  subscriber alone makes the engine compute its output; unsubscribing stops the encoding;
- ``jpeg_quality`` changes at runtime and refuses values outside 1..100.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from ros_helpers.feed import CameraFeed, labels_array
from ros_helpers.graph import NodeProcess, Probe, diagnostics_probe, stamp_ns
from ros_helpers.tiny_model import write_tiny_model

pytestmark = pytest.mark.ros

NS = "/t_cmp"
FQN = f"{NS}/tv3s_node"
BASE = f"{FQN}/front"
H, W = 96, 128


@pytest.fixture(scope="module")
def probe():
    p = diagnostics_probe("tv3s_compressed_probe")
    yield p
    p.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    preset, weights = write_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=4)
    log = tmp_path_factory.mktemp("node_compressed") / "node.log"
    # confidence is not in publish: it has no topic, raw or compressed.
    params = {"model": preset, "weights": weights, "device": "cpu", "camera_topics": [f"{NS}/front/image_raw"],
              "publish": ["labels", "color", "overlay"], "diagnostics_period_s": 0.2, "reliability": "reliable",
              "overlay_alpha": 0.5}
    proc = NodeProcess(log, params, namespace=NS)
    proc.wait_for_log("ready:")
    yield proc
    code = proc.stop()
    assert code == 0 and "Traceback" not in proc.log(), proc.log()


@pytest.fixture(scope="module")
def feed(node, probe):
    f = CameraFeed(probe, NS, "front", f"{NS}/front/image_raw", False, H, W, seed=21)
    f.wait_connected()
    time.sleep(0.3)
    return f


def _compressed_stats(probe):
    """``{key: value}`` of the compressed.front.* values of the newest node status."""
    name = f"{FQN.lstrip('/')}: model"
    for msg in reversed(probe.received("/diagnostics")):
        for status in msg.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values if kv.key.startswith("compressed.front.")}
    return None


def _fresh_stats(probe):
    """Stats from a diagnostics message that arrives after this call (so after what came before)."""
    probe.clear("/diagnostics")
    found = probe.wait_for(lambda: (_compressed_stats(probe),) if _compressed_stats(probe) is not None else None,
                           10, "a node status in /diagnostics")
    return found[0]


def _matching(probe, topic: str, result, timeout: float = 20.0):
    key = (result.stamp_ns, result.frame_id)
    return probe.wait_for(lambda: next((m for m in probe.received(topic)
                                        if (stamp_ns(m.header), m.header.frame_id) == key), None),
                          timeout, f"{topic} of stamp {result.stamp_ns}")


def _subscription(probe, topic: str):
    return next(s for s in probe.node.subscriptions if s.topic_name == topic)


def test_compressed_topics_follow_publish_and_stay_idle_without_subscribers(node, feed, probe):
    names = dict(probe.node.get_topic_names_and_types())
    for output in ("labels", "color", "overlay"):
        assert names.get(f"{BASE}/{output}/compressed") == ["sensor_msgs/msg/CompressedImage"], names
    assert f"{BASE}/confidence/compressed" not in names and f"{BASE}/confidence" not in names
    for _ in range(3):
        feed.send()
    assert _fresh_stats(probe) == {}, "a compressed topic was encoded without a subscriber"
    assert "front: " in node.log() and "labels/compressed" in node.log()     # listed in the ready line


def test_png_labels_equal_raw_labels_and_jpeg_images_are_close(node, feed, probe):
    from sensor_msgs.msg import CompressedImage, Image

    from tv3s_ros.image_codec import decode_msg
    from tv3s_ros.image_encode import decode_compressed_exact

    for output in ("labels", "color", "overlay"):
        probe.subscribe(CompressedImage, f"{BASE}/{output}/compressed")
    probe.subscribe(Image, f"{BASE}/color")      # raw color too; raw overlay not: its compressed
    time.sleep(0.5)                               # subscriber alone must make the engine compute it
    for _ in range(3):
        result = feed.send()
        labels = labels_array(result.labels)

        png = _matching(probe, f"{BASE}/labels/compressed", result)
        assert png.format == "mono8; png compressed "
        assert bytes(png.data[:8]) == b"\x89PNG\r\n\x1a\n"
        decoded, encoding = decode_compressed_exact(png.format, png.data)
        assert encoding == "mono8" and decoded.shape == labels.shape
        assert np.array_equal(decoded, labels), f"{np.mean(decoded != labels):.2%} of the label pixels differ"
        assert len(np.unique(labels)) > 1      # a real label image, not a constant one

        color_msg = _matching(probe, f"{BASE}/color", result)
        color = np.frombuffer(color_msg.data, np.uint8).reshape(H, W, 3)
        jpeg = _matching(probe, f"{BASE}/color/compressed", result)
        assert jpeg.format == "rgb8; jpeg compressed bgr8" and bytes(jpeg.data[:2]) == b"\xff\xd8"
        got, encoding = decode_compressed_exact(jpeg.format, jpeg.data)
        assert encoding == "rgb8" and got.shape == color.shape
        error = np.abs(got.astype(int) - color.astype(int)).mean()
        assert error < 6.0, error
        # Red and blue in the right places (a BGR/RGB mix-up would be far off for palette colours).
        assert error < np.abs(got[:, :, ::-1].astype(int) - color.astype(int)).mean() / 2
        # The node's own input decoder reads it as the same RGB picture.
        assert np.array_equal(decode_msg(jpeg), got)

        overlay_msg = _matching(probe, f"{BASE}/overlay/compressed", result)
        assert overlay_msg.format == "rgb8; jpeg compressed bgr8"
        overlay, _ = decode_compressed_exact(overlay_msg.format, overlay_msg.data)
        expected = 0.5 * result.image.astype(float) + 0.5 * color.astype(float)    # overlay_alpha 0.5
        assert np.abs(overlay.astype(float) - expected).mean() < 6.0
    stats = _fresh_stats(probe)
    for output in ("labels", "color", "overlay"):
        assert int(stats[f"compressed.front.{output}.published"]) >= 3, stats
        assert float(stats[f"compressed.front.{output}.kb_per_frame"]) > 0
    assert float(stats["compressed.front.labels.kb_per_frame"]) < H * W / 1000.0   # smaller than raw


def _set_parameter(probe, name: str, value):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return probe.call_service(SetParameters, f"{FQN}/set_parameters", request).results[0]


def test_jpeg_quality_is_live_and_validated(node, feed, probe):
    from sensor_msgs.msg import CompressedImage

    if not any(s.topic_name == f"{BASE}/color/compressed" for s in probe.node.subscriptions):
        probe.subscribe(CompressedImage, f"{BASE}/color/compressed")
        time.sleep(0.5)
    sizes = {}
    for quality in (95, 10):
        assert _set_parameter(probe, "jpeg_quality", quality).successful
        result = feed.send()
        sizes[quality] = len(_matching(probe, f"{BASE}/color/compressed", result).data)
    assert sizes[10] < 0.8 * sizes[95], sizes        # small images: the JPEG tables are a fixed ~600 bytes
    for bad in (0, 101, "high"):
        assert not _set_parameter(probe, "jpeg_quality", bad).successful, bad
    assert _set_parameter(probe, "jpeg_quality", 90).successful


def test_unsubscribing_stops_the_encoding(node, feed, probe):
    topics = [f"{BASE}/{output}/compressed" for output in ("labels", "color", "overlay")]
    for topic in topics:
        if any(s.topic_name == topic for s in probe.node.subscriptions):
            probe.node.destroy_subscription(_subscription(probe, topic))
    probe.wait_for(lambda: all(probe.node.count_subscribers(t) == 0 for t in topics), 10, "unsubscribed")
    time.sleep(0.5)
    feed.send()
    before = _fresh_stats(probe)
    for _ in range(3):
        feed.send()
    after = _fresh_stats(probe)
    counts = {k: v for k, v in after.items() if k.endswith(".published")}
    assert counts == {k: v for k, v in before.items() if k.endswith(".published")}, (before, after)


def test_publish_compressed_false_offers_no_compressed_topics(tmp_path):
    preset, weights = write_tiny_model(tmp_path / "tiny", seed=4)
    ns = "/t_cmp_off"
    proc = NodeProcess(tmp_path / "node.log", {"model": preset, "weights": weights, "device": "cpu",
                                               "camera_topics": [f"{ns}/front/image_raw"], "publish": ["labels"],
                                               "publish_compressed": False}, namespace=ns)
    probe = Probe("tv3s_compressed_off_probe")
    try:
        proc.wait_for_log("ready:")
        probe.wait_for(lambda: f"{ns}/tv3s_node/front/labels" in dict(probe.node.get_topic_names_and_types()),
                       20, "the labels topic")
        time.sleep(0.5)
        names = dict(probe.node.get_topic_names_and_types())
        assert not [n for n in names if n.startswith(f"{ns}/tv3s_node/") and n.endswith("/compressed")], names
    finally:
        probe.close()
        assert proc.stop() == 0, proc.log()




def test_compressed_parameters_defaults_overrides_and_ranges(param_node, tmp_path):
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    from tv3s_ros.ros.params import read_settings, validate_jpeg_quality

    s = read_settings(param_node(allow_random_weights=True))
    assert (s.publish_compressed, s.jpeg_quality) == (True, 90)
    node = param_node(allow_random_weights=True, publish_compressed=False, jpeg_quality=50)
    s = read_settings(node)
    assert (s.publish_compressed, s.jpeg_quality) == (False, 50)
    assert not node.describe_parameter("jpeg_quality").read_only
    assert node.describe_parameter("publish_compressed").read_only
    for bad in (0, 101):
        with pytest.raises(InvalidParameterValueException):
            param_node(jpeg_quality=bad)
    with pytest.raises(InvalidParameterTypeException, match="jpeg_quality"):
        param_node(jpeg_quality="high")
    # What the runtime set-parameters check (and read_settings) say.
    assert validate_jpeg_quality(90) is None
    assert "1..100" in validate_jpeg_quality(0) and "1..100" in validate_jpeg_quality(True)
