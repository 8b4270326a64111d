"""Output side of the bag tool: a rosbag2 holding the node's topics with the source headers.

Topic names are the node's with the node name ``tv3s``: ``/tv3s/<camera>/labels``,
``color``, ``overlay``, ``confidence`` and ``coverage``. Encodings match the node: labels
mono8 (mono16 past 255 classes), color and overlay rgb8, confidence mono8. Each message is
written at the log time of the input image, so input and output line up when both bags are
played or read together.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from tv3s_ros.bag.typestore import CLASS_COVERAGE, COMPRESSED_IMAGE, IMAGE, build_typestore

NODE_NAME = "tv3s"
IMAGE_OUTPUTS = ("labels", "color", "overlay", "confidence")
# rosbag2 metadata version 8 is what ROS 2 Jazzy writes and reads; version 9 (Kilted and
# later) changed the QoS serialization and is not readable by Jazzy's `ros2 bag`.
BAG_VERSION = 8
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


class OutputExistsError(Exception):
    """The output path exists and may not (or cannot safely) be replaced."""


def output_topic(camera: str, kind: str) -> str:
    """``/tv3s/<camera>/<kind>``: the node's private topic with the node name ``tv3s``."""
    return f"/{NODE_NAME}/{camera}/{kind}"


def check_output_path(path: Path, overwrite: bool) -> None:
    """Raise ``OutputExistsError`` unless a bag may be written at ``path`` (nothing deleted)."""
    if not path.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"output {path} exists; pass --overwrite to replace it")
    looks_like_bag = path.is_dir() and (
        (path / "metadata.yaml").is_file() or not any(path.iterdir()))
    if not looks_like_bag:
        # Safety: --overwrite replaces bags, never an arbitrary folder or file.
        raise OutputExistsError(
            f"output {path} exists and is not a rosbag2 directory (no metadata.yaml); "
            "not deleting it even with --overwrite")


def prepare_output_path(path: Path, overwrite: bool) -> None:
    """Make room for a new bag at ``path`` (see ``check_output_path``)."""
    check_output_path(path, overwrite)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def _numpy(array) -> np.ndarray:
    """Engine results may be torch tensors (possibly on the GPU) or numpy arrays."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array)


class OutputBag:
    """A rosbag2 being written. Use as a context manager; connections are added on first use."""

    def __init__(self, path: Path, storage: str = "mcap", custom_data: Optional[dict] = None):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        self.typestore = build_typestore()
        self._types = self.typestore.types
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(str(key), str(value))
        self._connections: dict[tuple[str, str], object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "OutputBag":
        self._writer.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Even after an error (or Ctrl-C) close properly: what was written stays readable.
        self._writer.close()

    def _connection(self, topic: str, msgtype: str, msgdef: Optional[str] = None,
                    digest: Optional[str] = None):
        key = (topic, msgtype)
        if key not in self._connections:
            if msgdef and digest:
                conn = self._writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=digest)
            else:
                conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[key] = conn
        return self._connections[key]

    def _write(self, topic: str, msgtype: str, log_ns: int, message) -> None:
        data = self.typestore.serialize_cdr(message, msgtype)
        self._writer.write(self._connection(topic, msgtype), log_ns, data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    # -- messages -------------------------------------------------------------------------
    def header(self, stamp_sec: int, stamp_nanosec: int, frame_id: str):
        """A Jazzy std_msgs/Header (the source image's, copied field by field)."""
        time_type = self._types["builtin_interfaces/msg/Time"]
        header_type = self._types["std_msgs/msg/Header"]
        return header_type(stamp=time_type(sec=int(stamp_sec), nanosec=int(stamp_nanosec)),
                           frame_id=frame_id)

    def image_message(self, header, array: np.ndarray, encoding: str):
        """sensor_msgs/Image from a HxW or HxWx3 array (little-endian, unpadded rows)."""
        array = _numpy(array)
        height, width = array.shape[:2]
        data = array.reshape(-1).view(np.uint8)
        return self._types[IMAGE](header=header, height=height, width=width, encoding=encoding,
                                  is_bigendian=0, step=int(data.size // max(height, 1)), data=data)

    def write_frame(self, camera: str, log_ns: int, header, result, class_names: Sequence[str],
                    outputs: Sequence[str]) -> None:
        """Write the engine's result for one input frame under ``/tv3s/<camera>/``."""
        if "labels" in outputs and result.labels is not None:
            labels = _numpy(result.labels)
            # As the node: the engine gives uint8 while class ids fit a byte (mono8), else
            # uint16 (mono16, written little-endian).
            if labels.dtype == np.uint8:
                encoding = "mono8"
            else:
                labels, encoding = labels.astype("<u2"), "mono16"
            self._write(output_topic(camera, "labels"), IMAGE, log_ns,
                        self.image_message(header, labels, encoding))
        for kind, encoding in (("color", "rgb8"), ("overlay", "rgb8"), ("confidence", "mono8")):
            value = getattr(result, kind, None)
            if kind in outputs and value is not None:
                self._write(output_topic(camera, kind), IMAGE, log_ns,
                            self.image_message(header, _numpy(value).astype(np.uint8), encoding))
        self._write(output_topic(camera, "coverage"), CLASS_COVERAGE, log_ns,
                    self.coverage_message(camera, header, result, class_names))

    def coverage_message(self, camera: str, header, result, class_names: Sequence[str]):
        """tv3s_ros/msg/ClassCoverage for one result (skipped_frames is 0 offline: none dropped)."""
        class_ids = _numpy(result.class_ids).astype(np.uint16).reshape(-1)
        names = [class_names[i] if i < len(class_names) else f"class_{i}" for i in class_ids.tolist()]
        return self._types[CLASS_COVERAGE](
            header=header,
            camera_name=camera,
            class_ids=class_ids,
            class_names=names,
            fraction=_numpy(result.fraction).astype(np.float32).reshape(-1),
            pixel_count=_numpy(result.pixel_count).astype(np.uint32).reshape(-1),
            mean_confidence=_numpy(result.mean_confidence).astype(np.float32).reshape(-1),
            width=int(result.width),
            height=int(result.height),
            num_classes=int(result.num_classes),
            frames_since_reset=int(result.frames_since_reset),
            reset_reason=str(result.reset_reason or ""),
            skipped_frames=0,
            latency_s=float(result.latency_s or 0.0),
            model_time_s=float(result.model_time_s or 0.0),
        )

    def copy_raw(self, topic: str, msgtype: str, log_ns: int, raw: bytes) -> None:
        """Copy an input message as is (rosbag2 input: already ROS 2 CDR)."""
        self._writer.write(self._connection(topic, msgtype), log_ns, raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def copy_ros1_image(self, topic: str, msgtype: str, log_ns: int, msg) -> None:
        """Copy a ROS 1 image as its ROS 2 counterpart (the ROS 1 header's seq is dropped)."""
        stamp = msg.header.stamp
        header = self.header(stamp.sec, stamp.nanosec, msg.header.frame_id)
        if msgtype == COMPRESSED_IMAGE:
            out = self._types[COMPRESSED_IMAGE](header=header, format=msg.format,
                                                data=np.asarray(msg.data, dtype=np.uint8))
        else:
            out = self._types[IMAGE](header=header, height=msg.height, width=msg.width,
                                     encoding=msg.encoding, is_bigendian=msg.is_bigendian,
                                     step=msg.step, data=np.asarray(msg.data, dtype=np.uint8))
        self._write(topic, msgtype, log_ns, out)
