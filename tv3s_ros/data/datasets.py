"""Readers for labelled video datasets: VSPW, Cityscapes sequences and the synthetic world.

ROS-free and model-free. :func:`open_dataset` lists videos and frames (cheap: file names
only); :func:`load_image` and :func:`load_label` read one frame. Labels come back in the
model's label space (``uint8``, 255 = ignore):

``vspw``        ``ROOT/[data/]<video>/origin/*.jpg`` and ``.../mask/*.png``; split lists
                ``ROOT/<split>.txt`` (one video per line) as in the VSPW release. Masks hold
                VSPW ids 0..124 with 0 = "others": the official config uses
                ``reduce_zero_label=True``, so 0 becomes 255 (ignored) and id i becomes class i-1.
``cityscapes``  ``ROOT/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
                with ``ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png``
                (or ``_labelIds.png``, mapped with the standard id -> trainId table) on the
                annotated frame of each snippet. A video is one run of consecutive frame
                numbers of a sequence (in the release: one 30-frame snippet).
``synthetic``   the VSPW folder layout with labels already in Cityscapes train ids (no
                reduction); recognised by ``ROOT/world.json`` holding ``"layout": "synthetic"``,
                optional split lists ``{"splits": {"train": [names], "val": [...]}}``.

Per-frame flags (hard, occluded, flash, ...) come from ``<video dir>/meta.json``:
``{"frames": [{"index": 0, "hard": true, ...}, ...]}`` (:func:`frame_flags`).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

__all__ = ["Frame", "Video", "DatasetError", "LAYOUTS", "open_dataset", "detect_layout", "load_image",
           "load_label", "check_sizes", "frame_flags", "CITYSCAPES_ID_TO_TRAINID", "IGNORE"]

LAYOUTS = ("vspw", "cityscapes", "synthetic")
IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PathLike = Union[str, Path]

# Standard Cityscapes labelIds -> trainIds (cityscapesScripts labels.py); all others ignore.
CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
_CITY_IMAGE = re.compile(r"^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit\.png$")
_CITY_LABEL_SUFFIXES = ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png")


class DatasetError(ValueError):
    """The dataset cannot be used as given (missing, empty, malformed); the message says why."""


@dataclass(frozen=True)
class Frame:
    image: Path
    label: Optional[Path]   # None: no ground truth for this frame
    index: int              # frame number in its video (from the file name when numeric)


@dataclass(frozen=True)
class Video:
    name: str
    frames: Tuple[Frame, ...]
    directory: Optional[Path] = None   # where meta.json is looked for (VSPW-style layouts)


# ----------------------------------------------------------------------------------------------
# Opening a dataset


def detect_layout(root: PathLike) -> str:
    """The layout of ``root`` (``DatasetError`` when none fits)."""
    root = Path(root)
    if _world_layout(root) == "synthetic":
        return "synthetic"
    if (root / "leftImg8bit_sequence").is_dir():
        return "cityscapes"
    if _video_base(root) is not None:
        return "vspw"
    raise DatasetError(f"{root}: cannot recognise the dataset layout (expected <video>/origin/ "
                       "folders (VSPW), leftImg8bit_sequence/ (Cityscapes) or world.json (synthetic)); "
                       "pass --layout")


def open_dataset(root: PathLike, layout: str = "auto", split: Optional[str] = None) -> List[Video]:
    """The videos of the dataset at ``root``, sorted by name, frames in order.

    ``split``: a split name (``train``, ``val``, ...) or None for every video. Raises
    ``DatasetError`` for a missing root, an unknown layout or split, or no frames at all.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    if layout not in ("auto",) + LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "cityscapes":
        videos = _open_cityscapes(root, split)
    else:
        videos = _open_vspw_like(root, layout, split)
    videos = [v for v in videos if v.frames]
    if not videos:
        raise DatasetError(f"{root}: no frames found for layout {layout}"
                           f"{f' and split {split}' if split else ''}")
    return videos


def _world_layout(root: Path) -> Optional[str]:
    info = _world_info(root)
    return info.get("layout") if info else None


def _world_info(root: Path) -> dict:
    path = root / "world.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return info


def _video_base(root: Path) -> Optional[Path]:
    """The folder holding the ``<video>/origin`` folders: ROOT or ROOT/data (VSPW release)."""
    for base in (root, root / "data"):
        if base.is_dir() and any((d / "origin").is_dir() for d in base.iterdir() if d.is_dir()):
            return base
    return None


