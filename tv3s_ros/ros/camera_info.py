"""``~/<camera>/camera_info``: each camera's CameraInfo carried over to its label image.

:class:`CameraInfoRelay` subscribes to the camera's ``sensor_msgs/CameraInfo`` (the image
topic's sibling, or ``camera_info_topics``), keeps the latest, and publishes it for every
published frame, scaled to the label image (:func:`tv3s_ros.camera_model.label_model`) with the
labels' header. The arithmetic lives in :mod:`tv3s_ros.camera_model` (no ROS).
"""
from __future__ import annotations

import threading
from typing import Optional, Set, Tuple

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, RegionOfInterest

from tv3s_ros.camera_model import CameraModel, label_model

__all__ = ["CameraInfoRelay", "camera_model_from_msg", "camera_info_msg"]

# Best effort and volatile match every CameraInfo publisher (reliable or not, latched or not).
_INPUT_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)


def camera_model_from_msg(msg: CameraInfo) -> CameraModel:
    """The fields of ``msg`` (ValueError when K, R or P have the wrong length)."""
    roi = msg.roi
    return CameraModel(width=int(msg.width), height=int(msg.height), k=tuple(msg.k), p=tuple(msg.p),
                       d=tuple(msg.d), r=tuple(msg.r), distortion_model=str(msg.distortion_model),
                       binning_x=int(msg.binning_x), binning_y=int(msg.binning_y),
                       roi=(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height),
                            bool(roi.do_rectify)))


def camera_info_msg(header, model: CameraModel) -> CameraInfo:
    """A CameraInfo holding ``model`` under ``header``."""
    msg = CameraInfo(header=header, width=model.width, height=model.height,
                     distortion_model=model.distortion_model, d=list(model.d), k=list(model.k),
                     r=list(model.r), p=list(model.p), binning_x=model.binning_x, binning_y=model.binning_y)
    x, y, w, h, rectify = model.roi
    msg.roi = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=rectify)
    return msg


class CameraInfoRelay:
    """One camera's CameraInfo in, the label image's out.

    Args:
        node: the rclpy node (subscription and publisher are created on it).
        camera: the camera name (output ``~/<camera>/camera_info``).
        topic: the CameraInfo topic to follow.
        qos: QoS of the publisher (the image outputs').

    Thread safety: :meth:`on_message` runs on the executor, :meth:`publish` on the worker.
    """

    def __init__(self, node, camera: str, topic: str, qos):
        self.camera, self.topic = camera, topic
        self.logger = node.get_logger()
        self.publisher = node.create_publisher(CameraInfo, f"~/{camera}/camera_info", qos)
        self.subscription = node.create_subscription(CameraInfo, topic, self.on_message, _INPUT_QOS)
        self._lock = threading.Lock()
        self._latest: Optional[CameraModel] = None
        self.received = 0             # CameraInfo messages taken
        self.rejected = 0             # CameraInfo messages that could not be used
        self.published = 0
        self.frames_without_info = 0  # frames with a camera_info subscriber but no CameraInfo yet
        self._logged: Set[str] = set()

    def _once(self, key: str, text: str, warning: bool = True) -> None:
        if key in self._logged:
            return
        self._logged.add(key)
        if warning:
            self.logger.warning(text)
        else:
            self.logger.info(text)

    # ------------------------------------------------------------------ executor
    def on_message(self, msg: CameraInfo) -> None:
        try:
            model = camera_model_from_msg(msg)
        except ValueError as err:
            self.rejected += 1
            self._once("bad", f"camera {self.camera}: ignoring CameraInfo from {self.topic}: {err}")
            return
        if not model.calibrated:
            self._once("uncalibrated", f"camera {self.camera}: CameraInfo from {self.topic} has no focal length "
                       f"(K is zero: uncalibrated); ~/{self.camera}/camera_info will say so too")
        with self._lock:
            first = self._latest is None
            self._latest = model
            self.received += 1
        if first:
            self._once("first", f"camera {self.camera}: CameraInfo received from {self.topic} "
                       f"({model.width}x{model.height}, {model.distortion_model or 'no distortion model'})",
                       warning=False)

    # ------------------------------------------------------------------ worker thread
    @property
    def latest(self) -> Optional[CameraModel]:
        with self._lock:
            return self._latest

    def publish(self, header, image_size: Tuple[int, int], label_size: Tuple[int, int]) -> bool:
        """Publish the latest CameraInfo for a label image of ``label_size`` (h, w) made from a
        camera image of ``image_size`` (h, w), with ``header``; only while someone subscribes.
        Returns whether it published."""
        if self.publisher.get_subscription_count() == 0:
            return False
        info = self.latest
        if info is None:
            self.frames_without_info += 1
            self._once("missing", f"camera {self.camera}: no CameraInfo received on {self.topic} yet; "
                       f"~/{self.camera}/camera_info follows once one arrives (counted, not logged again)")
            return False
        model, note = label_model(info, image_size, label_size)
        if note:
            self._once("size", f"camera {self.camera}: {note}")
        self.publisher.publish(camera_info_msg(header, model))
        self.published += 1
        return True
