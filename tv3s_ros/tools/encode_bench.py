"""``tv3s-bench --encode``: bytes per frame and encode time of the node's compressed outputs.

The images are what the node publishes for a frame of the synthetic driving world
(:class:`tv3s_ros.data.world.World`, seed 3, frame 30) at the camera size (default 1080x1920):
labels, color, overlay and confidence from the ``tv3s_demo`` engine (its shipped weights,
outputs at input resolution, overlay_alpha 0.5, after a few frames of state), plus the world's
ground-truth labels and their palette colours. Each is encoded as the node encodes it
(:func:`tv3s_ros.image_encode.encode_compressed`: colour conversion and OpenCV encoder, no ROS
message); the raw ``sensor_msgs/Image`` payload size is given for comparison. One more row
shows why labels are never JPEG: the share of class ids a quality-90 JPEG changes.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tv3s_ros.image_encode import decode_compressed_exact, encode_compressed
from tv3s_ros.outputs import OUTPUTS, image_encoding

COLUMNS = ("output", "source", "codec", "format", "raw bytes", "bytes/frame", "ratio", "encode median ms",
           "encode p95 ms", "notes")
WORLD_SEED, WORLD_FRAME, WARM_FRAMES = 3, 30, 3


@dataclass
class EncodeRow:
    output: str
    source: str
    codec: str
    format: str
    raw_bytes: int
    nbytes: int
    times_s: List[float]
    notes: str = ""


def node_images(size: Tuple[int, int], quiet: bool = False) -> Dict[str, Tuple[str, np.ndarray]]:
    """``{row name: (source, array)}``: the demo engine's outputs and the world's ground truth."""
    from tv3s_ros.data.world import World
    from tv3s_ros.engine import Engine, FrameInput
    from tv3s_ros.engine.settings import EngineSettings

    world = World(seed=WORLD_SEED, size=size)
    engine = Engine.from_settings(EngineSettings(model="tv3s_demo", device="cpu", output_resolution="input"))
    out = image = labels = None
    for index in range(WORLD_FRAME - WARM_FRAMES, WORLD_FRAME + 1):
        image, labels, _ = world.render(index)
        if not quiet:
            print(f"tv3s-bench --encode: demo engine on world frame {index} ({size[0]}x{size[1]})", flush=True)
        out = engine.process([FrameInput("front", image, index * 66_666_667, "front")], None)[0]
    palette = np.asarray(engine.palette.cpu() if hasattr(engine.palette, "cpu") else engine.palette, np.uint8)
    gt_colour = np.zeros(labels.shape + (3,), np.uint8)
    known = labels < len(palette)
    gt_colour[known] = palette[labels[known]]
    demo = f"tv3s_demo on world seed {WORLD_SEED} frame {WORLD_FRAME}"
    truth = f"world seed {WORLD_SEED} frame {WORLD_FRAME}, ground truth"
    return {
        "labels": (demo, out.output("labels")),
        "color": (demo, out.output("color")),
        "overlay": (demo, out.output("overlay")),
        "confidence": (demo, out.output("confidence")),
        "labels (ground truth)": (truth, labels),
        "color (ground truth)": (truth, gt_colour),
    }


def _time(fn, iters: int) -> List[float]:
    fn()    # warm-up (OpenCV allocations)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(images: Dict[str, Tuple[str, np.ndarray]], jpeg_qualities: Sequence[int],
            iters: int) -> List[EncodeRow]:
    import cv2

    rows = []
    for row_name, (source, array) in images.items():
        output = row_name.split(" ")[0]
        encoding = image_encoding(output, array)
        codec = OUTPUTS[output].compressed
        for quality in (jpeg_qualities if codec == "jpeg" else [None]):
            kwargs = {"jpeg_quality": quality} if quality else {}
            encoded = encode_compressed(array, encoding, codec, **kwargs)
            times = _time(lambda: encode_compressed(array, encoding, codec, **kwargs), iters)
            name = f"{row_name}" + (f" q{quality}" if quality else "")
            rows.append(EncodeRow(name, source, codec, encoded.format, array.nbytes, encoded.nbytes, times))
    # The PNG settings chosen (image_encode: "up" filter, run-length strategy) against OpenCV's defaults.
    for row_name in ("labels", "confidence"):
        source, array = images[row_name]
        encoded = encode_compressed(array, "mono8", "png")
        times = _time(lambda: cv2.imencode(".png", array), iters)
        size = int(cv2.imencode(".png", array)[1].size)
        rows.append(EncodeRow(f"{row_name} (OpenCV defaults, not used)", source, "png", encoded.format,
                              array.nbytes, size, times, "cv2.imencode without parameters"))
    # Why labels are never JPEG: lossy compression changes class ids.
    source, labels = images["labels"]
    encoded = encode_compressed(labels, "mono8", "jpeg", jpeg_quality=90)
    back, _ = decode_compressed_exact(encoded.format, encoded.data)
    changed = float(np.mean(back != labels))
    times = _time(lambda: encode_compressed(labels, "mono8", "jpeg", jpeg_quality=90), iters)
    rows.append(EncodeRow("labels q90 (not offered)", source, "jpeg", encoded.format, labels.nbytes, encoded.nbytes,
                          times, f"changes {changed:.1%} of the class ids"))
    return rows


def table_cells(rows: Sequence[EncodeRow]) -> List[List[str]]:
    cells = []
    for r in rows:
        ms = sorted(t * 1e3 for t in r.times_s)
        p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
        cells.append([r.output, r.source, r.codec, f"`{r.format}`", f"{r.raw_bytes:,}", f"{r.nbytes:,}",
                      f"{r.raw_bytes / r.nbytes:.0f}x", f"{statistics.median(ms):.1f}", f"{p95:.1f}", r.notes])
    return cells


def format_table(rows: Sequence[EncodeRow], markdown: bool) -> str:
    cells = table_cells(rows)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    cells = [[c.strip("`") for c in row] for row in cells]
    widths = [max(len(COLUMNS[i]), *(len(c[i]) for c in cells)) for i in range(len(COLUMNS))]
    fmt = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(c) for c in cells])


def run_encode(args) -> Tuple[Dict[str, str], List[EncodeRow]]:
    """The ``--encode`` table (``args``: camera_size, jpeg_quality, iters, quiet)."""
    import cv2
    import torch

    from tv3s_ros.tools.bench import environment

    if args.threads:
        torch.set_num_threads(args.threads)
    info = environment(torch.device("cpu"))
    info.pop("scan backend", None)
    info["opencv"] = f"{cv2.__version__}, {cv2.getNumThreads()} threads"
    info["camera size"] = f"{args.camera_size[0]}x{args.camera_size[1]}"
    images = node_images(tuple(args.camera_size), quiet=args.quiet)
    iters = args.iters if args.iters is not None else 20
    info["timing"] = f"{iters} encodes per row after one warm-up, one at a time (the node encodes the " \
                     f"outputs of a batch in parallel)"
    return info, measure(images, args.jpeg_quality, iters)
