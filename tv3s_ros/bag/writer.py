"""Output side of the bag tool: a rosbag2 holding the node's topics with the source headers.

Topic names are the node's with the node name ``tv3s``: ``/tv3s/<camera>/labels``,
``color``, ``overlay``, ``confidence`` and ``coverage``. Encodings match the node: labels
mono8 (mono16 past 255 classes), color and overlay rgb8, confidence mono8. Each message is
written at the log time of the input image, so input and output line up when both bags are
played or read together.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from tv3s_ros.bag.typestore import CLASS_COVERAGE, COMPRESSED_IMAGE, IMAGE, build_typestore
from tv3s_ros.outputs import IMAGE_OUTPUTS, image_encoding

NODE_NAME = "tv3s"
# rosbag2 metadata version 8 is what ROS 2 Jazzy writes and reads; version 9 (Kilted and
# later) changed the QoS serialization and is not readable by Jazzy's `ros2 bag`.
BAG_VERSION = 8
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


class OutputExistsError(Exception):
    """The output path exists and may not (or cannot safely) be replaced."""


class OutputWriteError(Exception):
    """Writing the output bag failed (disk full, quota, permissions): ends that bag only."""


# A bag is written inside a staging folder next to its final place and moved there only
# when complete, so an interrupted or failed run never leaves a half bag under the real
# name and --overwrite never loses the old output before the new one exists.
STAGING_SUFFIX = ".tv3s-incomplete"
STAGING_MARKER = "TV3S_INCOMPLETE.txt"
_REPLACED_SUFFIX = ".tv3s-replaced"


def staging_dir(target: Path) -> Path:
    """``out/a`` -> ``out/a.tv3s-incomplete`` (the bag is written to ``.../a.tv3s-incomplete/a``)."""
    return target.with_name(target.name + STAGING_SUFFIX)


def output_topic(camera: str, kind: str) -> str:
    """``/tv3s/<camera>/<kind>``: the node's private topic with the node name ``tv3s``."""
    return f"/{NODE_NAME}/{camera}/{kind}"


def _is_bag_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "metadata.yaml").is_file() or not any(path.iterdir()))


def check_output_path(path: Path, overwrite: bool) -> None:
    """Raise ``OutputExistsError`` unless a bag may be written at ``path`` (nothing deleted)."""
    staging = staging_dir(path)
    if staging.exists() and not is_stale_staging(staging):
        raise OutputExistsError(
            f"{staging} exists and is not a tv3s-bag leftover (no {STAGING_MARKER}); "
            "move it away first")
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise OutputExistsError(f"output {path} exists; pass --overwrite to replace it")
    if path.is_symlink() or not _is_bag_dir(path):
        # Safety: --overwrite replaces bags, never an arbitrary folder, file or link.
        raise OutputExistsError(
            f"output {path} exists and is not a rosbag2 directory (no metadata.yaml); "
            "not deleting it even with --overwrite")


def is_stale_staging(staging: Path) -> bool:
    """A staging folder left by an interrupted or killed run (ours: it holds the marker)."""
    return staging.is_dir() and not staging.is_symlink() and (staging / STAGING_MARKER).is_file()


def begin_output(target: Path, overwrite: bool) -> Path:
    """Create the staging folder for ``target``; returns where the bag itself is written.

    A leftover of an earlier interrupted run at the same place is removed first: it was
    never a finished output, and it must not block the rerun.
    """
    check_output_path(target, overwrite)
    staging = staging_dir(target)
    if is_stale_staging(staging):
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / STAGING_MARKER).write_text(
        f"Incomplete tv3s-bag output for {target.name}: the run was interrupted or failed.\n"
        f"The bag in {target.name}/ is readable up to where it stopped (its metadata.yaml\n"
        "says tv3s.status: incomplete). A rerun of tv3s-bag removes this folder.\n",
        encoding="utf-8")
    return staging / target.name


def finish_output(target: Path, overwrite: bool) -> None:
    """Move the complete bag from its staging folder to ``target`` (replacing an old one
    only now, with --overwrite)."""
    staging = staging_dir(target)
    check_output_path(target, overwrite)  # the old output may have changed during the run
    replaced = None
    if target.exists():
        replaced = target.with_name(target.name + _REPLACED_SUFFIX)
        if replaced.exists():
            shutil.rmtree(replaced)
        target.rename(replaced)
    try:
        (staging / target.name).rename(target)
    except BaseException:
        if replaced is not None:
            replaced.rename(target)  # put the old output back
        raise
    shutil.rmtree(staging)
    if replaced is not None:
        shutil.rmtree(replaced)


def discard_output(target: Path) -> None:
    """Remove the staging folder of ``target`` (an unreadable partial after a write error)."""
    staging = staging_dir(target)
    if is_stale_staging(staging):
        shutil.rmtree(staging, ignore_errors=True)


def _os_error(error: Exception) -> str:
    if not isinstance(error, OSError):  # sqlite3: "database or disk is full"
        return f"{type(error).__name__}: {error}"
    name = errno.errorcode.get(error.errno or 0, "")
    return f"{error.strerror or error}" + (f" ({name})" if name else "")


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

    def set_status(self, status: str) -> None:
        """``tv3s.status`` in metadata.yaml: ``complete`` or why and where the bag stops."""
        self._writer.set_custom_data("tv3s.status", status)

    def __exit__(self, exc_type, exc, tb) -> None:
        # Even after an error (or Ctrl-C) close properly: what was written stays readable.
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - closing after a failure: the first error is the one to report
            # The disk is full, say: the original error is the one to report. Release the
            # file handles without the footer (the caller discards this partial bag).
            with contextlib.suppress(Exception):
                self._writer.abort()

    def close(self) -> None:
        try:
            self._writer.close()
        except (OSError, sqlite3.Error) as error:
            with contextlib.suppress(Exception):
                self._writer.abort()
            raise OutputWriteError(f"cannot finish the output bag: {_os_error(error)}") from error

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
        self._write_raw(topic, msgtype, log_ns, data)

    def _write_raw(self, topic: str, msgtype: str, log_ns: int, data) -> None:
        try:
            self._writer.write(self._connection(topic, msgtype), log_ns, data)
        except (OSError, sqlite3.Error) as error:  # ENOSPC, EDQUOT, EFBIG, EIO: the output is lost, not the run
            raise OutputWriteError(f"cannot write the output bag: {_os_error(error)}") from error
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
        for name in IMAGE_OUTPUTS:
            value = getattr(result, name, None)
            if name not in outputs or value is None:
                continue
            value = _numpy(value)
            encoding = image_encoding(name, value)
            # Written little-endian as the node does (is_bigendian 0): mono16 labels as "<u2".
            value = value.astype("<u2") if encoding == "mono16" else value.astype(np.uint8)
            self._write(output_topic(camera, name), IMAGE, log_ns, self.image_message(header, value, encoding))
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
        self._write_raw(topic, msgtype, log_ns, raw)

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
