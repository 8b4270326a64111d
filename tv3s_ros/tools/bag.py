"""tv3s-bag: segment every camera frame of recorded bags offline, into a new rosbag2.

Reads a rosbag2 (mcap or sqlite3) or a ROS 1 bag, or a directory of bags, runs each image
of the chosen camera topics through the same engine as tv3s_node, in recording order with
one recurrent state per camera and no frame dropped, and writes the node's topics
(/tv3s/<camera>/labels, color, overlay, confidence, coverage) with the source headers.
No ROS installation is needed (rosbags does the bag I/O).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

EPILOG = """\
examples:
  # every image topic of a drive, official B1 Cityscapes weights, output as mcap
  tv3s-bag drive_0042/ drive_0042_seg/ --weights model/weights/tv3s_b1_city.pth

  # two cameras, 20 s from 60 s after the start, with confidence and the input images
  tv3s-bag drive_0042/ out/ --weights model/weights/tv3s_b1_city.pth \\
      --topics /cam/front/image_raw /cam/left/image_raw/compressed \\
      --start 60 --end 80 --outputs labels,color,overlay,confidence --copy-input

  # a folder of bags (rosbag2 directories, .bag, .mcap, .db3): one output per bag in out/,
  # a coverage plot per bag (out/coverage_<bag>.png) and a JSON summary
  tv3s-bag recordings/ out/ --weights w.pth --plot out/coverage.png --summary-json out/summary.json

  # fast preview on a GPU: half precision, every 3rd frame, smaller input
  tv3s-bag drive.bag preview/ --weights w.pth --device cuda --precision fp16 \\
      --every-n 3 --input-size 512x1024

  # pipeline check without weights (output is meaningless): a tiny random model
  tv3s-bag drive/ out/ --model tv3s_b0_cityscapes --allow-random-weights \\
      --model-overrides "{embed_dim: 32, n_mambas: 2}"

what you get:
  OUTPUT is a rosbag2 directory (a folder of them when INPUT is a folder of bags). For each
  camera: /tv3s/<camera>/labels (mono8; mono16 past 255 classes), color and overlay (rgb8),
  confidence (mono8, with --outputs ...,confidence) and coverage (tv3s_ros/msg/ClassCoverage,
  always written; its definition is stored in the bag). Every message carries the source
  image's header and is written at the source message's bag time. Camera names follow the
  node's rule (/cam/front/image_raw -> front; --camera-names overrides).

state and resets:
  Frames go through in recording order, one state per camera, none dropped. The state of a
  camera resets, exactly as in tv3s_node, on its first frame, an image size or frame_id
  change, a header stamp going backwards, a stamp gap above --max-gap-s, and every
  --max-state-frames frames if set; each reset shows as frames_since_reset = 0 and
  reset_reason in coverage. State never crosses bags. Corrupt messages are skipped and
  listed in the summary (the state is kept across them).

notes:
  --start/--end take seconds from the bag start, or absolute UNIX times (values >= 1e9).
  On a CPU shared with other jobs, --cpu-threads 1 is often much faster than the default.
  Live replay through the node instead (frames skipped when the model is slower than the
  bag): ros2 launch tv3s_ros replay.launch.py bag:=drive_0042/
