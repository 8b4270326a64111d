"""Regions of interest and latency honesty of tv3s_node, in a real ROS 2 graph across processes.

One node (its own process, the tiny model on the CPU) with three cameras fed lock-step by the
probe: ``a`` has two regions (ego lane, bottom third), ``b`` none (same frames as ``a``: its
overlay is ``a``'s without the outlines), ``c`` one region covering the whole image and old
header stamps (now - 2 s). The tests check the region coverage against a reference computed
here from the published labels, the outlines in the overlay, the per-stage latency keys of
/diagnostics and the stamp-age warning.
"""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
from ros_helpers.feed import CameraFeed, labels_array
from ros_helpers.graph import NodeProcess, Probe, stamp_ns
from ros_helpers.tiny_model import write_tiny_model

pytestmark = pytest.mark.ros

NS = "/t_roi"
FQN = NS + "/tv3s_node"
H, W = 48, 64
REGIONS = {
    "a": {"ego_lane": [[0.4, 0.55], [0.6, 0.55], [0.93, 1.0], [0.07, 1.0]],
          "bottom_third": [[0, 0.667], [1, 0.667], [1, 1], [0, 1]]},
    "c": {"everything": [[0, 0], [1, 0], [1, 1], [0, 1]]},
}
MAX_STAMP_AGE_S = 1.0
OLD_S = 2.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=7)


@pytest.fixture(scope="module")
def probe():
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from tv3s_ros.msg import RegionCoverageArray

    p = Probe("tv3s_roi_probe")
    p.subscribe(DiagnosticArray, "/diagnostics")
    for cam in ("a", "c"):
        p.subscribe(RegionCoverageArray, f"{FQN}/{cam}/region_coverage")
    for cam in ("a", "b"):
        p.subscribe(Image, f"{FQN}/{cam}/overlay")
    yield p
    p.close()


@pytest.fixture(scope="module")
def node(tiny, tmp_path_factory):
    preset, weights = tiny
    log = tmp_path_factory.mktemp("node_roi") / "node.log"
    params = {"model": preset, "weights": weights, "device": "cpu",
              "camera_topics": [f"{NS}/{c}/image_raw" for c in ("a", "b", "c")],
              "reliability": "reliable", "publish": ["labels", "overlay"], "max_gap_s": 0.0,
              "diagnostics_period_s": 0.3, "max_stamp_age_s": MAX_STAMP_AGE_S,
              # One line of JSON inside single quotes: a string for ROS's YAML parameter rules.
              "regions": "'" + json.dumps(REGIONS) + "'"}
    node = NodeProcess(log, params, namespace=NS)
    node.wait_for_log("ready:")
    yield node
    code = node.stop()
    assert code == 0, node.log()
    assert "Traceback" not in node.log()


@pytest.fixture(scope="module")
def feeds(node, probe):
    out = {}
    for seed, cam in enumerate(("a", "b", "c"), start=31):
        out[cam] = CameraFeed(probe, NS, cam, f"{NS}/{cam}/image_raw", False, H, W, seed, want_labels=cam == "a")
    for feed in out.values():
        feed.wait_connected()
    probe.wait_for_publishers(f"{FQN}/a/region_coverage")
    probe.wait_for_publishers(f"{FQN}/a/overlay")
    time.sleep(0.3)
    return out


def _matching(probe, topic, stamp, timeout=30.0):
    def find():
        for msg in probe.received(topic):
            if stamp_ns(msg.header) == stamp:
                return msg
        return None

    return probe.wait_for(find, timeout, f"{topic} at stamp {stamp}")


def _reference(labels: np.ndarray, polygon):
    """Independent of tv3s_ros.regions: OpenCV's point-in-polygon test at each pixel centre."""
    h, w = labels.shape
    contour = np.array([[x * w, y * h] for x, y in polygon], np.float32).reshape(-1, 1, 2)
    inside = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            d = cv2.pointPolygonTest(contour, (c + 0.5, r + 0.5), False)
            assert d != 0, "test polygon passes through a pixel centre (ambiguous)"
            inside[r, c] = d > 0
    values = labels[inside]
    ids, counts = np.unique(values, return_counts=True)
    return int(values.size), ids.tolist(), counts.tolist()


