"""Regions of interest: named polygons per camera, their pixel masks and per-class coverage inside them.

No ROS here: the node (:mod:`tv3s_ros.ros.region_coverage`) wires it to its parameter, topics and
overlay; anything else (a notebook over tv3s-bag's label images) can use it the same way.

Encoding (the node's ``regions`` string parameter): YAML or JSON, a mapping from camera name
(or ``*`` for every camera) to a mapping from region name to its polygon, a list of at least
three ``[x, y]`` vertices in normalised image coordinates (0..1, x to the right, y down; (0, 0)
is the top-left corner of the image, (1, 1) the bottom-right one)::

    {"front": {"ego_lane": [[0.4, 0.6], [0.6, 0.6], [0.9, 1.0], [0.1, 1.0]]},
     "*": {"bottom_third": [[0, 0.667], [1, 0.667], [1, 1], [0, 1]]}}

A camera gets the ``*`` regions first, then its own, in the order written; its own region of
the same name as a ``*`` one replaces it (at the ``*`` one's position).

Rasterisation: a pixel (row r, column c) of an ``H x W`` label image belongs to a region when its
centre ``((c + 0.5) / W, (r + 0.5) / H)`` lies inside the polygon by the even-odd rule. A mask
is computed once per label size (:class:`RegionMasks` caches it), so counting a frame is one
masked ``np.bincount`` per region.
"""
from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Region", "RegionCoverage", "RegionMasks", "RegionsError", "ALL_CAMERAS", "parse_regions",
           "polygon_mask", "region_coverage", "draw_regions"]

ALL_CAMERAS = "*"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_VERTICES = 256
_MAX_MASK_SIZES = 8        # label sizes whose masks are kept (one camera normally has one)
# Outline colours (RGB) for the overlay, cycled per region of a camera.
_COLOURS = ((255, 255, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 128, 0), (0, 255, 0))


class RegionsError(ValueError):
    """The ``regions`` text is invalid; the message lists every problem, one per line."""


@dataclass(frozen=True)
class Region:
    """A named polygon; ``points`` is ``[N, 2]`` float64 (x, y), normalised, N >= 3."""

    name: str
    points: np.ndarray

    def __eq__(self, other) -> bool:
        return isinstance(other, Region) and self.name == other.name and np.array_equal(self.points, other.points)

    def __hash__(self) -> int:
        return hash((self.name, self.points.tobytes()))


@dataclass
class RegionCoverage:
    """Coverage inside one region of one frame (``class_ids`` ascending, only classes present)."""

    region: Region
    region_pixels: int
    class_ids: np.ndarray     # uint16
    pixel_count: np.ndarray   # uint32
    fraction: np.ndarray      # float32, sums to 1 (empty when region_pixels is 0)


def _segments_cross(p1, p2, q1, q2) -> bool:
    """True when the closed segments p1-p2 and q1-q2 intersect (touching counts)."""
    def orient(a, b, c):
        v = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        return 0 if abs(v) < 1e-12 else (1 if v > 0 else -1)

    def on(a, b, c):   # c on segment a-b, given collinear
        return min(a[0], b[0]) - 1e-12 <= c[0] <= max(a[0], b[0]) + 1e-12 and \
            min(a[1], b[1]) - 1e-12 <= c[1] <= max(a[1], b[1]) + 1e-12

    o1, o2, o3, o4 = orient(p1, p2, q1), orient(p1, p2, q2), orient(q1, q2, p1), orient(q1, q2, p2)
    if o1 != o2 and o3 != o4:
        return True
    return (o1 == 0 and on(p1, p2, q1)) or (o2 == 0 and on(p1, p2, q2)) or \
        (o3 == 0 and on(q1, q2, p1)) or (o4 == 0 and on(q1, q2, p2))


def _self_intersection(points: np.ndarray) -> Optional[Tuple[int, int]]:
    """Indices (i, j) of two non-adjacent edges that cross (edge i runs from vertex i to i+1)."""
    n = len(points)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue   # adjacent edges share a vertex
            if _segments_cross(points[i], points[(i + 1) % n], points[j], points[(j + 1) % n]):
                return i, j
    return None


