"""Input hardening with tv3s_node in a real ROS 2 graph (node, probe: separate processes).

- degenerate frames (1x4000, 2x4000) of one camera are rejected as bad_size and cost the
  other camera nothing; a png decompression bomb is refused from its header;
- a depth image (16UC1) on a camera topic is rejected, a camera listed in
  allow_16bit_cameras gets its mono16 frames processed;
- a jpeg that libjpeg decodes only with a warning is rejected, and libjpeg's text reaches
  the log only through our logger;
- a checkpoint whose Mamba state goes NaN: every frame resets with reason non_finite and
  /diagnostics says WARN.
"""
from __future__ import annotations

import array
import signal
import time

import cv2
import numpy as np
import pytest
from ros_helpers.feed import PERIOD_NS, CameraFeed
from ros_helpers.graph import NodeProcess, diagnostics_probe, stamp_ns

pytestmark = pytest.mark.ros

NS = "/t_hard"


@pytest.fixture(scope="module")
def probe():
    p = diagnostics_probe("tv3s_hardening_probe")
    yield p
    p.close()


def _stop_clean(node: NodeProcess) -> None:
    code = node.stop(signal.SIGINT)
    log = node.log()
    assert code == 0, log
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def node(tiny, tmp_path_factory):
    preset, weights = tiny
    topics = [f"{NS}/good/image_raw", f"{NS}/bad/image_raw", f"{NS}/comp/image_raw/compressed",
              f"{NS}/thermal/image_raw"]
    log = tmp_path_factory.mktemp("node_hard") / "node.log"
    # max_gap_s 0: the test's stamps may jump over rejected frames without a gap reset.
    proc = NodeProcess(log, {"model": preset, "weights": weights, "device": "cpu", "camera_topics": topics,
                             "reliability": "reliable", "max_gap_s": 0.0, "diagnostics_period_s": 0.2,
                             "allow_16bit_cameras": ["thermal"]}, namespace=NS)
    proc.wait_for_log("ready:")
    yield proc
    _stop_clean(proc)


@pytest.fixture(scope="module")
def feeds(node, probe):
    specs = [("good", False), ("bad", False), ("comp", True), ("thermal", False)]
    made = {name: CameraFeed(probe, NS, name, f"{NS}/{name}/image_raw" + ("/compressed" if comp else ""), comp,
                             48, 64, seed) for seed, (name, comp) in enumerate(specs, start=21)}
    for feed in made.values():
        feed.wait_connected()
    time.sleep(0.3)
    return made


def _diag(probe, camera):
    name = f"{NS.lstrip('/')}/tv3s_node: camera {camera}"
    for msg in reversed(probe.received("/diagnostics")):
        for status in msg.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values}, status
    return None


def _wait_diag(probe, camera, key, at_least, timeout=30.0):
    def ok():
        found = _diag(probe, camera)
        return found if found and int(found[0].get(key, 0)) >= at_least else None

    return probe.wait_for(ok, timeout, f"diagnostics {camera}.{key} >= {at_least}")


def _raw(feed, image, stamp, encoding="rgb8"):
    """An Image of ``image`` (``[H, W, 3]`` uint8 or ``[H, W]`` uint16), rows unpadded."""
    from ros_helpers.messages import set_stamp
    from sensor_msgs.msg import Image

    msg = set_stamp(Image(), stamp, feed.frame_id)
    msg.height, msg.width, msg.encoding = int(image.shape[0]), int(image.shape[1]), encoding
    msg.step = int(image.shape[1]) * (image.shape[2] if image.ndim == 3 else 1) * image.itemsize
    msg.data = array.array("B", np.ascontiguousarray(image).tobytes())
    return msg


def test_degenerate_frames_cost_the_other_camera_nothing(node, feeds, probe):
    good, bad = feeds["good"], feeds["bad"]
    assert bad.send().coverage.reset_reason == "first_frame"
    results = []
    for k in range(6):
        shape = (1, 4000, 3) if k % 2 == 0 else (2, 4000, 3)
        bad.publish_raw(_raw(bad, np.full(shape, 100, np.uint8), bad.stamp_ns + (k + 1) * PERIOD_NS))
        results.append(good.send())     # waits for this very frame's outputs
    cov = [r.coverage for r in results]
    assert [(c.reset_reason, c.frames_since_reset) for c in cov] == \
        [("first_frame", 0)] + [("", i) for i in range(1, 6)]
    values, _ = _wait_diag(probe, "bad", "rejected.bad_size", 6)
    assert "model input" in values["last_rejection"] or "aspect" in values["last_rejection"]
    assert int(values["errors"]) == 0 and int(_diag(probe, "good")[0]["errors"]) == 0
    # The bad camera's state was never touched: its next real frame continues it.
    out = bad.send(stamp=bad.stamp_ns + 10 * PERIOD_NS).coverage
    assert (out.reset_reason, out.frames_since_reset) == ("", 1)
    assert "(bad_size)" in node.log()