def _image(msg) -> np.ndarray:
    assert msg.encoding == "rgb8"
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width * 3].reshape(
        msg.height, msg.width, 3)


def _send_fresh(feed, image=None, stamp=None):
    stamp = time.time_ns() if stamp is None else stamp
    return feed.send(image=image, stamp=stamp)


def test_region_coverage_equals_offline_reference_from_published_labels(feeds, probe):
    from tv3s_ros.regions import parse_regions

    feed = feeds["a"]
    for _ in range(3):
        result = _send_fresh(feed)
        msg = _matching(probe, f"{FQN}/a/region_coverage", result.stamp_ns)
        labels = labels_array(result.labels)
        assert msg.header.frame_id == result.frame_id and msg.camera_name == "a"
        assert (msg.width, msg.height) == (W, H) == (labels.shape[1], labels.shape[0])
        assert [r.name for r in msg.regions] == list(REGIONS["a"])
        for region in msg.regions:
            polygon = REGIONS["a"][region.name]
            np.testing.assert_allclose(np.stack([region.polygon_x, region.polygon_y], 1), polygon, atol=1e-6)
            total, ids, counts = _reference(labels, polygon)
            assert region.region_pixels == total > 0
            assert list(region.class_ids) == ids
            assert list(region.pixel_count) == counts
            np.testing.assert_allclose(region.fraction, np.array(counts) / total, rtol=1e-6)
            assert len(region.class_names) == len(ids)
    # The regions parse the same way in the test (the overlay check below uses them).
    assert [r.name for r in parse_regions(json.dumps(REGIONS), ["a", "b", "c"])["a"]] == list(REGIONS["a"])


def test_region_over_the_whole_image_equals_class_coverage_without_a_labels_subscriber(feeds, probe):
    """Camera c has no labels subscriber: the node computes the labels for its region anyway."""
    result = _send_fresh(feeds["c"])
    msg = _matching(probe, f"{FQN}/c/region_coverage", result.stamp_ns)
    (region,) = msg.regions
    cov = result.coverage
    assert region.name == "everything" and region.region_pixels == W * H
    assert list(region.class_ids) == list(cov.class_ids)
    assert list(region.pixel_count) == list(cov.pixel_count)


def test_overlay_shows_the_regions(feeds, probe):
    """a and b see the same frames with the same stamps (one at a time, so the same batch path):
    a's overlay is b's with a's regions drawn on it; b (no regions) gets none."""
    from tv3s_ros.regions import draw_regions, parse_regions

    regions = parse_regions(json.dumps(REGIONS), ["a", "b", "c"])["a"]
    for feed in (feeds["a"], feeds["b"]):   # both start from a fresh state
        probe.call_trigger(f"{FQN}/{feed.name}/reset")
    stamp = time.time_ns()
    overlays = {}
    for k in range(2):
        image = feeds["a"].next_image()
        for cam in ("a", "b"):
            result = feeds[cam].send(image=image, stamp=stamp + k * 50_000_000)
            overlays[cam] = _image(_matching(probe, f"{FQN}/{cam}/overlay", result.stamp_ns))
    assert not np.array_equal(overlays["a"], overlays["b"]), "no region outlines in a's overlay"
    np.testing.assert_array_equal(overlays["a"], draw_regions(overlays["b"], regions))


def _camera_status(probe, cam, predicate, timeout=30.0):
    name = f"{FQN.lstrip('/')}: camera {cam}"

    def find():
        for msg in reversed(probe.received("/diagnostics")):
            for status in msg.status:
                if status.name == name and predicate(status):
                    return status
        return None

    return probe.wait_for(find, timeout, f"diagnostics of camera {cam}")


def _values(status) -> dict:
    return {kv.key: kv.value for kv in status.values}


STAGES = ("queue", "decode", "upload_preprocess", "model", "postprocess", "publish")


