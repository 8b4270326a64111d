"""RViz 2 configuration showing, for each camera, its input image and the node's overlay.

The overlay display shows ``~/<camera>/overlay``: the camera image blended with the class
colours and, for a camera with regions of interest (the node's ``regions`` parameter, with
``draw_regions`` true), the region outlines and names; its display name then lists the regions.

Used by ``launch/tv3s.launch.py rviz:=true`` to write a config for the cameras of that run,
and to generate the shipped ``config/tv3s.rviz`` (default camera ``front`` on
``/camera/front/image_raw``, node ``/tv3s_node``)::

    python -m tv3s_ros.ros.rviz_config > config/tv3s.rviz

Plain data + PyYAML: importable without rclpy or RViz.
"""
from __future__ import annotations

import sys
from typing import List, Mapping, Optional, Sequence, Tuple

import yaml

from tv3s_ros.camera_names import resolve_camera_names

__all__ = ["camera_views", "rviz_config_text", "region_names", "DEFAULT_TOPICS", "NODE_NAME"]

NODE_NAME = "tv3s_node"
DEFAULT_TOPICS = ("/camera/front/image_raw",)


def _absolute(topic: str, namespace: str) -> str:
    """A relative topic resolved in the node's namespace (as the node resolves it)."""
    if topic.startswith("/"):
        return topic
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{topic}"


def camera_views(topics: Sequence[str], names: Optional[Sequence[str]] = None, namespace: str = "",
                 node_name: str = NODE_NAME) -> List[Tuple[str, str, str]]:
    """``[(camera name, input topic, overlay topic), ...]`` for the node's cameras.

    The input topic is given as configured (``.../compressed`` included: RViz picks the
    image_transport from the topic name).
    """
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    views = []
    for name, topic in zip(resolve_camera_names(topics, names or None), topics):
        views.append((name, _absolute(topic, namespace), f"{ns}/{node_name}/{name}/overlay"))
    return views


def _image_display(name: str, topic: str) -> dict:
    return {
        "Class": "rviz_default_plugins/Image",
        "Enabled": True,
        "Max Value": 1,
        "Median window": 5,
        "Min Value": 0,
        "Name": name,
        "Normalize Range": True,
        "Topic": {
            # Best effort matches camera drivers (often best effort) and our reliable outputs.
            "Depth": 1,
            "Durability Policy": "Volatile",
            "History Policy": "Keep Last",
            "Reliability Policy": "Best Effort",
            "Value": topic,
        },
        "Value": True,
    }


def region_names(regions_text: str, cameras: Sequence[str]) -> dict:
    """Camera -> names of its regions, from the node's ``regions`` parameter ({} when it is
    empty or invalid: the node reports a bad value itself)."""
    from tv3s_ros.regions import RegionsError, parse_regions

    try:
        return {cam: [r.name for r in regs] for cam, regs in parse_regions(regions_text, cameras).items()}
    except RegionsError:
        return {}


def rviz_config_text(views: Sequence[Tuple[str, str, str]],
                     regions: Optional[Mapping[str, Sequence[str]]] = None) -> str:
    """The ``.rviz`` YAML for :func:`camera_views` output; ``regions`` (camera -> region names,
    see :func:`region_names`) names the regions outlined in each camera's overlay."""
    displays = []
    for name, input_topic, overlay_topic in views:
        displays.append(_image_display(f"{name} input", input_topic))
        title = f"{name} segmentation overlay"
        if regions and regions.get(name):
            title += " + regions " + ", ".join(regions[name])
        displays.append(_image_display(title, overlay_topic))
    config = {
        "Panels": [
            {"Class": "rviz_common/Displays", "Name": "Displays",
             "Property Tree Widget": {"Expanded": None, "Splitter Ratio": 0.5}},
            {"Class": "rviz_common/Views", "Name": "Views"},
        ],
        "Visualization Manager": {
            "Class": "",
            "Displays": displays,
            "Enabled": True,
            # Image displays need no TF; the fixed frame only matters for 3D displays added later.
            "Global Options": {"Background Color": "48; 48; 48", "Fixed Frame": "base_link", "Frame Rate": 30},
            "Name": "root",
            "Tools": [{"Class": "rviz_default_plugins/Interact", "Hide Inactive Objects": True},
                      {"Class": "rviz_default_plugins/MoveCamera"}],
            "Value": True,
            "Views": {"Current": {"Class": "rviz_default_plugins/Orbit", "Distance": 10, "Name": "Current View",
                                  "Target Frame": "<Fixed Frame>", "Value": "Orbit (rviz)"},
                      "Saved": None},
        },
        "Window Geometry": {"Height": 900, "Width": 1400, "Displays": {"collapsed": False}},
    }
    header = ("# RViz 2: input image and TV3S segmentation overlay per camera. The overlay is the camera\n"
              "# image blended with the class colours, plus the outlines and names of the camera's regions\n"
              "# of interest when the node has any (regions, draw_regions); the display name lists them.\n"
              "# Generated by tv3s_ros.ros.rviz_config (launch/tv3s.launch.py writes one per run\n"
              "# for the configured cameras; this file is for the default camera).\n")
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the config for the default camera and node, or for the topics given as arguments;
    ``--params FILE``: cameras and regions from a node parameters file (as the launch file does)::

        python -m tv3s_ros.ros.rviz_config --params config/tv3s_regions.yaml > config/tv3s_regions.rviz
    """
    args = list(argv if argv is not None else sys.argv[1:])
    regions: Mapping[str, Sequence[str]] = {}
    if args[:1] == ["--params"] and len(args) >= 2:
        parameters = file_parameters(args[1])
        args = args[2:] or list(parameters.get("camera_topics", []))
        views = camera_views(args or list(DEFAULT_TOPICS), parameters.get("camera_names") or None)
        regions = region_names(str(parameters.get("regions", "") or ""), [view[0] for view in views])
    else:
        views = camera_views(args or list(DEFAULT_TOPICS))
    sys.stdout.write(rviz_config_text(views, regions))
    return 0


def file_parameters(path: str) -> dict:
    """The node's ``ros__parameters`` in a parameters file (keys ``/**``, ``/**/tv3s_node``, ``tv3s_node``)."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    merged: dict = {}
    for key, section in data.items():
        if str(key).split("/")[-1] in ("**", NODE_NAME) and isinstance(section, dict):
            merged.update(section.get("ros__parameters", {}) or {})
    return merged


if __name__ == "__main__":
    sys.exit(main())
