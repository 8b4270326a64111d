"""~/label_info and ~/<camera>/camera_info in a real ROS 2 graph (tv3s_node in its own process).

- LabelInfo (vision_msgs) is latched: a subscriber that joins well after the node started
  receives it, with the model's class ids and names. Without vision_msgs the node says so once
  and serves everything else.
- CameraInfo: a fake camera (this test's probe) publishes images and CameraInfo; the node's
  ~/<camera>/camera_info carries the labels' header and intrinsics that project known 3D points
  onto the label image where the camera image's pixels land after the resize, for
  output_resolution model (label image at the network input size, sx != sy) and input.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import yaml
from ros_helpers.feed import CameraFeed
from ros_helpers.graph import NodeProcess, Probe, stamp_ns
from ros_helpers.tiny_model import TINY_YAML

pytestmark = pytest.mark.ros

CLASS_NAMES = ["road", "sidewalk", "car", "person", "sky", "vegetation", "traffic light"]
# A calibrated 200x120 camera (principal point off centre) and a right stereo camera's P.
K = [150.0, 0.0, 97.3, 0.0, 148.0, 61.9, 0.0, 0.0, 1.0]
P = [145.0, 0.0, 98.2, -145.0 * 0.12, 0.0, 145.0, 60.4, 0.0, 0.0, 0.0, 1.0, 0.0]
D = [-0.2, 0.05, 0.001, -0.002, 0.0]
R = [0.9998, -0.0175, 0.0, 0.0175, 0.9998, 0.0, 0.0, 0.0, 1.0]
H, W = 120, 200
POINTS = [(x, y, z) for z in (3.0, 8.0, 25.0) for x in (-1.5, -0.2, 0.0, 0.9, 1.6) for y in (-0.7, 0.0, 0.5)]


@pytest.fixture(scope="module")
def tiny_named(tmp_path_factory):
    """The tiny test network with named classes, as preset YAML + checkpoint."""
    import torch

    from tv3s_ros.model import build_model, save_checkpoint

    directory = tmp_path_factory.mktemp("tiny_named")
    preset = directory / "tiny.yaml"
    preset.write_text(yaml.safe_dump({**TINY_YAML, "class_names": CLASS_NAMES}))
    torch.manual_seed(5)
    weights = save_checkpoint(build_model(preset), directory / "tiny.pth")
    return preset, weights


@pytest.fixture(scope="module")
def probe():
    p = Probe("tv3s_info_probe")
    yield p
    p.close()


def _params(tiny, topics, **extra):
    preset, weights = tiny
    return {"model": preset, "weights": weights, "device": "cpu", "camera_topics": topics,
            "reliability": "reliable", **extra}


def _stop_clean(node: NodeProcess) -> str:
    code = node.stop(signal.SIGINT)
    log = node.log()
    assert code == 0, log
    assert "Traceback" not in log, log
    return log


def _camera_info(k=K, p=P, width=W, height=H, stamp_ns_=0, frame_id="cam_optical"):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=list(D), k=list(k), r=list(R),
                     p=list(p))
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns_, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


def _project(matrix, points):
    """Pixel (u, v) of camera-frame points through a row-major 3x3 K or 3x4 P."""
    m = np.asarray(matrix, np.float64).reshape(3, -1)
    pts = np.asarray(points, np.float64)
    if m.shape[1] == 4:
        pts = np.hstack([pts, np.ones((len(pts), 1))])
    uvw = pts @ m.T
    return uvw[:, :2] / uvw[:, 2:]


def _check_scaled(info, labels, original_k, original_p, image_hw):
    """``info`` (the node's CameraInfo) against the label image ``labels`` made from an
    ``image_hw`` camera image: header, size, and projections of known points."""
    assert (stamp_ns(info.header), info.header.frame_id) == (stamp_ns(labels.header), labels.header.frame_id)
    assert (info.width, info.height) == (labels.width, labels.height)
    ih, iw = image_hw
    sx, sy = labels.width / iw, labels.height / ih
    for original, published in ((original_k, info.k), (original_p, info.p)):
        pixels = _project(original, POINTS)             # where the points are in the camera image
        # ... and where those camera-image positions land in the label image: the resize maps
        # pixel centres, u' = (u + 0.5) * sx - 0.5.
        expected = np.stack([(pixels[:, 0] + 0.5) * sx - 0.5, (pixels[:, 1] + 0.5) * sy - 0.5], 1)
        assert np.allclose(_project(published, POINTS), expected, atol=1e-6), (list(published), sx, sy)
    assert list(info.d) == D and np.allclose(info.r, R) and info.distortion_model == "plumb_bob"
    assert (info.binning_x, info.binning_y) == (0, 0)
    assert (info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height) == (0, 0, 0, 0)


def _publish_until_taken(probe, node, topic, msg, taken: int, timeout: float = 30.0) -> None:
    """Publish ``msg`` (volatile, like a camera) every 0.2 s until the node's log says it has
    taken ``taken`` CameraInfo topics: a message sent the instant the subscription shows up
    may precede the node's side of the match."""
    deadline = time.monotonic() + timeout
    while node.log().count("CameraInfo received from") < taken:
        assert time.monotonic() < deadline, f"the node never took CameraInfo from {topic}:\n{node.log()}"
        probe.publish(topic, msg)
        time.sleep(0.2)


def _matching(probe, topic, header, timeout=20.0):
    key = (stamp_ns(header), header.frame_id)
    return probe.wait_for(lambda: next((m for m in probe.received(topic)
                                        if (stamp_ns(m.header), m.header.frame_id) == key), None),
                          timeout, f"{topic} for stamp {key[0]}")


# ---------------------------------------------------------------------------------------------
# node M: output_resolution model, three cameras (sibling rule, override, none)

NS_M = "/t_info_m"


@pytest.fixture(scope="module")
def node_m(tiny_named, tmp_path_factory):
    topics = [f"{NS_M}/front/image_raw", f"{NS_M}/rear/image_raw/compressed", f"{NS_M}/side/image_raw"]
    info_topics = f"['', '{NS_M}/calib/rear_info', 'none']"
    node = NodeProcess(tmp_path_factory.mktemp("node_m") / "node.log",
                       _params(tiny_named, topics, output_resolution="model", camera_info_topics=info_topics),
                       namespace=NS_M)
    node.wait_for_log("ready:")
    yield node
    _stop_clean(node)


def test_late_joiner_receives_label_info(node_m):
    """A subscriber created in its own process context long after the node published once."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import LabelInfo

    time.sleep(1.5)   # the node published its LabelInfo at start-up, before anyone listened
    late = Probe("tv3s_late_joiner")
    try:
        topic = f"{NS_M}/tv3s_node/label_info"
        late.subscribe(LabelInfo, topic, QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                                                    reliability=ReliabilityPolicy.RELIABLE,
                                                    durability=DurabilityPolicy.TRANSIENT_LOCAL))
        msg = late.wait_for(lambda: late.received(topic), 20.0, "LabelInfo for a late joiner")[0]
        assert [(c.class_id, c.class_name) for c in msg.class_map] == list(enumerate(CLASS_NAMES))
        assert msg.threshold == 0.0
        time.sleep(0.5)
        assert len(late.received(topic)) == 1     # published once, not per frame
    finally:
        late.close()
    assert node_m.log().count("vision_msgs is not available") == 0


def test_camera_info_scaled_to_model_resolution(node_m, probe):
    from sensor_msgs.msg import CameraInfo

    base = f"{NS_M}/tv3s_node"
    front = CameraFeed(probe, NS_M, "front", f"{NS_M}/front/image_raw", False, H, W, seed=21)
    rear = CameraFeed(probe, NS_M, "rear", f"{NS_M}/rear/image_raw/compressed", True, H, W, seed=22)
    for name in ("front", "rear"):
        probe.subscribe(CameraInfo, f"{base}/{name}/camera_info")
    for feed in (front, rear):
        feed.wait_connected()
        probe.wait_for_publishers(f"{base}/{feed.name}/camera_info")
    graph = {name for name, _ in probe.node.get_topic_names_and_types()}
    assert f"{base}/side/camera_info" not in graph and f"{base}/side/labels" in graph   # 'none'
    time.sleep(0.3)

    # No CameraInfo yet: frames are published, camera_info is not, and that is said once.
    for _ in range(2):
        front.send()
    assert node_m.log().count("no CameraInfo received on") == 1
    assert probe.received(f"{base}/front/camera_info") == []

    # The camera's CameraInfo on the sibling topic (front) and on the overriding topic (rear).
    probe.publisher(CameraInfo, f"{NS_M}/front/camera_info")
    probe.publisher(CameraInfo, f"{NS_M}/calib/rear_info")
    probe.wait_for_subscribers(f"{NS_M}/front/camera_info")
    probe.wait_for_subscribers(f"{NS_M}/calib/rear_info")
    _publish_until_taken(probe, node_m, f"{NS_M}/front/camera_info", _camera_info(), 1)
    _publish_until_taken(probe, node_m, f"{NS_M}/calib/rear_info", _camera_info(), 2)

    for feed in (front, rear):
        for _ in range(2):
            result = feed.send()
            info = _matching(probe, f"{base}/{feed.name}/camera_info", result.labels.header)
            assert (result.labels.height, result.labels.width) != (H, W)     # model resolution
            _check_scaled(info, result.labels, K, P, (H, W))
    sx, sy = info.width / W, info.height / H
    print(f"label image {info.width}x{info.height}: sx {sx:.4f}, sy {sy:.4f}")
    assert abs(sx - sy) > 1e-3   # the official resize rounds each side: a real test of both axes

    # The latest CameraInfo is used.
    k2 = list(K)
    k2[0], k2[2] = 180.0, 101.0
    probe.publish(f"{NS_M}/front/camera_info", _camera_info(k=k2))
    for _ in range(10):
        result = front.send()
        info = _matching(probe, f"{base}/front/camera_info", result.labels.header)
        if abs(info.k[0] - 180.0 * sx) < 1e-6:
            break
    else:
        raise AssertionError(f"the new CameraInfo was not used: {list(info.k)}")
    _check_scaled(info, result.labels, k2, P, (H, W))
    assert node_m.log().count("no CameraInfo received on") == 1


# ---------------------------------------------------------------------------------------------
# node I: output_resolution input, and no vision_msgs in that process

NS_I = "/t_info_i"


def test_camera_info_at_input_resolution_and_no_vision_msgs(tiny_named, probe, tmp_path):
    from sensor_msgs.msg import CameraInfo

    # A vision_msgs package that fails to import, ahead of the real one on the node's path.
    hidden = tmp_path / "hide" / "vision_msgs"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(hidden.parent), os.environ.get("PYTHONPATH", "")])}
    topic = f"{NS_I}/cam/front/image_raw"
    node = NodeProcess(tmp_path / "node.log", _params(tiny_named, [topic], output_resolution="input"),
                       namespace=NS_I, env=env)
    try:
        log = node.wait_for_log("ready:")
        assert log.count("vision_msgs is not available") == 1, log
        base = f"{NS_I}/tv3s_node"
        graph = {name for name, _ in probe.node.get_topic_names_and_types()}
        assert f"{base}/label_info" not in graph
        feed = CameraFeed(probe, NS_I, "front", topic, False, H, W, seed=23)
        probe.subscribe(CameraInfo, f"{base}/front/camera_info")
        feed.wait_connected()
        probe.wait_for_publishers(f"{base}/front/camera_info")
        probe.publisher(CameraInfo, f"{NS_I}/cam/front/camera_info")     # the sibling of .../image_raw
        probe.wait_for_subscribers(f"{NS_I}/cam/front/camera_info")
        _publish_until_taken(probe, node, f"{NS_I}/cam/front/camera_info", _camera_info(), 1)
        for _ in range(2):
            result = feed.send()
            info = _matching(probe, f"{base}/front/camera_info", result.labels.header)
            assert (info.width, info.height) == (W, H)
            _check_scaled(info, result.labels, K, P, (H, W))
            assert np.allclose(info.k, K) and np.allclose(info.p, P)    # same grid: unchanged
    finally:
        _stop_clean(node)