"""

DEFAULT_OUTPUTS = "labels,color,overlay"
IMAGE_OUTPUT_CHOICES = ("labels", "color", "overlay", "confidence")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tv3s-bag", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path,
                        help="rosbag2 directory, .mcap/.db3 file, ROS 1 .bag, or a directory of bags")
    parser.add_argument("output", type=Path,
                        help="output rosbag2 directory (for a directory of bags: a folder that "
                             "receives one output bag per input bag)")

    sel = parser.add_argument_group("what to process")
    sel.add_argument("--topics", nargs="+", metavar="TOPIC",
                     help="camera topics (Image or CompressedImage; default: every image topic)")
    sel.add_argument("--camera-names", nargs="+", metavar="NAME",
                     help="camera names for --topics, in the same order (default: from the topic)")
    sel.add_argument("--start", type=float, metavar="S",
                     help="first bag time to process: seconds from the bag start, or UNIX time")
    sel.add_argument("--end", type=float, metavar="S", help="bag time to stop at (same units)")
    sel.add_argument("--every-n", type=int, default=1, metavar="N",
                     help="process every N-th frame of each camera (default 1: all). The "
                          "temporal context then spans N recorded frames per step")

    mdl = parser.add_argument_group("model")
    mdl.add_argument("--model", default="tv3s_b1_cityscapes",
                     help="preset name or YAML path (default tv3s_b1_cityscapes)")
    mdl.add_argument("--weights", help="checkpoint file (mmcv .pth); required unless "
                                       "--allow-random-weights")
    mdl.add_argument("--allow-random-weights", action="store_true",
                     help="run without weights (tests and pipeline checks: output is meaningless)")
    mdl.add_argument("--model-overrides", nargs="+", metavar="KEY=VALUE",
                     help="preset overrides, as KEY=VALUE pairs or one YAML mapping "
                          "(e.g. \"{embed_dim: 32, window: 4}\"); for small test models")
    mdl.add_argument("--seed", type=int, metavar="N",
                     help="seed torch's RNG before building the model (reproducible random "
                          "weights, as the node's seed parameter)")
    mdl.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    mdl.add_argument("--cpu-threads", type=int, metavar="N",
                     help="torch CPU threads (default: torch's choice, one per core); 1 is "
                          "steadier on a machine shared with other jobs")
    mdl.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                     help="inference precision (default fp32; fp16 is GPU only)")
    mdl.add_argument("--input-size", default="official",
                     help="model input size: official (default), HxW (e.g. 512x1024) or "
                          "keep_aspect:SHORT_SIDE")
    mdl.add_argument("--output-resolution", default="input", choices=("input", "model"),
                     help="label image size: the camera's (default) or the model input's")
    mdl.add_argument("--overlay-alpha", type=float, default=0.5,
                     help="palette weight in the overlay image (default 0.5)")
    mdl.add_argument("--max-gap-s", type=float, default=1.0,
                     help="reset a camera's state when its stamps jump forward by more than "
                          "this (default 1.0 s; 0 disables)")
    mdl.add_argument("--max-state-frames", type=int, default=0,
                     help="reset after this many frames in one state (default 0: never)")

    out = parser.add_argument_group("output")
    out.add_argument("--outputs", default=DEFAULT_OUTPUTS,
                     help=f"images to write, comma-separated from {','.join(IMAGE_OUTPUT_CHOICES)} "
                          f"(default {DEFAULT_OUTPUTS}); coverage is always written")
    out.add_argument("--copy-input", action="store_true",
                     help="also copy the processed camera topics into the output bag")
    out.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"),
                     help="output storage format (default mcap)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing output bag (only bag directories are deleted)")
    out.add_argument("--plot", type=Path, metavar="PNG",
                     help="plot class coverage over time per camera (per bag: PNG_<bag>.png)")
    out.add_argument("--summary-json", type=Path, metavar="FILE",
                     help="write the summary (frames, resets, coverage, corrupt, fps) as JSON")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


class UsageError(Exception):
    """A bad option value (reported like argparse errors, exit status 2)."""


def parse_overrides(items: Optional[List[str]]) -> dict:
    """``["embed_dim=32", "window=4"]`` or ``["{embed_dim: 32}"]`` -> dict with typed values."""
    import yaml

    if not items:
        return {}
    text = " ".join(items).strip()
    if text.startswith("{"):
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            raise UsageError(f"--model-overrides: {text!r} is not a mapping")
        return value
    overrides = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--model-overrides: expected KEY=VALUE, got {part!r}")
            overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def parse_outputs(text: str) -> list:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in IMAGE_OUTPUT_CHOICES]
    if unknown:
        raise UsageError(f"--outputs: unknown {', '.join(unknown)} "
                         f"(choose from {', '.join(IMAGE_OUTPUT_CHOICES)})")
    return list(dict.fromkeys(chosen))


def plot_path(plot: Optional[Path], bag: Path, several: bool) -> Optional[Path]:
    """--plot as given for one bag; ``<stem>_<bag>.png`` per bag for a directory of bags."""
    from tv3s_ros.bag.source import bag_stem

    if plot is None or not several:
        return plot
    return plot.with_name(f"{plot.stem}_{bag_stem(bag)}{plot.suffix or '.png'}")


def _every_n_warning(every_n: int, max_gap_s: float) -> str:
    return (f"--every-n {every_n}: only every {every_n}th frame of each camera is processed, so "
            f"the model's temporal context spans {every_n} recorded frames per step (it was "
            "trained on consecutive frames; expect less stable labels). The gap reset still "
            f"applies to the processed frames (--max-gap-s {max_gap_s}).")


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.every_n < 1:
        parser.error("--every-n must be at least 1")
    if args.cpu_threads is not None and args.cpu_threads < 1:
        parser.error("--cpu-threads must be at least 1")
    if args.weights is None and not args.allow_random_weights:
        parser.error("no --weights given: pass a TV3S checkpoint (see model/README.md), or "
                     "--allow-random-weights for pipeline checks (meaningless output)")
    logging.basicConfig(level=logging.INFO, format="tv3s-bag: %(message)s", stream=sys.stderr)
    threads = _set_cpu_threads(args.cpu_threads)
    try:
        return _run(args)
    except UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"tv3s-bag: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tv3s-bag: interrupted; the output bag written so far is closed and readable",
              file=sys.stderr)
        return 130
    finally:
        _set_cpu_threads(threads)  # main() may run inside a bigger process (tests)


def _set_cpu_threads(count: Optional[int]) -> Optional[int]:
    """Set torch's CPU thread count; returns the previous one (None: nothing changed)."""
    if count is None:
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    return previous


