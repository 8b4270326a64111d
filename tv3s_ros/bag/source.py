"""Input side of the bag tool: find bags, list image topics, read camera frames in order.

Reads rosbag2 directories (mcap or sqlite3), bare ``.mcap``/``.db3`` files and ROS 1
``.bag`` files through ``rosbags.highlevel.AnyReader``. Messages come out in recording
(log time) order across all chosen topics, which is the order the node would have seen
them live. Decoding failures are returned as ``CorruptMessage`` values instead of raised,
so one bad message never ends a run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from rosbags.highlevel import AnyReader

from tv3s_ros.bag.typestore import IMAGE, IMAGE_TYPES, build_typestore, normalize_msgtype

BAG_FILE_SUFFIXES = (".bag", ".mcap", ".db3")


class BagInputError(Exception):
    """The input path, a topic choice or a time window cannot be used (user error)."""


def is_rosbag2_dir(path: Path) -> bool:
    """A rosbag2 recording directory is recognized by its ``metadata.yaml``."""
    return path.is_dir() and (path / "metadata.yaml").is_file()


def find_bags(path: Path) -> list[Path]:
    """Bags to process for INPUT: the bag itself, or every bag inside a directory of bags.

    A directory of bags holds rosbag2 directories and/or ``.bag``/``.mcap``/``.db3`` files;
    they are returned sorted by name, which for recorder-made names is recording order.
    """
    path = Path(path)
    if not path.exists():
        raise BagInputError(f"input {path} does not exist")
    if path.is_file():
        if path.suffix not in BAG_FILE_SUFFIXES:
            raise BagInputError(
                f"input {path} is not a bag (expected a rosbag2 directory, a directory of "
                f"bags or a file ending in {', '.join(BAG_FILE_SUFFIXES)})")
        return [path]
    if is_rosbag2_dir(path):
        return [path]
    bags = sorted(
        child for child in path.iterdir()
        if is_rosbag2_dir(child) or (child.is_file() and child.suffix in BAG_FILE_SUFFIXES))
    if not bags:
        raise BagInputError(
            f"no bags found in {path}: expected a rosbag2 directory (with metadata.yaml), or a "
            f"directory holding rosbag2 directories or {', '.join(BAG_FILE_SUFFIXES)} files")
    return bags


def bag_stem(path: Path) -> str:
    """Name for the output of one bag of a directory (``drive_01.bag`` -> ``drive_01``)."""
    return path.stem if path.is_file() else path.name


@dataclass
class RawMessage:
    """One message of a chosen topic, still serialized."""

    topic: str
    msgtype: str          # ROS 2 style name, e.g. sensor_msgs/msg/Image
    log_ns: int           # time the recorder received it (bag order)
    raw: bytes


@dataclass
class DecodedImage:
    """A camera image ready for the engine, with the header fields the outputs copy."""

    stamp_sec: int
    stamp_nanosec: int
    frame_id: str
    image: object         # H x W x 3 uint8 RGB: numpy, or a CUDA tensor from GPU jpeg decoding

    @property
    def stamp_ns(self) -> int:
        return self.stamp_sec * 1_000_000_000 + self.stamp_nanosec


@dataclass
class CorruptMessage:
    """Why a message could not be used. ``kind`` groups similar failures for the report."""

    kind: str
    detail: str


_NUMBER = re.compile(r"\d+")


def failure_kind(stage: str, error: BaseException) -> str:
    """Group failures by stage, error type and category: a decode error's ``kind`` when it
    carries one, else its message with numbers masked ("data has 100 bytes, expected 12288"
    and "... 7 bytes, expected 300" are one kind). The first full message is kept as example."""
    kind = getattr(error, "kind", None)
    if kind:
        return f"{stage}: {type(error).__name__}: {kind}"
    text = _NUMBER.sub("N", str(error).splitlines()[0] if str(error) else "")
    return f"{stage}: {type(error).__name__}: {text}"[:160]


class BagSource:
    """An open input bag. Use as a context manager."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # The default type store is used only when the bag carries no definitions
        # (older sqlite3 bags); bags with definitions are decoded with their own.
        self._reader = AnyReader([self.path], default_typestore=build_typestore())
        self.is_ros1 = False

    def __enter__(self) -> "BagSource":
        self._reader.open()
        self.is_ros1 = not self._reader.is2
        return self

    def __exit__(self, *exc) -> None:
        self._reader.close()

    # -- topics ---------------------------------------------------------------------------
    @property
    def start_ns(self) -> int:
        return self._reader.start_time

    @property
    def end_ns(self) -> int:
        return self._reader.end_time

    def topic_types(self) -> dict[str, str]:
        """Every topic of the bag with its (normalized) message type."""
        return {
            topic: normalize_msgtype(info.msgtype or "(mixed types)")
            for topic, info in self._reader.topics.items()
        }

    def image_topics(self) -> dict[str, str]:
        """Topics carrying sensor_msgs/Image or sensor_msgs/CompressedImage."""
        return {t: m for t, m in self.topic_types().items() if m in IMAGE_TYPES}

    def message_counts(self) -> dict[str, int]:
        return {topic: info.msgcount for topic, info in self._reader.topics.items()}

    def describe_image_topics(self) -> str:
        """Human-readable list of the image topics, for error messages."""
        counts = self.message_counts()
        images = self.image_topics()
        if not images:
            others = ", ".join(sorted(self.topic_types())) or "none"
            return f"  (no sensor_msgs/Image or CompressedImage topics; topics present: {others})"
        return "\n".join(
            f"  {topic}  [{msgtype.rsplit('/', 1)[-1]}, {counts.get(topic, 0)} messages]"
            for topic, msgtype in sorted(images.items()))

    def select_topics(self, requested: Optional[Sequence[str]]) -> list[str]:
        """The camera topics to process: ``requested`` (validated) or all image topics."""
        images = self.image_topics()
        if not requested:
            if not images:
                raise BagInputError(
                    f"{self.path} has no image topics to process:\n{self.describe_image_topics()}")
            return sorted(images)
        topics = [t if t.startswith("/") else "/" + t for t in requested]
        types = self.topic_types()
        missing = [t for t in topics if t not in types]
        wrong = [t for t in topics if t in types and t not in images]
        problems = []
        if missing:
            problems.append(f"topic(s) not in the bag: {', '.join(missing)}")
        if wrong:
            problems.append("topic(s) not images: " + ", ".join(f"{t} ({types[t]})" for t in wrong))
        if problems:
            raise BagInputError(
                f"{self.path}: {'; '.join(problems)}.\nImage topics in this bag:\n"
                f"{self.describe_image_topics()}")
        return list(dict.fromkeys(topics))

    # -- messages -------------------------------------------------------------------------
    def messages(self, topics: Sequence[str], start_ns: Optional[int] = None,
                 end_ns: Optional[int] = None) -> Iterator[RawMessage]:
        """Messages of ``topics`` in recording order, within ``[start_ns, end_ns)``."""
        wanted = set(topics)
        connections = [c for c in self._reader.connections if c.topic in wanted]
        for connection, log_ns, raw in self._reader.messages(
                connections=connections, start=start_ns, stop=end_ns):
            yield RawMessage(connection.topic, normalize_msgtype(connection.msgtype), log_ns, raw)

    def deserialize(self, message: RawMessage):
        """The message object (rosbags dataclass), or ``CorruptMessage``."""
        try:
            return self._reader.deserialize(message.raw, message.msgtype)
        except Exception as error:  # noqa: BLE001 - truncated or garbled bytes: any serde failure
            return CorruptMessage(failure_kind("deserialize", error), str(error))


