"""Regions of interest in the node: ``~/<camera>/region_coverage`` and the outlines in the overlay.

The polygons, their masks and the counting are :mod:`tv3s_ros.regions` (no ROS); this module
holds one camera's regions with its publisher (:class:`RegionChannel`) and builds the
``tv3s_ros/RegionCoverageArray`` message. The worker computes the labels of every frame of a
camera with regions (whether or not anybody subscribes to ``~/<camera>/labels``), counts the
classes inside each region at the published label resolution and publishes the array with
the source header; the overlay, when published, gets the outlines and names drawn on it
(``draw_regions``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tv3s_ros.msg import RegionCoverage, RegionCoverageArray
from tv3s_ros.regions import Region, RegionMasks, draw_regions

__all__ = ["RegionChannel", "region_coverage_msg", "make_region_channel"]


class RegionChannel:
    """One camera's regions: mask cache (per label size), publisher, overlay drawing."""

    def __init__(self, camera: str, regions: Sequence[Region], publisher, class_names: Sequence[str],
                 num_classes: int, draw: bool = True):
        self.camera = camera
        self.regions = list(regions)
        self.masks = RegionMasks(self.regions)
        self.publisher = publisher
        self.class_names = list(class_names)
        self.num_classes = int(num_classes)
        self.draw = bool(draw)

    @property
    def names(self):
        return [r.name for r in self.regions]

    def draw_on(self, overlay: np.ndarray) -> np.ndarray:
        """The overlay with the region outlines (a copy), or the overlay itself when drawing is off."""
        return draw_regions(overlay, self.regions) if self.draw else overlay

    def publish(self, header, labels: np.ndarray) -> None:
        """Count the classes inside each region of ``labels`` and publish the array."""
        coverages = self.masks.coverage(labels, self.num_classes)
        height, width = labels.shape[:2]
        self.publisher.publish(region_coverage_msg(header, self.camera, width, height, coverages, self.class_names))


def region_coverage_msg(header, camera: str, width: int, height: int, coverages,
                        class_names: Sequence[str]) -> RegionCoverageArray:
    msg = RegionCoverageArray()
    msg.header = header
    msg.camera_name = camera
    msg.width, msg.height = int(width), int(height)
    for cov in coverages:
        item = RegionCoverage()
        item.name = cov.region.name
        item.polygon_x = [float(v) for v in cov.region.points[:, 0]]
        item.polygon_y = [float(v) for v in cov.region.points[:, 1]]
        item.region_pixels = int(cov.region_pixels)
        item.class_ids = [int(c) for c in cov.class_ids]
        item.class_names = [class_names[c] if c < len(class_names) else f"class_{c}" for c in item.class_ids]
        item.pixel_count = [int(n) for n in cov.pixel_count]
        item.fraction = [float(f) for f in cov.fraction]
        msg.regions.append(item)
    return msg


def make_region_channel(node, camera: str, regions: Sequence[Region], qos, class_names: Sequence[str],
                        num_classes: int, draw: bool) -> RegionChannel:
    """A :class:`RegionChannel` publishing on ``~/<camera>/region_coverage`` of ``node``."""
    publisher = node.create_publisher(RegionCoverageArray, f"~/{camera}/region_coverage", qos)
    return RegionChannel(camera, regions, publisher, class_names, num_classes, draw)