def test_png_bomb_and_corrupt_jpeg_are_rejected(node, feeds, probe):
    from ros_helpers.messages import set_stamp
    from sensor_msgs.msg import CompressedImage

    comp = feeds["comp"]
    comp.send()

    def compressed(fmt, data, k):
        msg = set_stamp(CompressedImage(), comp.stamp_ns + k * PERIOD_NS // 4, comp.frame_id)
        msg.format, msg.data = fmt, array.array("B", data)
        return msg

    bomb = cv2.imencode(".png", np.zeros((8000, 8000), np.uint8))[1].tobytes()   # ~62 KB -> 64 MP
    comp.publish_raw(compressed("png", bomb, 1))
    _wait_diag(probe, "comp", "rejected.bad_size", 1)

    rng = np.random.default_rng(0)
    jpeg = cv2.imencode(".jpg", (rng.random((48, 64, 3)) * 255).astype(np.uint8))[1].tobytes()
    truncated = jpeg[:len(jpeg) // 2] + b"\xff\xd9"           # libjpeg: "premature end", still decodes
    comp.publish_raw(compressed("jpeg", truncated, 2))
    values, _ = _wait_diag(probe, "comp", "rejected.corrupt_compressed", 1)
    assert "libjpeg" in values["last_rejection"]
    assert comp.send().coverage.reset_reason == ""
    # libjpeg's own line never reaches stderr raw: only inside our logger's rejection line.
    raw_lines = [line for line in node.log().splitlines() if line.startswith("Corrupt JPEG")]
    assert not raw_lines, raw_lines


def test_depth_on_a_camera_topic_is_rejected_unless_allowed(node, feeds, probe):
    bad, thermal = feeds["bad"], feeds["thermal"]
    depth = np.full((48, 64), 1500, np.uint16)              # millimetres, as a depth driver sends
    bad.publish_raw(_raw(bad, depth, bad.stamp_ns + PERIOD_NS, "16UC1"))
    values, _ = _wait_diag(probe, "bad", "rejected.unsupported_encoding", 1)
    assert "depth image" in values["last_rejection"]

    stamp = thermal.stamp_ns + PERIOD_NS
    msg = _raw(thermal, np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 16, stamp, "mono16")
    seen = len(probe.received(thermal.coverage_topic))
    thermal.publish_raw(msg)
    cov = probe.wait_for(lambda: next((m for m in probe.received(thermal.coverage_topic)[seen:]
                                       if stamp_ns(m.header) == stamp), None), 30.0, "thermal coverage")
    assert (cov.width, cov.height) == (64, 48)


@pytest.fixture(scope="module")
def nan_node(tiny, tmp_path_factory):
    import torch

    from tv3s_ros.model import build_model, load_checkpoint, save_checkpoint

    preset, weights = tiny
    model = build_model(preset)
    load_checkpoint(model, weights)
    with torch.no_grad():   # dt goes NaN, and with it the carried SSM state
        model.decode_head.vs.layers[0].mixer.dt_proj.bias[0] = float("nan")
    broken = save_checkpoint(model, tmp_path_factory.mktemp("nan_model") / "nan.pth")
    log = tmp_path_factory.mktemp("node_nan") / "node.log"
    proc = NodeProcess(log, {"model": preset, "weights": broken, "device": "cpu",
                             "camera_topics": [f"{NS}/nan/image_raw"], "reliability": "reliable",
                             "diagnostics_period_s": 0.2}, namespace=NS + "_nan")
    proc.wait_for_log("ready:")
    yield proc
    _stop_clean(proc)


def test_non_finite_state_is_reset_counted_and_warned(nan_node, probe):
    feed = CameraFeed(probe, NS + "_nan", "nan", f"{NS}/nan/image_raw", False, 48, 64, 31)
    feed.wait_connected()
    time.sleep(0.3)
    reasons = [feed.send().coverage.reset_reason for _ in range(3)]
    assert reasons == ["first_frame", "non_finite", "non_finite"]
    name = f"{NS.lstrip('/')}_nan/tv3s_node: camera nan"

    def warned():
        for msg in reversed(probe.received("/diagnostics")):
            for status in msg.status:
                if status.name == name and int(dict((kv.key, kv.value) for kv in status.values)
                                               .get("non_finite", 0)) >= 3:
                    return status
        return None

    # The WARN lasts for the report that first sees new non-finite frames.
    feed.send()
    status = probe.wait_for(warned, 30.0, "non_finite in diagnostics")
    from diagnostic_msgs.msg import DiagnosticStatus

    warns = [s for msg in probe.received("/diagnostics") for s in msg.status
             if s.name == name and s.level == DiagnosticStatus.WARN and "non-finite" in s.message]
    assert warns, status
    assert "resets.non_finite" in {kv.key for kv in status.values}
    assert "non_finite" in nan_node.log()