def decode_image(msg, msgtype: str, decoder=None, allow_16bit: bool = False) -> DecodedImage | CorruptMessage:
    """Decode an Image/CompressedImage message object to an RGB frame.

    ``decoder`` is the engine's ``ImageDecoder`` (jpeg on the GPU where it can, the shared
    ``image_codec`` otherwise), so frames are decoded exactly as in the node; without one,
    ``image_codec`` is used directly. 16-bit and float data is refused (likely depth) unless
    ``allow_16bit``.
    """
    try:
        if decoder is not None:
            image = decoder.decode_msg(msg, allow_16bit=allow_16bit)
        elif msgtype == IMAGE:
            from tv3s_ros.image_codec import decode_image as codec_decode_image

            image = codec_decode_image(msg.encoding, msg.height, msg.width, msg.step,
                                       msg.data, msg.is_bigendian, allow_16bit=allow_16bit)
        else:
            from tv3s_ros.image_codec import decode_compressed

            image = decode_compressed(msg.format, msg.data, allow_16bit=allow_16bit)
    except Exception as error:  # noqa: BLE001 - ImageDecodeError and anything a codec raises on bad data
        return CorruptMessage(failure_kind("decode", error), str(error))
    stamp = msg.header.stamp
    if isinstance(image, np.ndarray):
        image = np.ascontiguousarray(image)  # codec results may be strided views of the message
    return DecodedImage(int(stamp.sec), int(stamp.nanosec), str(msg.header.frame_id), image)
