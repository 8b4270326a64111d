"""Lock-step camera feeding: publish one frame, wait for the node's result for exactly that frame."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ros_helpers.frames import BASE_NS, decode_jpeg, jpeg_bytes, make_frame
from ros_helpers.graph import Probe, stamp_ns
from ros_helpers.messages import compressed_image, raw_image

PERIOD_NS = 50_000_000  # 20 Hz stamps


@dataclass
class Result:
    coverage: object
    labels: Optional[object]
    image: np.ndarray        # the RGB frame as the node decodes it (jpeg round trip included)
    stamp_ns: int
    frame_id: str


class CameraFeed:
    """One camera topic of the node under test, driven frame by frame from the probe.

    Keeps the camera's current size, frame_id and stamp so tests can change one at a time.
    """

    def __init__(self, probe: Probe, node_ns: str, name: str, topic: str, compressed: bool,
                 height: int, width: int, seed: int, want_labels: bool = True):
        from sensor_msgs.msg import CompressedImage, Image

        from tv3s_ros.msg import ClassCoverage

        self.probe, self.name, self.topic, self.compressed = probe, name, topic, compressed
        self.height, self.width, self.seed = height, width, seed
        self.frame_id = f"{name}_optical"
        self.stamp_ns = BASE_NS
        self.index = 0
        base = f"{node_ns}/tv3s_node/{name}"
        self.coverage_topic, self.labels_topic = f"{base}/coverage", f"{base}/labels"
        probe.subscribe(ClassCoverage, self.coverage_topic)
        if want_labels:
            probe.subscribe(Image, self.labels_topic)
        self.want_labels = want_labels
        probe.publisher(CompressedImage if compressed else Image, topic)

    def wait_connected(self, timeout: float = 30.0) -> None:
        """The node subscribes to our topic and we see its outputs (both directions discovered)."""
        self.probe.wait_for_subscribers(self.topic, timeout=timeout)
        self.probe.wait_for_publishers(self.coverage_topic, timeout=timeout)
        if self.want_labels:
            self.probe.wait_for_publishers(self.labels_topic, timeout=timeout)

    def next_image(self) -> np.ndarray:
        return make_frame(self.seed, self.index, self.height, self.width)

    def message(self, image: np.ndarray, stamp: int, frame_id: str):
        if self.compressed:
            return compressed_image(image, stamp, frame_id)
        return raw_image(image, stamp, frame_id)

    def send(self, image: Optional[np.ndarray] = None, stamp: Optional[int] = None,
             frame_id: Optional[str] = None, timeout: float = 30.0) -> Result:
        """Publish the next frame (or the given one) and return the node's outputs for it."""
        if image is None:
            image = self.next_image()
        self.index += 1
        self.stamp_ns = self.stamp_ns + PERIOD_NS if stamp is None else stamp
        self.frame_id = frame_id or self.frame_id
        self.height, self.width = image.shape[:2]
        seen = len(self.probe.received(self.coverage_topic))
        seen_labels = len(self.probe.received(self.labels_topic))
        self.probe.publish(self.topic, self.message(image, self.stamp_ns, self.frame_id))
        key = (self.stamp_ns, self.frame_id)

        def matching(topic: str, start: int = 0):
            for msg in self.probe.received(topic)[start:]:
                if (stamp_ns(msg.header), msg.header.frame_id) == key:
                    return msg
            return None

        coverage = self.probe.wait_for(lambda: matching(self.coverage_topic, seen), timeout,
                                       f"coverage of {self.name} stamp {self.stamp_ns}")
        labels = None
        if self.want_labels:
            labels = self.probe.wait_for(lambda: matching(self.labels_topic, seen_labels), timeout,
                                         f"labels of {self.name} stamp {self.stamp_ns}")
        decoded = decode_jpeg(jpeg_bytes(image)) if self.compressed else image
        return Result(coverage, labels, decoded, self.stamp_ns, self.frame_id)

    def publish_raw(self, msg) -> None:
        """Publish an arbitrary (possibly broken) message on this camera's topic."""
        self.probe.publish(self.topic, msg)


def labels_array(msg) -> np.ndarray:
    """A mono8 labels message as ``[H, W]`` uint8 (honours step)."""
    assert msg.encoding == "mono8", msg.encoding
    rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
    return rows[:, :msg.width]