def _parse_polygon(where: str, value: Any, problems: List[str]) -> Optional[np.ndarray]:
    if not isinstance(value, (list, tuple)):
        problems.append(f"{where}: expected a list of [x, y] points, got {type(value).__name__} {value!r}"[:300])
        return None
    if len(value) < 3:
        problems.append(f"{where}: a polygon needs at least 3 points, got {len(value)}")
        return None
    if len(value) > _MAX_VERTICES:
        problems.append(f"{where}: at most {_MAX_VERTICES} points, got {len(value)}")
        return None
    points = []
    for k, point in enumerate(value):
        ok = isinstance(point, (list, tuple)) and len(point) == 2 and \
            all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in point)
        if not ok:
            problems.append(f"{where}: point {k} must be [x, y] with two numbers, got {point!r}"[:300])
            return None
        x, y = float(point[0]), float(point[1])
        if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            problems.append(f"{where}: point {k} [{point[0]}, {point[1]}] is outside the image; coordinates "
                            "are normalised, 0..1 (x right, y down)")
            return None
        points.append((x, y))
    array = np.asarray(points, dtype=np.float64)
    area = 0.5 * abs(float(np.dot(array[:, 0], np.roll(array[:, 1], -1)) -
                           np.dot(array[:, 1], np.roll(array[:, 0], -1))))
    if area <= 1e-9:
        problems.append(f"{where}: the polygon has no area (its points lie on one line)")
        return None
    crossing = _self_intersection(array)
    if crossing is not None:
        i, j = crossing
        problems.append(f"{where}: the polygon intersects itself (edge {i}-{(i + 1) % len(array)} crosses "
                        f"edge {j}-{(j + 1) % len(array)}); list the points in order around the outline")
        return None
    return array


def parse_regions(text: str, cameras: Sequence[str]) -> Dict[str, List[Region]]:
    """Camera name -> its regions, in order (cameras without regions are left out).

    Raises :class:`RegionsError` listing every problem: invalid YAML, a camera name that is not
    one of ``cameras`` (nor ``*``), an invalid region name, fewer than 3 points, coordinates
    outside 0..1, a polygon without area or intersecting itself.
    """
    import yaml

    text = textwrap.dedent(text or "").strip()
    if not text:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RegionsError(f"regions is not valid YAML/JSON: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RegionsError("regions must be a mapping {camera or '*': {region name: [[x, y], ...]}}, got "
                           f"{type(data).__name__}")
    problems: List[str] = []
    parsed: Dict[str, Dict[str, Region]] = {}
    for camera, regions in data.items():
        camera = str(camera)
        if camera != ALL_CAMERAS and camera not in cameras:
            problems.append(f"regions: unknown camera {camera!r} (cameras: {', '.join(cameras) or 'none'}; "
                            f"'{ALL_CAMERAS}' applies to every camera)")
            continue
        if not isinstance(regions, dict) or not regions:
            problems.append(f"regions[{camera!r}]: expected a non-empty mapping of region name to polygon")
            continue
        own = parsed.setdefault(camera, {})
        for name, polygon in regions.items():
            name = str(name)
            where = f"regions[{camera!r}][{name!r}]"
            if not NAME_PATTERN.match(name):
                problems.append(f"{where}: region names use letters, digits, '_', '.' and '-' (1-64 characters)")
                continue
            points = _parse_polygon(where, polygon, problems)
            if points is not None:
                own[name] = Region(name, points)
    if problems:
        raise RegionsError("\n".join(problems))
    shared = parsed.get(ALL_CAMERAS, {})
    result: Dict[str, List[Region]] = {}
    for camera in cameras:
        merged = dict(shared)
        merged.update(parsed.get(camera, {}))
        if merged:
            result[camera] = list(merged.values())
    return result


