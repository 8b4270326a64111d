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
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from tv3s_ros.host_memory import keep_freed_memory
from tv3s_ros.outputs import IMAGE_OUTPUTS

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

safety of outputs:
  Each output bag is written as OUT.tv3s-incomplete/OUT and moved to OUT only when the bag
  is complete; --overwrite replaces an old OUT only at that moment, so a failed or stopped
  run leaves the old output as it was. An output that is, contains or lies inside an input
  bag (symlinks resolved; a .mcap/.db3 inside a rosbag2 directory counts as the whole
  directory), and two inputs mapping to one output, are refused before any work.
  Ctrl-C or SIGTERM stops after the current frame and closes the bag cleanly: it stays
  readable under OUT.tv3s-incomplete/OUT, says "tv3s.status: incomplete: ..." in its
  metadata.yaml, and the summary says how far it got (a second signal stops at once).
  A rerun removes such a leftover. A bag whose input cannot be read (truncated file, chunk
  checksum mismatch), whose output cannot be written (disk full) or whose frames make the
  engine fail ends with one line; the run goes on with the next bag.

exit status:
  0    every bag done
  1    some bags failed (each named in one "error:" line and in the summary)
  2    usage error: bad option, missing topic, refused output, unusable model or
       checkpoint; nothing was written
  130  interrupted by Ctrl-C (SIGINT); 143: by SIGTERM

notes:
  --start/--end take seconds from the bag start, or absolute UNIX times (values >= 1e9).
  On a CPU shared with other jobs, --cpu-threads 1 is often much faster than the default.
  Live replay through the node instead (frames skipped when the model is slower than the
  bag): ros2 launch tv3s_ros replay.launch.py bag:=drive_0042/