def _split_names(root: Path, layout: str, split: str) -> List[str]:
    if layout == "synthetic":
        splits = _world_info(root).get("splits") or {}
        if split not in splits:
            raise DatasetError(f"{root / 'world.json'}: no split {split!r}"
                               f" (it has: {', '.join(sorted(splits)) or 'none'})")
        names = splits[split]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{root / 'world.json'}: splits.{split} must be a list of video names")
        return list(names)
    path = root / f"{split}.txt"
    if not path.is_file():
        raise DatasetError(f"split list not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _frame_number(stem: str, position: int) -> int:
    return int(stem) if stem.isdigit() else position


def _open_vspw_like(root: Path, layout: str, split: Optional[str]) -> List[Video]:
    base = _video_base(root)
    if base is None:
        raise DatasetError(f"{root}: no <video>/origin/ folders (layout {layout})")
    if split is None:
        names = sorted(d.name for d in base.iterdir() if (d / "origin").is_dir())
    else:
        names = sorted(_split_names(root, layout, split))
        missing = [n for n in names if not (base / n / "origin").is_dir()]
        if missing:
            raise DatasetError(f"{len(missing)} video(s) of split {split!r} missing under {base}: "
                               f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    videos = []
    for name in names:
        directory = base / name
        images = sorted(p for p in (directory / "origin").iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        frames = []
        for position, image in enumerate(images):
            label = directory / "mask" / f"{image.stem}.png"
            frames.append(Frame(image, label if label.is_file() else None,
                                _frame_number(image.stem, position)))
        videos.append(Video(name, tuple(frames), directory))
    return videos


def _open_cityscapes(root: Path, split: Optional[str]) -> List[Video]:
    seq_root = root / "leftImg8bit_sequence"
    splits = [split] if split else sorted(d.name for d in seq_root.iterdir() if d.is_dir())
    if split and not (seq_root / split).is_dir():
        raise DatasetError(f"split folder not found: {seq_root / split}")
    videos = []
    for sp in splits:
        runs: Dict[Tuple[str, str], Dict[int, Path]] = defaultdict(dict)
        for image in (seq_root / sp).glob("*/*_leftImg8bit.png"):
            m = _CITY_IMAGE.match(image.name)
            if m:
                runs[(m["city"], m["seq"])][int(m["frame"])] = image
        for (city, seq), by_frame in sorted(runs.items()):
            numbers = sorted(by_frame)
            # Split at gaps in the frame numbers: the release holds one 30-frame snippet per
            # (city, seq); a gap means another snippet.
            start = 0
            for k in range(1, len(numbers) + 1):
                if k == len(numbers) or numbers[k] != numbers[k - 1] + 1:
                    chunk = numbers[start:k]
                    frames = tuple(Frame(by_frame[n], _cityscapes_label(root, sp, city, seq, n), n)
                                   for n in chunk)
                    name = f"{city}_{seq}_{chunk[0]:06d}" + (f"@{sp}" if len(splits) > 1 else "")
                    videos.append(Video(name, frames, None))
                    start = k
    return videos


def _cityscapes_label(root: Path, split: str, city: str, seq: str, frame: int) -> Optional[Path]:
    for suffix in _CITY_LABEL_SUFFIXES:
        path = root / "gtFine" / split / city / f"{city}_{seq}_{frame:06d}{suffix}"
        if path.is_file():
            return path
    return None


# ----------------------------------------------------------------------------------------------
# Reading frames


def load_image(path: PathLike) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB (grey and 16-bit images are converted; alpha is dropped)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)   # 8-bit BGR, as the official loader (mmcv/cv2)
    if image is None:
        raise DatasetError(f"cannot read image {path}")
    return np.ascontiguousarray(image[:, :, ::-1])


def _read_label_png(path: PathLike) -> np.ndarray:
    # Pillow, not cv2: VSPW masks are palette PNGs, and only Pillow returns their indices
    # (cv2 expands them to colours); the official loader (mmseg, pillow backend) does the same.
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.array(im)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read label {path}: {err}") from None
    if array.ndim != 2:
        raise DatasetError(f"label {path} has shape {array.shape}: expected a single-channel or "
                           "palette PNG of class ids")
    return array


def load_label(path: PathLike, layout: str) -> np.ndarray:
    """``[H, W]`` uint8 class ids in the model's label space, 255 = ignore."""
    raw = _read_label_png(path).astype(np.int64)
    if layout == "vspw":
        # reduce_zero_label: 0 ("others") -> ignore, i -> i-1, 255 stays ignore.
        out = np.where((raw == 0) | (raw >= IGNORE), IGNORE, raw - 1)
    elif layout == "cityscapes":
        if str(path).endswith("_gtFine_labelIds.png"):
            table = np.full(max(256, int(raw.max()) + 1), IGNORE, dtype=np.int64)
            for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
                table[label_id] = train_id
            out = table[np.clip(raw, 0, None)]
        else:
            out = raw
    elif layout == "synthetic":
        out = raw
    else:
        raise DatasetError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return np.where((out < 0) | (out > IGNORE), IGNORE, out).astype(np.uint8)


def _header_size(path: Path) -> Tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from None
    return height, width


def check_sizes(videos: Sequence[Video]) -> int:
    """Check that every label has its image's size (file headers only); returns the number
    of labelled frames. ``DatasetError`` names the first mismatch."""
    count = 0
    for video in videos:
        for frame in video.frames:
            if frame.label is None:
                continue
            image_size, label_size = _header_size(frame.image), _header_size(frame.label)
            if image_size != label_size:
                raise DatasetError(
                    f"video {video.name}: label {frame.label} is {label_size[1]}x{label_size[0]} but its "
                    f"image {frame.image} is {image_size[1]}x{image_size[0]}")
            count += 1
    return count


def frame_flags(video: Video, flag: str) -> Set[int]:
    """Frame indices of ``video`` whose entry in ``<video dir>/meta.json`` has ``flag`` true.

    The entries are the list ``frame_flags`` (what the synthetic world writes; its ``frames``
    is the frame count) or, in hand-written metadata, a list under ``frames``. An absent
    meta.json gives the empty set; a malformed one raises ``DatasetError``.
    """
    if video.directory is None:
        return set()
    path = video.directory / "meta.json"
    if not path.is_file():
        return set()
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("expected a JSON object")
        key = "frame_flags" if "frame_flags" in meta else "frames"
        entries = meta.get(key, [])
        if not isinstance(entries, list):
            if key == "frames" and isinstance(entries, int):
                return set()        # only a frame count: no per-frame flags
            raise ValueError(f"'{key}' must be a list of per-frame entries")
        return {int(e["index"]) for e in entries if isinstance(e, dict) and e.get(flag)}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path}: malformed per-frame metadata ({err})") from None
