"""Regions of interest (tv3s_ros.regions): parsing and validation, rasterisation, coverage, drawing;
and the engine's per-stage timer (tv3s_ros.engine.timing)."""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from tv3s_ros.regions import (
    Region,
    RegionMasks,
    RegionsError,
    draw_regions,
    parse_regions,
    polygon_mask,
    region_coverage,
)

EXAMPLE = {
    "front": {"ego_lane": [[0.4, 0.6], [0.6, 0.6], [0.9, 1.0], [0.1, 1.0]]},
    "*": {"bottom_third": [[0, 0.667], [1, 0.667], [1, 1], [0, 1]]},
}


def reference_mask(points, height, width):
    """Independent check: OpenCV's point-in-polygon test at every pixel centre (pixel coordinates)."""
    contour = np.stack([np.asarray(points)[:, 0] * width, np.asarray(points)[:, 1] * height], 1).astype(np.float32)
    mask = np.zeros((height, width), bool)
    on_edge = 0
    for r in range(height):
        for c in range(width):
            d = cv2.pointPolygonTest(contour.reshape(-1, 1, 2), (c + 0.5, r + 0.5), False)
            mask[r, c] = d > 0
            on_edge += d == 0
    return mask, on_edge


# ------------------------------------------------------------------ parsing and validation
def test_parse_json_and_yaml_star_first_and_override():
    regions = parse_regions(json.dumps(EXAMPLE), ["front", "rear"])
    assert [r.name for r in regions["front"]] == ["bottom_third", "ego_lane"]
    assert [r.name for r in regions["rear"]] == ["bottom_third"]
    np.testing.assert_allclose(regions["front"][1].points, EXAMPLE["front"]["ego_lane"])
    # YAML flow/block style; a camera's own region replaces the '*' one of the same name, in place.
    text = """
    "*":
      a: [[0, 0], [1, 0], [1, 0.5]]
      b: [[0, 0.5], [1, 0.5], [1, 1]]
    rear:
      a: [[0, 0], [0.5, 0], [0.5, 0.5]]
    """
    regions = parse_regions(text, ["front", "rear"])
    assert [r.name for r in regions["rear"]] == ["a", "b"]
    assert regions["rear"][0].points[1, 0] == 0.5 and regions["front"][0].points[1, 0] == 1.0


@pytest.mark.parametrize("text", ["", "   ", "{}", "null"])
def test_empty_means_no_regions(text):
    assert parse_regions(text, ["front"]) == {}


def test_only_some_cameras_get_regions():
    regions = parse_regions('{"rear": {"x": [[0,0],[1,0],[0,1]]}}', ["front", "rear"])
    assert list(regions) == ["rear"]


def test_every_problem_is_reported_at_once():
    text = json.dumps({
        "side": {"a": [[0, 0], [1, 0], [1, 1]]},                       # unknown camera
        "front": {
            "few": [[0, 0], [1, 1]],                                    # < 3 points
            "outside": [[0, 0], [1.2, 0], [1, 1]],                      # out of 0..1
            "bowtie": [[0, 0], [1, 1], [1, 0], [0, 0.5]],               # self-intersecting
            "line": [[0, 0], [0.5, 0.5], [1, 1]],                       # no area
            "bad point": [[0, 0], [1, 0], [1, 1]],                      # name with a space
            "notalist": 3,
            "nan": [[0, 0], [1, 0], ["x", 1]],
        },
    })
    with pytest.raises(RegionsError) as info:
        parse_regions(text, ["front", "rear"])
    text = str(info.value)
    for needle in ("unknown camera 'side'", "at least 3 points", "outside the image", "intersects itself",
                   "no area", "region names use", "expected a list", "two numbers"):
        assert needle in text, (needle, text)
    assert len(text.splitlines()) == 8


@pytest.mark.parametrize("text, needle", [
    ("{front: [", "not valid YAML"),
    ("[1, 2]", "must be a mapping"),
    ('{"front": []}', "non-empty mapping"),
])
def test_malformed_text(text, needle):
    with pytest.raises(RegionsError, match=needle):
        parse_regions(text, ["front"])


# ------------------------------------------------------------------ rasterisation
@pytest.mark.parametrize("points", [
    EXAMPLE["front"]["ego_lane"],
    EXAMPLE["*"]["bottom_third"],
    [[0.05, 0.1], [0.93, 0.21], [0.5, 0.47], [0.8, 0.93], [0.12, 0.71]],     # concave
    [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.61, 0.8], [0.61, 0.41], [0.39, 0.41], [0.39, 0.8], [0.2, 0.8]],
])
@pytest.mark.parametrize("size", [(48, 64), (37, 91)])
def test_mask_equals_point_in_polygon_at_pixel_centres(points, size):
    mask = polygon_mask(np.asarray(points, float), *size)
    ref, on_edge = reference_mask(points, *size)
    if on_edge:
        pytest.skip("a pixel centre lies exactly on an edge (ambiguous)")
    np.testing.assert_array_equal(mask, ref)