def _quiet_opencv() -> None:
    """OpenCV prints its own warnings for broken jpeg/png data; the summary already lists
    every corrupt message, and stray lines would break the progress bar."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # OpenCV builds without the logging module
        pass


def _plan(args: argparse.Namespace):
    """Bags, output paths and run options, all validated before the model loads.

    A typo in --topics or an existing output should fail in a second, not after the
    first bag of a long run.
    """
    from tv3s_ros.bag.runner import RunOptions, plan_bag
    from tv3s_ros.bag.source import bag_stem, find_bags
    from tv3s_ros.bag.writer import check_output_path

    bags = find_bags(args.input)
    several = len(bags) > 1 or (args.input.is_dir() and bags[0] != args.input)
    targets = [args.output / bag_stem(bag) if several else args.output for bag in bags]
    options = RunOptions(
        topics=args.topics, camera_names=args.camera_names, start_s=args.start, end_s=args.end,
        every_n=args.every_n, outputs=parse_outputs(args.outputs), copy_input=args.copy_input,
        storage=args.storage, overwrite=args.overwrite, progress=not args.no_progress)
    for bag, target in zip(bags, targets):
        if target.resolve() == bag.resolve() or bag.resolve() in target.resolve().parents:
            raise UsageError(f"output {target} would be inside input bag {bag}")
        plan_bag(bag, options)
        check_output_path(target, args.overwrite)
    return bags, targets, several, options


def _build_engine(args: argparse.Namespace):
    """The node's engine with the command-line settings (raises on a bad setting)."""
    import torch

    from tv3s_ros.engine import Engine

    if args.seed is not None:
        torch.manual_seed(args.seed)
    return Engine.from_settings(
        args.model, weights=args.weights, allow_random_weights=args.allow_random_weights,
        device=args.device, precision=args.precision, input_size=args.input_size,
        output_resolution=args.output_resolution, overlay_alpha=args.overlay_alpha,
        max_gap_s=args.max_gap_s, max_state_frames=args.max_state_frames,
        model_overrides=parse_overrides(args.model_overrides))