"""

DEFAULT_OUTPUTS = "labels,color,overlay"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tv3s-bag", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, nargs="+",
                        help="rosbag2 directory, .mcap/.db3 file, ROS 1 .bag, or a directory of "
                             "bags (several only with --ray)")
    parser.add_argument("output", type=Path,
                        help="output rosbag2 directory (for a directory of bags: a folder that "
                             "receives one output bag per input bag)")

    sel = parser.add_argument_group("what to process")
    sel.add_argument("--topics", nargs="+", metavar="TOPIC",
                     help="camera topics (Image or CompressedImage; default: every image topic)")
    sel.add_argument("--camera-names", nargs="+", metavar="NAME",
                     help="camera names for --topics, in the same order (default: from the topic)")
    sel.add_argument("--allow-16bit-cameras", nargs="+", default=(), metavar="NAME",
                     help="cameras whose 16-bit images (mono16, 16UC1, rgb16, 16-bit png) are real "
                          "camera images, scaled to 8 bit; any other camera's 16-bit or float "
                          "frames are skipped as unsupported (a depth topic among the cameras)")
    sel.add_argument("--start", type=float, metavar="S",
                     help="first bag time to process: seconds from the bag start, or UNIX time")
    sel.add_argument("--end", type=float, metavar="S", help="bag time to stop at (same units)")
    sel.add_argument("--every-n", type=int, default=1, metavar="N",
                     help="process every N-th frame of each camera (default 1: all). The "
                          "temporal context then spans N recorded frames per step")

    mdl = parser.add_argument_group("model")
    mdl.add_argument("--model", default="tv3s_b1_cityscapes",
                     help="preset name or YAML path (default tv3s_b1_cityscapes)")
    mdl.add_argument("--weights", help="checkpoint file (mmcv .pth); default: the weights the preset "
                                       "ships (tv3s_demo), else required unless --allow-random-weights")
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
                     help=f"images to write, comma-separated from {','.join(IMAGE_OUTPUTS)} "
                          f"(default {DEFAULT_OUTPUTS}); coverage is always written")
    out.add_argument("--copy-input", action="store_true",
                     help="also copy the processed camera topics into the output bag")
    out.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"),
                     help="output storage format (default mcap)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing output bag once the new one is complete (only "
                          "bag directories are replaced, never an input)")
    out.add_argument("--plot", type=Path, metavar="PNG",
                     help="plot class coverage over time per camera (per bag: PNG_<bag>.png)")
    out.add_argument("--summary-json", type=Path, metavar="FILE",
                     help="write the summary (frames, resets, coverage, corrupt, fps) as JSON")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_fleet_arguments(parser)
    return parser


# --- fleet: flags and dispatch only; the work is in tv3s_ros/tools/fleet.py ---------------
def _add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    fleet = parser.add_argument_group("fleet (Ray; pip install .[fleet]; see docs/fleet.md)")
    fleet.add_argument("--ray", nargs="?", const="auto", metavar="auto|ADDRESS",
                       help="process the bags on Ray workers: auto (default) joins a running "
                            "local instance or starts one; ADDRESS (host:port) joins a cluster. "
                            "Reruns skip complete outputs; a summary JSON and CSV is written")
    fleet.add_argument("--workers", type=int, metavar="N",
                       help="Ray workers, one model each (default: one per GPU, else "
                            "CPUs / --worker-cpus)")
    fleet.add_argument("--worker-cpus", type=float, default=1.0, metavar="C",
                       help="CPUs reserved per worker without GPUs (default 1)")
    fleet.add_argument("--split-min-frames", type=int, default=0, metavar="N",
                       help="split bags with more than N frames at points where every camera's "
                            "state resets anyway, into pieces of at least N frames (default 0: "
                            "never); results stay identical")
    fleet.add_argument("--verbose", action="store_true",
                       help="a line per worker event (task started, finished, worker lost)")
# --- end fleet ------------------------------------------------------------------------------


class UsageError(Exception):
    """A bad option value (reported like argparse errors, exit status 2)."""


class RefusedError(UsageError):
    """An output that would destroy or silently replace data (exit status 2, no usage text)."""


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


def preset_ships_weights(args: argparse.Namespace) -> bool:
    """Whether ``--model`` (with its overrides) names weights of its own (tv3s_demo does).
    A preset that cannot be read counts as shipping none; the model build reports why."""
    from tv3s_ros.model.presets import load_config

    try:
        return load_config(args.model, **parse_overrides(args.model_overrides)).weights is not None
    except Exception:  # noqa: BLE001 - reported with its own message when the model is built
        return False


def parse_outputs(text: str) -> list:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in IMAGE_OUTPUTS]
    if unknown:
        raise UsageError(f"--outputs: unknown {', '.join(unknown)} "
                         f"(choose from {', '.join(IMAGE_OUTPUTS)})")
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


EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


class _StopRequest:
    """SIGINT/SIGTERM handling: while a bag is written, the first signal asks the run to stop
    after the current frame (the bag is then closed cleanly); a second one, or a signal
    while nothing is being written, stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        self.signum = 0
        self.deferring = False
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        first = self.signal_name is None
        if first:
            self.signal_name, self.signum = signal.Signals(signum).name, signum
        if first and self.deferring:
            print(f"tv3s-bag: {self.signal_name}: stopping after the current frame and closing "
                  "the output bag (send it again to stop at once)", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    def __enter__(self) -> "_StopRequest":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the exit status (see "exit status" in --help)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ray is None:
        if len(args.input) > 1:
            parser.error("several inputs need --ray (or put the bags in one folder)")
        args.input = args.input[0]
    if args.every_n < 1:
        parser.error("--every-n must be at least 1")
    if args.cpu_threads is not None and args.cpu_threads < 1:
        parser.error("--cpu-threads must be at least 1")
    if args.weights is None and not args.allow_random_weights and not preset_ships_weights(args):
        parser.error(f"no --weights given and preset {args.model} ships none: pass a TV3S checkpoint "
                     "(see model/README.md), or --allow-random-weights for pipeline checks "
                     "(meaningless output)")
    logging.basicConfig(level=logging.INFO, format="tv3s-bag: %(message)s", stream=sys.stderr)
    threads = _set_cpu_threads(args.cpu_threads)
    keep_freed_memory()
    stop = _StopRequest()
    try:
        with stop:
            if args.ray is not None:
                from tv3s_ros.tools import fleet

                return fleet.run(args, stop, parser)
            return _run(args, stop)
    except UsageError as error:
        if not isinstance(error, RefusedError):
            parser.print_usage(sys.stderr)
        print(f"tv3s-bag: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"tv3s-bag: stopped by {stop.signal_name or 'SIGINT'}", file=sys.stderr)
        return stop.exit_status()
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


def _protected(bag: Path) -> Path:
    """What an input bag puts off limits: its real path, or for a .mcap/.db3 inside a
    rosbag2 directory, that whole directory (its metadata.yaml and other files)."""
    from tv3s_ros.bag.source import is_rosbag2_dir

    real = bag.resolve()
    if real.is_file() and is_rosbag2_dir(real.parent):
        return real.parent
    return real


def _relation(output: Path, protected: Path) -> Optional[str]:
    """How ``output`` overlaps ``protected`` (both resolved), or None."""
    if output == protected:
        return "is"
    if output in protected.parents:
        return "contains"
    if protected in output.parents:
        return "lies inside"
    return None


def _check_no_overlap(outputs: list, bags: list) -> None:
    """Refuse any output that is, contains or lies inside an input (symlinks resolved)."""
    protected = [(_protected(bag), bag) for bag in bags]
    for label, path in outputs:
        real = path.resolve()
        for guarded, bag in protected:
            relation = _relation(real, guarded)
            if relation:
                shown = f"{path} (= {real})" if real != path.absolute() else str(path)
                raise RefusedError(
                    f"refusing {label} {shown}: it {relation} the input {guarded}"
                    f"{'' if guarded == bag.resolve() else f' (the rosbag2 directory of {bag})'}"
                    "; writing it could destroy the recording. Choose an output outside the "
                    "input (nothing was written)")


def _check_collisions(bags: list, targets: list) -> None:
    """Two inputs with one output name (recs/a/ and recs/a.mcap -> out/a): refused."""
    seen: dict = {}
    for bag, target in zip(bags, targets):
        key = target.resolve()
        if key in seen:
            raise RefusedError(
                f"inputs {seen[key]} and {bag} would both be written to {target}; process "
                "them in separate runs with different outputs, or rename one (nothing was "
                "written)")
        seen[key] = bag


def _plan(args: argparse.Namespace):
    """Bags, output paths and run options, all validated before the model loads.

    A typo in --topics, an existing output, an output inside an input or two inputs with
    one output should fail in a second, not after the first bag of a long run. Bags that
    cannot be opened (truncated, garbled) are returned in ``unreadable``: they fail alone.
    """
    from tv3s_ros.bag.runner import BagFailure, RunOptions, plan_bag
    from tv3s_ros.bag.source import bag_stem, find_bags
    from tv3s_ros.bag.writer import check_output_path, staging_dir

    bags = find_bags(args.input)
    several = len(bags) > 1 or (args.input.is_dir() and bags[0] != args.input)
    targets = [args.output / bag_stem(bag) if several else args.output for bag in bags]
    options = RunOptions(
        topics=args.topics, camera_names=args.camera_names, start_s=args.start, end_s=args.end,
        every_n=args.every_n, allow_16bit_cameras=tuple(args.allow_16bit_cameras),
        outputs=parse_outputs(args.outputs), copy_input=args.copy_input,
        storage=args.storage, overwrite=args.overwrite, progress=not args.no_progress)
    outputs = [("output", args.output)]
    for target in targets:
        outputs += [("output", target), ("temporary output", staging_dir(target))]
    for bag in bags:
        plot = plot_path(args.plot, bag, several)
        if plot is not None:
            outputs.append(("--plot", plot))
    if args.summary_json is not None:
        outputs.append(("--summary-json", args.summary_json))
    _check_no_overlap(outputs, bags)
    _check_collisions(bags, targets)
    unreadable = {}
    for bag, target in zip(bags, targets):
        try:
            plan_bag(bag, options)
        except BagFailure as failure:
            unreadable[bag] = str(failure)
        check_output_path(target, args.overwrite)
    return bags, targets, several, options, unreadable


def _build_engine(args: argparse.Namespace):
    """The node's engine with the command-line settings (raises on a bad setting)."""
    import torch

    from tv3s_ros.engine import Engine, EngineSettings

    if args.seed is not None:
        torch.manual_seed(args.seed)
    return Engine.from_settings(EngineSettings(
        args.model, weights=args.weights, allow_random_weights=args.allow_random_weights,
        device=args.device, precision=args.precision, input_size=args.input_size,
        output_resolution=args.output_resolution, overlay_alpha=args.overlay_alpha,
        max_gap_s=args.max_gap_s, max_state_frames=args.max_state_frames,
        model_overrides=parse_overrides(args.model_overrides)))


def _model_error(error: Exception) -> str:
    """One line for a model/checkpoint set-up failure (never a traceback)."""
    from tv3s_ros.model.checkpoint import CheckpointMismatchError

    if isinstance(error, CheckpointMismatchError):
        first = str(error).splitlines()[0]
        fits = (f"; it fits preset(s) {', '.join(error.fitting_presets)} (--model)"
                if error.fitting_presets else "")
        return (f"{first}: {len(error.missing)} missing, {len(error.unexpected)} unexpected, "
                f"{len(error.mismatched)} wrongly shaped keys{fits}")
    from tv3s_ros.bag.runner import one_line

    if isinstance(error, (ValueError, FileNotFoundError)):  # our own messages: no type name
        return one_line(error, limit=2000).split(": ", 1)[-1]
    return one_line(error, limit=2000)


def _run(args: argparse.Namespace, stop: _StopRequest) -> int:
    from tv3s_ros.bag.runner import process_bag, tqdm_progress
    from tv3s_ros.bag.source import BagInputError
    from tv3s_ros.bag.summary import BagReport, format_report, plot_coverage
    from tv3s_ros.bag.writer import OutputExistsError

    try:
        bags, targets, several, options, unreadable = _plan(args)
    except (BagInputError, OutputExistsError) as error:
        print(f"tv3s-bag: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    for bag, problem in unreadable.items():
        print(f"tv3s-bag: error: {bag}: {problem} (skipped; the other bags go on)",
              file=sys.stderr, flush=True)
    if len(unreadable) == len(bags):
        return EXIT_SOME_FAILED
    if args.every_n > 1:
        print(f"tv3s-bag: warning: {_every_n_warning(args.every_n, args.max_gap_s)}",
              file=sys.stderr)
    _quiet_opencv()
    try:
        engine = _build_engine(args)
    except Exception as error:  # noqa: BLE001 - unsafe/mismatched checkpoint, bad setting: one line
        print(f"tv3s-bag: error: cannot set up the model: {_model_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"tv3s-bag: model {engine.preset} on {engine.device} ({engine.precision}), weights "
          f"{engine.weights or 'RANDOM (meaningless output)'}"
          f"{' (shipped with the preset)' if engine.shipped_weights and not args.weights else ''}, "
          f"input size {args.input_size}, "
          f"{len(bags)} bag(s)", file=sys.stderr)

    # Recorded in the output bag's metadata.yaml (custom_data), so a bag says how it was made.
    options.custom_data = {
        "tv3s.tool": "tv3s-bag", "tv3s.model": engine.preset,
        "tv3s.weights": engine.weights or "random", "tv3s.input_size": args.input_size,
        "tv3s.precision": engine.precision, "tv3s.every_n": args.every_n,
        "tv3s.max_gap_s": args.max_gap_s}
    options.should_stop = lambda: stop.signal_name
    palette = [[int(c) for c in row] for row in np.asarray(engine.palette).tolist()]
    reports = []
    # From here a first signal only asks to stop: the current bag is closed cleanly, the
    # remaining ones are not started, and the summary is still printed.
    stop.deferring = True
    for bag, target in zip(bags, targets):
        if bag in unreadable:
            report = BagReport(str(bag), str(target))
            report.fail(unreadable[bag])
            reports.append(report)
            continue
        if stop.signal_name:
            break
        options.plot = plot_path(args.plot, bag, several)
        options.custom_data["tv3s.source_bag"] = str(bag)
        progress = tqdm_progress if options.progress else None
        try:
            report = process_bag(bag, target, engine, engine.class_names, options, progress)
        except (BagInputError, OutputExistsError) as error:
            print(f"tv3s-bag: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        reports.append(report)
        if report.status == "failed":
            print(f"tv3s-bag: error: {bag}: {report.error}", file=sys.stderr, flush=True)
        print(format_report(report, engine.class_names), flush=True)
        if options.plot is not None and report.frames:
            try:
                options.plot.parent.mkdir(parents=True, exist_ok=True)
                plot_coverage(report, options.plot, engine.class_names, palette)
                print(f"  coverage plot: {options.plot}", flush=True)
            except OSError as error:  # disk full: the bag itself is done, say so and go on
                print(f"tv3s-bag: warning: cannot write the plot {options.plot}: {error}",
                      file=sys.stderr, flush=True)
    try:
        _print_totals(args, engine, reports, len(bags))
    except OSError as error:  # --summary-json on a full disk
        print(f"tv3s-bag: error: cannot write the summary {args.summary_json}: {error}",
              file=sys.stderr)
        return stop.exit_status() if stop.signal_name else EXIT_SOME_FAILED
    if stop.signal_name:
        print(f"tv3s-bag: stopped by {stop.signal_name}", file=sys.stderr)
        return stop.exit_status()
    return EXIT_SOME_FAILED if any(r.status != "complete" for r in reports) else EXIT_OK


def _print_totals(args: argparse.Namespace, engine, reports: list, planned: int) -> None:
    """The run's throughput line and, with --summary-json, the JSON summary."""
    frames = sum(r.frames for r in reports)
    failed = [r for r in reports if r.status == "failed"]
    stopped = [r for r in reports if r.status == "interrupted"]
    if failed or stopped or len(reports) < planned:
        done = sum(r.status == "complete" for r in reports)
        print(f"Bags: {done} done, "
              f"{len(failed)} failed, {len(stopped)} interrupted, "
              f"{planned - len(reports)} not started", flush=True)
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
            "bags_planned": planned,
            "frames": frames, "fps": fps, "engine_fps": engine_fps}
        tmp = args.summary_json.with_name(args.summary_json.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.summary_json)  # never a half-written summary


if __name__ == "__main__":
    sys.exit(main())