def test_diagnostics_break_latency_down_by_stage(feeds, probe):
    for _ in range(6):
        _send_fresh(feeds["a"])
    published = None

    def enough(status):
        values = _values(status)
        return int(values.get("published", 0)) >= 8 and "stage_model_p50_ms" in values

    status = _camera_status(probe, "a", enough)
    values = _values(status)
    published = int(values["published"])
    p50 = {s: float(values[f"stage_{s}_p50_ms"]) for s in STAGES}
    p95 = {s: float(values[f"stage_{s}_p95_ms"]) for s in STAGES}
    for s in STAGES:
        assert 0.0 <= p50[s] <= p95[s], (s, values)
    # On the CPU the model dominates (tiny model ~50 ms; decoding a raw 64x48 image is ~0).
    assert p50["model"] == max(p50.values()), p50
    latency = float(values["latency_p50_ms"])
    assert sum(p50.values()) <= latency * 1.15 + 5.0, (p50, latency)
    # The stamp age covers at least the processing (fresh stamps: receipt ~ stamp).
    assert 0.0 < float(values["stamp_age_p50_ms"]) < MAX_STAMP_AGE_S * 1000, values
    assert published >= 8


def test_old_stamps_warn_fresh_ones_do_not(node, feeds, probe):
    for _ in range(3):
        _send_fresh(feeds["a"])
        feeds["c"].send(stamp=time.time_ns() - int(OLD_S * 1e9))
    old = _camera_status(probe, "c", lambda s: "max_stamp_age_s" in s.message)
    assert old.level == old.WARN, old
    counted = _camera_status(probe, "c", lambda s: int(_values(s).get("stamp_age_over_max", 0)) >= 3)
    assert float(_values(counted)["stamp_age_p50_ms"]) >= OLD_S * 1000
    node.wait_for_log("header stamp")
    assert node.log().count("header stamp") == 1, "the stamp-age log line is throttled"

    fresh = _camera_status(probe, "a", lambda s: int(_values(s).get("published", 0)) >= 3)
    assert "stamp" not in fresh.message, fresh.message
    assert fresh.level == fresh.OK, fresh
    assert _values(fresh)["stamp_age_over_max"] == "0"


def test_invalid_regions_stop_the_node_with_clear_errors(tiny, tmp_path):
    preset, weights = tiny
    bad = {"a": {"tri": [[0, 0], [1, 0]]}, "rear": {"x": [[0, 0], [1, 0], [1, 1]]},
           "*": {"far": [[0, 0], [1.5, 0], [1, 1]]}}
    node = NodeProcess(tmp_path / "bad.log", {"model": preset, "weights": weights, "device": "cpu",
                                              "camera_topics": [f"{NS}_bad/a/image_raw"],
                                              "regions": "'" + json.dumps(bad) + "'"})
    code = node.proc.wait(60)
    node.stop()
    log = node.log()
    assert code == 2, log
    assert "unknown camera 'rear'" in log and "at least 3 points" in log and "outside the image" in log, log


def test_draw_switch_off_keeps_the_overlay():
    from tv3s_ros.regions import Region
    from tv3s_ros.ros.region_coverage import RegionChannel

    overlay = np.zeros((8, 8, 3), np.uint8)
    region = Region("r", np.array([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]))
    assert RegionChannel("a", [region], None, ["x"], 1, draw=False).draw_on(overlay) is overlay
    assert RegionChannel("a", [region], None, ["x"], 1, draw=True).draw_on(overlay).any()


def test_rviz_overlay_display_names_the_regions():
    import yaml

    from tv3s_ros.ros.rviz_config import camera_views, region_names, rviz_config_text

    views = camera_views(["/veh/front/image_raw", "/veh/rear/image_raw"], namespace="perception")
    regions = region_names(json.dumps({"front": REGIONS["a"]}), ["front", "rear"])
    assert regions == {"front": ["ego_lane", "bottom_third"]}
    displays = yaml.safe_load(rviz_config_text(views, regions))["Visualization Manager"]["Displays"]
    overlays = {d["Topic"]["Value"]: d["Name"] for d in displays if d["Topic"]["Value"].endswith("/overlay")}
    assert overlays == {"/perception/tv3s_node/front/overlay": "front segmentation overlay + regions ego_lane, "
                        "bottom_third", "/perception/tv3s_node/rear/overlay": "rear segmentation overlay"}
    assert region_names("{bad", ["front"]) == {}     # the node reports a bad value; RViz still starts