def _run(args: argparse.Namespace) -> int:
    from tv3s_ros.bag.runner import process_bag, tqdm_progress
    from tv3s_ros.bag.source import BagInputError
    from tv3s_ros.bag.summary import format_report, plot_coverage
    from tv3s_ros.bag.writer import OutputExistsError

    try:
        bags, targets, several, options = _plan(args)
    except (BagInputError, OutputExistsError) as error:
        print(f"tv3s-bag: error: {error}", file=sys.stderr)
        return 2
    if args.every_n > 1:
        print(f"tv3s-bag: warning: {_every_n_warning(args.every_n, args.max_gap_s)}",
              file=sys.stderr)
    _quiet_opencv()
    try:
        engine = _build_engine(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as error:
        print(f"tv3s-bag: error: cannot set up the model: {error}", file=sys.stderr)
        return 2
    print(f"tv3s-bag: model {engine.preset} on {engine.device} ({engine.precision}), weights "
          f"{engine.weights or 'RANDOM (meaningless output)'}, input size {args.input_size}, "
          f"{len(bags)} bag(s)", file=sys.stderr)

    # Recorded in the output bag's metadata.yaml (custom_data), so a bag says how it was made.
    options.custom_data = {
        "tv3s.tool": "tv3s-bag", "tv3s.model": engine.preset,
        "tv3s.weights": engine.weights or "random", "tv3s.input_size": args.input_size,
        "tv3s.precision": engine.precision, "tv3s.every_n": args.every_n,
        "tv3s.max_gap_s": args.max_gap_s}
    palette = [[int(c) for c in row] for row in np.asarray(engine.palette).tolist()]
    reports = []
    for bag, target in zip(bags, targets):
        options.plot = plot_path(args.plot, bag, several)
        options.custom_data["tv3s.source_bag"] = str(bag)
        progress = tqdm_progress if options.progress else None
        try:
            report = process_bag(bag, target, engine, engine.class_names, options, progress)
        except (BagInputError, OutputExistsError) as error:
            print(f"tv3s-bag: error: {error}", file=sys.stderr)
            return 2
        reports.append(report)
        print(format_report(report, engine.class_names), flush=True)
        if options.plot is not None:
            options.plot.parent.mkdir(parents=True, exist_ok=True)
            plot_coverage(report, options.plot, engine.class_names, palette)
            print(f"  coverage plot: {options.plot}", flush=True)
    _print_totals(args, engine, reports)
    return 0


def _print_totals(args: argparse.Namespace, engine, reports: list) -> None:
    """The run's throughput line and, with --summary-json, the JSON summary."""
    frames = sum(r.frames for r in reports)
    wall = sum(r.wall_s for r in reports)
    engine_s = sum(r.engine_s for r in reports)
    fps = frames / wall if wall else 0.0
    engine_fps = frames / engine_s if engine_s else 0.0
    if len(reports) > 1:
        corrupt = sum(sum(r.corrupt.values()) for r in reports)
        print(f"Total: {len(reports)} bags, {frames} frames, {corrupt} corrupt messages skipped",
              flush=True)
    print(f"throughput: {fps:.2f} frames/s end to end, {engine_fps:.2f} frames/s engine "
          f"({engine.preset}, {engine.device}, {engine.precision}, input {args.input_size})",
          flush=True)
    if args.summary_json is not None:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "model": engine.preset, "weights": engine.weights, "device": str(engine.device),
            "precision": engine.precision, "input_size": args.input_size,
            "every_n": args.every_n, "max_gap_s": args.max_gap_s,
            "bags": [r.to_dict(engine.class_names) for r in reports],
            "frames": frames, "fps": fps, "engine_fps": engine_fps}
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
