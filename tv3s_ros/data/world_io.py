"""Writers for the synthetic world: the VSPW folder layout and rosbag2 (camera + labels).

``write_vspw`` needs only numpy and OpenCV; ``write_bag`` imports ``rosbags`` (never rclpy).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import cv2
import numpy as np

from tv3s_ros.data.world import CLASSES, EVENTS, IGNORE_INDEX, WORLD_VERSION, World, video_name

IMAGE_TOPIC = "/cam/front/image_raw"
JPEG_TOPIC = "/cam/front/image_raw/compressed"
LABEL_TOPIC = "/cam/front/labels"
FRAME_ID = "front"
START_NS = 1_700_000_000 * 10**9


def _meta(world: World, frames: int, flags: Sequence[dict], counts: np.ndarray) -> dict:
    present = [int(i) for i in np.nonzero(counts[:len(CLASSES)])[0]]
    total = max(int(counts.sum()), 1)
    return {
        "generator": "tv3s_ros.data.world", "version": WORLD_VERSION, "seed": world.seed,
        "size": [world.height, world.width], "frames": frames, "fps": world.fps,
        "label_space": "cityscapes train ids", "ignore_index": IGNORE_INDEX,
        "classes_present": {str(i): CLASSES[i] for i in present},
        "class_fraction": {CLASSES[i]: round(int(counts[i]) / total, 6) for i in present},
        # Subsets for evaluation: frame indices per event kind, and all hard ones.
        "hard_frames": [f["index"] for f in flags if f["hard"]],
        "subsets": {k: [f["index"] for f in flags if f["event"] == k] for k in EVENTS},
        "frame_flags": list(flags),
    }


def write_video(folder: Path, world: World, frames: int, image_format: str = "jpg",
                jpeg_quality: int = 95, progress: Optional[Callable[[int], object]] = None) -> dict:
    """``folder/origin/*.jpg|png``, ``folder/mask/*.png`` and ``folder/meta.json``; returns the meta."""
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be jpg or png, got {image_format!r}")
    origin, mask = folder / "origin", folder / "mask"
    origin.mkdir(parents=True, exist_ok=True)
    mask.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if image_format == "jpg" \
        else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    flags, counts = [], np.zeros(256, np.int64)
    for image, label, flag in world.frames(frames):
        name = f"{flag['index']:05d}"
        if not cv2.imwrite(str(origin / f"{name}.{image_format}"), image[:, :, ::-1], params):
            raise OSError(f"cannot write {origin / name}.{image_format}")
        if not cv2.imwrite(str(mask / f"{name}.png"), label, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"cannot write {mask / name}.png")
        counts += np.bincount(label.reshape(-1), minlength=256)
        flags.append(flag)
        if progress is not None:
            progress(1)
    meta = _meta(world, frames, flags, counts)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def write_vspw(root: Path, seeds: Iterable[int], frames: int, size: Tuple[int, int] = (256, 512),
               val_seeds: Iterable[int] = (), fps: float = 15.0, image_format: str = "jpg",
               jpeg_quality: int = 95, events: bool = True,
               progress: Optional[Callable[[int], object]] = None, add: bool = False) -> dict:
    """Write one VSPW-style video per seed under ``root`` plus ``root/world.json``; returns it.

    ``add``: grow the world already in ``root`` instead of replacing its world.json: the new
    videos join its splits. Its size, frame count, fps, image format, events and generator
    version must be the ones given, and a seed may not move to another split (that would put
    a validation video into training). ``ValueError`` (and nothing written) otherwise.
    """
    root = Path(root)
    splits: Dict[str, list] = {"train": list(seeds), "val": list(val_seeds)}
    info = {
        "layout": "synthetic", "folder_layout": "vspw", "generator": "tv3s_ros.data.world",
        "version": WORLD_VERSION, "label_space": "cityscapes train ids", "classes": list(CLASSES),
        "ignore_index": IGNORE_INDEX, "size": list(size), "frames_per_video": frames, "fps": fps,
        "image_format": image_format, "events": events,
        "splits": {k: [video_name(s) for s in v] for k, v in splits.items()},
        "seeds": splits, "hard_frames_per_video": {},
    }
    if add:
        info = _grown(root, info)
    root.mkdir(parents=True, exist_ok=True)
    for seed in splits["train"] + splits["val"]:
        meta = write_video(root / video_name(seed), World(seed, size, fps, events), frames,
                           image_format, jpeg_quality, progress)
        info["hard_frames_per_video"][video_name(seed)] = len(meta["hard_frames"])
    (root / "world.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


_SAME_WHEN_ADDING = ("version", "size", "frames_per_video", "fps", "image_format", "events")


def _grown(root: Path, new: dict) -> dict:
    """The world.json of ``root`` with ``new``'s videos added to its splits (see ``write_vspw``)."""
    path = root / "world.json"
    if not path.is_file():
        raise ValueError(f"--add: no world to add to ({path} does not exist)")
    old = json.loads(path.read_text(encoding="utf-8"))
    if old.get("layout") != "synthetic" or not isinstance(old.get("seeds"), dict):
        raise ValueError(f"--add: {path} is not a synthetic world's description")
    different = [f"{k} {old.get(k)!r} (asked: {new[k]!r})" for k in _SAME_WHEN_ADDING if old.get(k) != new[k]]
    if different:
        raise ValueError(f"--add: the world in {root} differs: " + "; ".join(different))
    grown = dict(old)
    grown["seeds"] = {k: list(v) for k, v in old["seeds"].items()}
    for split, seeds in new["seeds"].items():
        others = {s for k, v in grown["seeds"].items() if k != split for s in v}
        moved = sorted(set(seeds) & others)
        if moved:
            raise ValueError(f"--add: seed(s) {', '.join(map(str, moved[:5]))} are already in another split "
                             f"of {root}; a seed belongs to one split")
        kept = grown["seeds"].setdefault(split, [])
        kept += [s for s in seeds if s not in kept]
    grown["splits"] = {k: [video_name(s) for s in v] for k, v in grown["seeds"].items()}
    grown["hard_frames_per_video"] = dict(old.get("hard_frames_per_video") or {})
    return grown


def write_bag(path: Path, seed: int, frames: int, size: Tuple[int, int] = (256, 512),
              fps: float = 15.0, images: str = "raw", storage: str = "mcap", jpeg_quality: int = 95,
              events: bool = True, progress: Optional[Callable[[int], object]] = None) -> dict:
    """A rosbag2 of one video: camera frames (``images``: raw rgb8 Image on ``IMAGE_TOPIC``,
    jpeg CompressedImage on ``JPEG_TOPIC``, or both) and mono8 labels on ``LABEL_TOPIC`` with
    the same header. Returns the video's meta (also stored in the bag's custom data)."""
    from rosbags.rosbag2 import Writer

    from tv3s_ros.bag.typestore import COMPRESSED_IMAGE, IMAGE, build_typestore
    from tv3s_ros.bag.writer import BAG_VERSION, STORAGES

    if images not in ("raw", "jpeg", "both"):
        raise ValueError(f"images must be raw, jpeg or both, got {images!r}")
    store = build_typestore()
    types = store.types
    world = World(seed, size, fps, events)
    writer = Writer(Path(path), version=BAG_VERSION, storage_plugin=STORAGES[storage])
    writer.open()
    flags, counts = [], np.zeros(256, np.int64)
    try:
        raw = writer.add_connection(IMAGE_TOPIC, IMAGE, typestore=store) if images != "jpeg" else None
        jpeg = writer.add_connection(JPEG_TOPIC, COMPRESSED_IMAGE, typestore=store) if images != "raw" else None
        labels = writer.add_connection(LABEL_TOPIC, IMAGE, typestore=store)
        for image, label, flag in world.frames(frames):
            stamp_ns = START_NS + int(round(flag["index"] * 1e9 / fps))
            stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
            header = types["std_msgs/msg/Header"](stamp=stamp, frame_id=FRAME_ID)
            h, w = label.shape
            if raw is not None:
                msg = types[IMAGE](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                                   step=3 * w, data=np.ascontiguousarray(image).reshape(-1))
                writer.write(raw, stamp_ns, store.serialize_cdr(msg, IMAGE))
            if jpeg is not None:
                ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                assert ok
                msg = types[COMPRESSED_IMAGE](header=header, format="jpeg", data=data.reshape(-1))
                writer.write(jpeg, stamp_ns, store.serialize_cdr(msg, COMPRESSED_IMAGE))
            msg = types[IMAGE](header=header, height=h, width=w, encoding="mono8", is_bigendian=0,
                               step=w, data=np.ascontiguousarray(label).reshape(-1))
            writer.write(labels, stamp_ns, store.serialize_cdr(msg, IMAGE))
            counts += np.bincount(label.reshape(-1), minlength=256)
            flags.append(flag)
            if progress is not None:
                progress(1)
        meta = _meta(world, frames, flags, counts)
        writer.set_custom_data("tv3s.world.seed", str(seed))
        writer.set_custom_data("tv3s.world.version", WORLD_VERSION)
        writer.set_custom_data("tv3s.world.label_topic", LABEL_TOPIC)
        writer.set_custom_data("tv3s.world.hard_frames", json.dumps(meta["hard_frames"]))
    finally:
        writer.close()
    return meta
