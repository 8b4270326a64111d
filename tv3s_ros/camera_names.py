"""Camera names and message types derived from camera topics (no rclpy needed).

Each camera gets its own recurrent state and its own output namespace
``~/<camera name>/...``. The name is ``camera_names[i]`` when given, else derived from the
topic: drop a trailing ``compressed`` and then a trailing image suffix (``image_raw``,
``image_rect``, ``image_rect_color``, ``image_color``, ``image``), and take the last
remaining segment: ``/sensing/camera/front/image_raw`` -> ``front``,
``/rear/image_rect_color/compressed`` -> ``rear``.

A camera's ``sensor_msgs/CameraInfo`` topic is found as image_transport finds it: drop a
trailing ``compressed`` and replace the last remaining segment with ``camera_info``
(``/cam/front/image_raw`` -> ``/cam/front/camera_info``, ``/cam/front/image_raw/compressed`` ->
``/cam/front/camera_info``); see :func:`camera_info_topic`.
"""
from __future__ import annotations

import re
from typing import List, Optional, Sequence

__all__ = [
    "IMAGE_SUFFIXES",
    "COMPRESSED_SUFFIX",
    "camera_name_from_topic",
    "camera_info_topic",
    "is_compressed_topic",
    "resolve_camera_names",
]

IMAGE_SUFFIXES = ("image_raw", "image_rect", "image_rect_color", "image_color", "image")
COMPRESSED_SUFFIX = "compressed"

# A camera name becomes one token of a ROS topic name (~/<camera>/labels): letters, digits
# and underscores, not starting with a digit.
_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _segments(topic: str) -> List[str]:
    return [s for s in str(topic).strip().split("/") if s and s != "~"]


def is_compressed_topic(topic: str) -> bool:
    """True when the topic carries ``sensor_msgs/CompressedImage`` (last segment ``compressed``)."""
    segments = _segments(topic)
    return bool(segments) and segments[-1] == COMPRESSED_SUFFIX


def camera_name_from_topic(topic: str) -> str:
    """The camera name derived from ``topic`` (see the module docstring).

    Raises:
        ValueError: nothing is left after dropping the suffixes (``/image_raw``), or the
            remaining segment is not a valid ROS name token.
    """
    segments = _segments(topic)
    if segments and segments[-1] == COMPRESSED_SUFFIX:
        segments.pop()
    if segments and segments[-1] in IMAGE_SUFFIXES:
        segments.pop()
    if not segments:
        raise ValueError(f"cannot derive a camera name from topic {topic!r}: "
                         "give it a namespace (/front/image_raw) or set camera_names")
    name = segments[-1]
    if not _TOKEN.match(name):
        raise ValueError(f"camera name {name!r} derived from topic {topic!r} is not a valid ROS name "
                         "token (letters, digits, '_', not starting with a digit); set camera_names")
    return name


def camera_info_topic(image_topic: str) -> str:
    """The CameraInfo topic beside ``image_topic`` (image_transport's sibling rule).

    Relative and private topics stay so (``image_raw`` -> ``camera_info``, ``~/cam/image`` ->
    ``~/cam/camera_info``).

    Raises:
        ValueError: nothing is left of the topic once ``compressed`` is dropped.
    """
    text = str(image_topic).strip()
    head, _, last = text.rstrip("/").rpartition("/")
    if last == COMPRESSED_SUFFIX:
        head, _, last = head.rpartition("/")
    if not last or last == "~":
        raise ValueError(f"cannot derive a camera_info topic from {image_topic!r}")
    return f"{head}/camera_info" if head or text.startswith("/") else "camera_info"


def resolve_camera_names(topics: Sequence[str], names: Optional[Sequence[str]] = None) -> List[str]:
    """One unique camera name per topic: ``names`` when given (non-empty), else derived.

    Raises:
        ValueError: no topics, a repeated topic, ``names`` of another length, an invalid name,
            or two cameras with the same name (a start-up error: their states and outputs
            would collide).
    """
    topics = [str(t).strip() for t in topics]
    if not topics or any(not t for t in topics):
        raise ValueError(f"camera_topics must list at least one non-empty topic, got {list(topics)!r}")
    repeated = sorted({t for t in topics if topics.count(t) > 1})
    if repeated:
        raise ValueError(f"camera_topics lists the same topic more than once: {repeated}")
    if names:
        names = [str(n).strip() for n in names]
        if len(names) != len(topics):
            raise ValueError(f"camera_names has {len(names)} entries but camera_topics has {len(topics)}; "
                             "give one name per topic or leave camera_names unset")
        for name in names:
            if not _TOKEN.match(name):
                raise ValueError(f"camera name {name!r} is not a valid ROS name token "
                                 "(letters, digits, '_', not starting with a digit)")
    else:
        names = [camera_name_from_topic(t) for t in topics]
    seen = {}
    for topic, name in zip(topics, names):
        if name in seen:
            raise ValueError(f"topics {seen[name]!r} and {topic!r} both give camera name {name!r}; "
                             "set camera_names to tell them apart")
        seen[name] = topic
    return list(names)