def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[H, W]`` bool: pixel centres inside the normalised polygon (even-odd rule)."""
    points = np.asarray(points, dtype=np.float64)
    xs = ((np.arange(width, dtype=np.float64) + 0.5) / width)[None, :]
    ys = ((np.arange(height, dtype=np.float64) + 0.5) / height)[:, None]
    inside = np.zeros((height, width), dtype=bool)
    n = len(points)
    for i in range(n):
        x1, y1 = points[i]
        x2, y2 = points[i - 1]
        if y1 == y2:
            continue
        spans = (y1 > ys) != (y2 > ys)                        # [H, 1]: the edge crosses this row
        x_cross = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)      # [H, 1]
        inside ^= spans & (xs < x_cross)
    return inside


class RegionMasks:
    """Flat pixel indices of each region per label size, computed once per size (LRU of a few sizes)."""

    def __init__(self, regions: Sequence[Region], max_sizes: int = _MAX_MASK_SIZES):
        self.regions = list(regions)
        self.max_sizes = int(max_sizes)
        self._by_size: Dict[Tuple[int, int], List[np.ndarray]] = {}

    def indices(self, height: int, width: int) -> List[np.ndarray]:
        """Per region, the flat indices (``row * width + col``) of its pixels."""
        key = (int(height), int(width))
        found = self._by_size.pop(key, None)
        if found is None:
            found = [np.flatnonzero(polygon_mask(r.points, *key)) for r in self.regions]
        self._by_size[key] = found            # most recently used last
        while len(self._by_size) > self.max_sizes:
            self._by_size.pop(next(iter(self._by_size)))
        return found

    def coverage(self, labels: np.ndarray, num_classes: int) -> List[RegionCoverage]:
        """Coverage of every region in the ``[H, W]`` class-id image ``labels``."""
        return region_coverage(labels, self.regions, num_classes, self.indices(*labels.shape[:2]))


def region_coverage(labels: np.ndarray, regions: Sequence[Region], num_classes: int,
                    indices: Optional[Sequence[np.ndarray]] = None) -> List[RegionCoverage]:
    """Per-class pixel counts inside each region of ``labels`` (``[H, W]`` integer class ids)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if indices is None:
        indices = [np.flatnonzero(polygon_mask(r.points, *labels.shape)) for r in regions]
    flat = labels.reshape(-1)
    out = []
    for region, idx in zip(regions, indices):
        counts = np.bincount(flat[idx], minlength=num_classes) if len(idx) else np.zeros(num_classes, np.int64)
        present = np.flatnonzero(counts)
        n = counts[present]
        total = int(len(idx))
        out.append(RegionCoverage(region, total, present.astype(np.uint16), n.astype(np.uint32),
                                  (n / total).astype(np.float32) if total else np.zeros(0, np.float32)))
    return out


def draw_regions(image: np.ndarray, regions: Sequence[Region], thickness: Optional[int] = None) -> np.ndarray:
    """A copy of the ``[H, W, 3]`` uint8 RGB ``image`` with each region's outline and name drawn."""
    import cv2

    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    if thickness is None:
        thickness = max(1, int(round(min(h, w) / 240)))
    shift = 4                                 # sub-pixel vertices (1/16 pixel)
    scale = 1 << shift
    font_scale = max(0.3, min(h, w) / 600)
    for k, region in enumerate(regions):
        colour = _COLOURS[k % len(_COLOURS)]
        # Pixel centres sit at integer coordinates for OpenCV: normalised x maps to x * W - 0.5.
        px = np.stack([region.points[:, 0] * w - 0.5, region.points[:, 1] * h - 0.5], axis=1)
        pts = np.round(px * scale).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], True, colour, thickness, cv2.LINE_AA, shift)
        # The name just inside the top-most vertex.
        top = int(np.argmin(px[:, 1]))
        x = int(np.clip(px[top, 0], 0, max(0, w - 1)))
        y = int(np.clip(px[top, 1] + 4 + 12 * font_scale, 0, max(0, h - 1)))
        cv2.putText(out, region.name, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour,
                    max(1, thickness // 2), cv2.LINE_AA)
    return out