def test_full_image_and_thirds():
    full = polygon_mask(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float), 30, 40)
    assert full.all()
    third = polygon_mask(np.array(EXAMPLE["*"]["bottom_third"], float), 30, 40)
    assert third[20:].all() and not third[:20].any()   # rows 20..29 have centres below 0.667


def test_masks_are_cached_per_size():
    masks = RegionMasks([Region("a", np.array([[0, 0], [1, 0], [0, 1]], float))], max_sizes=2)
    first = masks.indices(10, 20)
    assert masks.indices(10, 20) is first
    masks.indices(11, 20)
    masks.indices(12, 20)              # evicts (10, 20), the least recently used
    assert masks.indices(10, 20) is not first
    np.testing.assert_array_equal(masks.indices(10, 20)[0], first[0])


# ------------------------------------------------------------------ coverage
def test_coverage_equals_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, size=(48, 64)).astype(np.uint8)
    labels[30:, :] = 2                  # the bottom is mostly class 2
    regions = parse_regions(json.dumps(EXAMPLE), ["front"])["front"]
    result = RegionMasks(regions).coverage(labels, 7)
    assert [c.region.name for c in result] == ["bottom_third", "ego_lane"]
    for cov in result:
        inside = labels[polygon_mask(cov.region.points, 48, 64)]
        ids, counts = np.unique(inside, return_counts=True)
        assert cov.region_pixels == inside.size
        np.testing.assert_array_equal(cov.class_ids, ids)
        np.testing.assert_array_equal(cov.pixel_count, counts)
        np.testing.assert_allclose(cov.fraction, counts / inside.size, rtol=1e-6)
        assert cov.class_ids.dtype == np.uint16 and cov.pixel_count.dtype == np.uint32
        assert abs(float(cov.fraction.sum()) - 1.0) < 1e-5


def test_region_without_pixel_centres_is_empty():
    sliver = Region("sliver", np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01]]))   # inside pixel (0, 0), not its centre
    (cov,) = region_coverage(np.zeros((10, 10), np.uint8), [sliver], 3)
    assert cov.region_pixels == 0 and cov.class_ids.size == 0 and cov.fraction.size == 0


def test_uint16_labels():
    labels = np.full((8, 8), 300, np.uint16)
    (cov,) = region_coverage(labels, [Region("all", np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float))], 301)
    assert cov.class_ids.tolist() == [300] and cov.pixel_count.tolist() == [64]


# ------------------------------------------------------------------ drawing
def test_draw_regions_outlines_a_copy():
    image = np.zeros((60, 80, 3), np.uint8)
    regions = parse_regions(json.dumps(EXAMPLE), ["front"])["front"]
    drawn = draw_regions(image, regions)
    assert not image.any(), "the input must stay untouched"
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    # The bottom third's top edge (y = 0.667 -> row 39.5) is drawn; the image centre is not.
    assert drawn[39:41, 5:75].any()
    assert not drawn[20, 40].any()


# ------------------------------------------------------------------ stage timer
def test_stage_timer_cpu_adds_up():
    import torch

    from tv3s_ros.engine.timing import StageTimer

    start = time.perf_counter()
    timer = StageTimer(torch.device("cpu"))
    time.sleep(0.02)
    timer.mark("model")
    time.sleep(0.01)
    timer.mark("upload_preprocess")
    time.sleep(0.01)
    timer.mark("model")
    stages = timer.finish("postprocess")
    total = time.perf_counter() - start
    assert set(stages) == {"model", "upload_preprocess", "postprocess"}
    assert stages["model"] >= 0.03 and stages["upload_preprocess"] >= 0.01
    assert all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= total + 1e-6


def test_engine_reports_stages():
    import torch
    from tiny import TINY_PRESET, tiny_overrides

    from tv3s_ros.engine import Engine, FrameInput
    from tv3s_ros.model import build_model

    torch.manual_seed(0)
    engine = Engine(build_model(TINY_PRESET, **tiny_overrides(num_classes=5)), device="cpu", graphs="off")
    image = np.zeros((48, 64, 3), np.uint8)
    (out,) = engine.process([FrameInput("a", image, 1)], ["labels", "coverage"])
    assert set(out.stage_s) == {"upload_preprocess", "model", "postprocess"}
    assert all(v >= 0 for v in out.stage_s.values())
    assert out.stage_s["model"] > out.stage_s["upload_preprocess"]
    assert sum(out.stage_s.values()) <= out.model_time_s + 1e-3
