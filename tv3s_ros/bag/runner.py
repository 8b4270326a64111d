"""One bag through the shared ``Engine``: every frame, in recording order, one state per camera.

The engine (the node's own) decides resets with the node's ``StreamManager`` policy and
does all pre- and post-processing; this module only feeds it decoded frames and writes its
results. Frames are handed over in small batches holding at most one frame per camera, so
cameras of equal size share a forward pass while each camera still sees its own frames in
order and none is dropped.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from tv3s_ros.bag.source import (
    BagInputError,
    BagSource,
    CorruptMessage,
    DecodedImage,
    decode_image,
)
from tv3s_ros.bag.summary import BagReport, CameraBagStats
from tv3s_ros.bag.writer import (
    OutputBag,
    OutputWriteError,
    begin_output,
    discard_output,
    finish_output,
)

# Times at or after this (2001-09-09 UTC) are absolute UNIX times, earlier ones offsets
# from the bag start: no real recording starts before 2001, no drive lasts 31 years.
ABSOLUTE_TIME_S = 1e9


@dataclass
class RunOptions:
    """What to process and write, shared by every bag of a run."""

    topics: Optional[Sequence[str]] = None       # None/empty: all image topics
    camera_names: Optional[Sequence[str]] = None  # same length as topics, else derived
    start_s: Optional[float] = None              # offset from bag start, or absolute (>= 1e9)
    end_s: Optional[float] = None
    every_n: int = 1
    # Cameras whose 16-bit images are real camera images; any other refuses 16-bit/float data
    # (a depth topic among the cameras), as the node's allow_16bit_cameras.
    allow_16bit_cameras: Sequence[str] = ()
    outputs: Sequence[str] = ("labels", "color", "overlay")  # coverage is always written
    copy_input: bool = False
    storage: str = "mcap"
    overwrite: bool = False
    plot: Optional[Path] = None
    progress: bool = True
    custom_data: dict = field(default_factory=dict)
    # Polled between messages: a signal name ("SIGINT") once the run should stop, else None.
    should_stop: Callable[[], Optional[str]] = lambda: None
    # One piece of a bag split at reset points (tv3s_ros.bag.split, fleet runs): the bag-time
    # window [start, end) in ns (replaces --start/--end), the reset reason and stamp the
    # sequential run gives each camera's first frame in it (camera -> (reason, stamp_ns)),
    # and the messages per topic before it (keeps --every-n counting as in one pass).
    window_ns: Optional[tuple] = None
    first_frames: dict = field(default_factory=dict)
    seen_offsets: dict = field(default_factory=dict)


# Stage of the BagFailure raised when a bag piece does not start where its split was planned.
SPLIT_CHECK = "split check"


class BagFailure(Exception):
    """One bag cannot be finished: its input is unreadable, its output unwritable or the
    engine failed. The run goes on with the next bag."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of an exception, for the one-line failure reports (terminal
    escapes, which some libraries put in their messages, removed)."""
    text = _ANSI.sub("", str(error)).strip()
    text = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {text}"[:limit] if text else type(error).__name__


@contextlib.contextmanager
def open_source(path: Path):
    """``BagSource`` whose open errors (truncated file, bad header) are a ``BagFailure``."""
    source = BagSource(path)
    try:
        source.__enter__()
    except BagInputError:
        raise
    except Exception as error:
        raise BagFailure("cannot read input", one_line(error)) from error
    try:
        yield source
    finally:
        source.__exit__(None, None, None)


@dataclass
class _BatchedFrame:
    """A decoded frame waiting in the batch for the engine, with what writing its outputs needs."""

    topic: str
    camera: str
    log_ns: int
    image: DecodedImage
    frame: object  # engine.FrameInput


def resolve_time(value_s: Optional[float], bag_start_ns: int) -> Optional[int]:
    """--start/--end seconds -> bag time in ns (offset from the bag start, or absolute)."""
    if value_s is None:
        return None
    if value_s >= ABSOLUTE_TIME_S:
        return int(round(value_s * 1e9))
    if value_s < 0:
        raise BagInputError(f"time {value_s} s is negative; give seconds from the bag start "
                            "or an absolute UNIX time")
    return bag_start_ns + int(round(value_s * 1e9))


def camera_names_for(topics: Sequence[str], names: Optional[Sequence[str]]) -> dict:
    """topic -> camera name by the node's own rule (:mod:`tv3s_ros.camera_names`).

    Two topics giving the same name are an error, as at node start-up.
    """
    from tv3s_ros.camera_names import resolve_camera_names

    try:
        return dict(zip(topics, resolve_camera_names(topics, names)))
    except ValueError as error:
        raise BagInputError(f"{error} (use --camera-names)") from None


def plan_bag(path: Path, options: RunOptions) -> tuple:
    """Open ``path`` once to validate topics and names before any work starts.

    Returns ``(topics, camera names by topic)``; raises ``BagInputError`` with the bag's
    image topics when a requested topic is missing.
    """
    with open_source(path) as source:
        topics = source.select_topics(options.topics)
    return topics, camera_names_for(topics, options.camera_names)


def _estimate_frames(source: BagSource, topics: Sequence[str], start_ns, end_ns,
                     every_n: int) -> int:
    """Frames the progress bar expects: exact without a window, else pro rata in time."""
    counts = source.message_counts()
    total = sum(counts.get(t, 0) for t in topics)
    duration = max(source.end_ns - source.start_ns, 1)
    lo = max(start_ns if start_ns is not None else source.start_ns, source.start_ns)
    hi = min(end_ns if end_ns is not None else source.end_ns, source.end_ns)
    if start_ns is not None or end_ns is not None:
        total = int(total * max(hi - lo, 0) / duration)
    return -(-total // max(every_n, 1))


def process_bag(path: Path, output: Path, engine, class_names: Sequence[str],
                options: RunOptions, progress_factory: Optional[Callable] = None) -> BagReport:
    """Run every chosen frame of one bag through ``engine`` and write the output bag.

    The engine's per-camera states are cleared first: state never crosses bags. The bag is
    written in a staging folder and moved to ``output`` only when complete. A failure of
    this bag (unreadable input, unwritable output, engine error) or a stop request
    (``options.should_stop``) ends it with ``report.status`` set; only option errors
    (``BagInputError``, ``OutputExistsError``) raise.
    """
    for camera in list(engine.stats()):
        engine.forget(camera)  # a new bag is a new recording: its first frames are first_frame
    started = time.perf_counter()
    report = BagReport(str(path), str(output))
    bar = None
    try:
        with open_source(path) as source:
            topics = source.select_topics(options.topics)
            cameras = camera_names_for(topics, options.camera_names)
            start_ns = resolve_time(options.start_s, source.start_ns)
            end_ns = resolve_time(options.end_s, source.start_ns)
            if options.window_ns is not None:
                start_ns, end_ns = options.window_ns
            if start_ns is not None and end_ns is not None and end_ns <= start_ns:
                raise BagInputError(
                    f"--end ({options.end_s}) is not after --start ({options.start_s})")
            report.duration_s = max(source.end_ns - source.start_ns, 0) / 1e9
            expected = _estimate_frames(source, topics, start_ns, end_ns, options.every_n)
            bar = (progress_factory or NoProgress)(total=expected, desc=path.name)
            _write_bag(source, output, topics, cameras, start_ns, end_ns, engine, class_names,
                       options, report, bar)
    except BagFailure as failure:
        report.fail(str(failure))
    finally:
        if bar is not None:
            bar.close()
        report.wall_s = time.perf_counter() - started
    return report


def _write_bag(source, output, topics, cameras, start_ns, end_ns, engine, class_names,
               options, report, bar) -> None:
    try:
        bag_path = begin_output(output, options.overwrite)
    except OSError as error:
        raise BagFailure("cannot create output", one_line(error)) from error
    try:
        with OutputBag(bag_path, options.storage, options.custom_data) as out:
            run = _BagRun(source, out, engine, class_names, options, cameras, report, bar)
            try:
                run.run(topics, start_ns, end_ns)
            except BagFailure as failure:
                report.fail(str(failure))
            except KeyboardInterrupt:
                # A second Ctrl-C: stop at once, but still close the bag (in __exit__).
                report.status = "interrupted"
                out.set_status(report.incomplete_status())
                raise
            if report.status == "complete":
                bar.total = bar.n  # the estimate is exact only without --start/--end
                bar.refresh()
            out.set_status("complete" if report.status == "complete"
                           else report.incomplete_status())
    except (OutputWriteError, OSError) as error:
        # Whatever reached the disk may end inside a record: not worth keeping, and the
        # space is better freed for the next bag. (OSError: opening the bag file failed.)
        discard_output(output)
        message = str(error) if isinstance(error, OutputWriteError) else \
            f"cannot create the output bag: {one_line(error)}"
        report.fail(f"{message}; the partial output was removed")
        return
    except BaseException:
        report.partial_output = str(bag_path)
        raise
    if report.status != "complete":
        report.partial_output = str(bag_path)
        return
    try:
        finish_output(output, options.overwrite)
    except OSError as error:
        report.partial_output = str(bag_path)
        report.fail(f"cannot move the finished bag into place: {one_line(error)}")


class _BagRun:
    """The per-message work of one bag: copy, every-n, decode, batch, run, write, count."""

    def __init__(self, source: BagSource, out: OutputBag, engine, class_names, options: RunOptions,
                 cameras: dict, report: BagReport, bar):
        from tv3s_ros.engine import FrameInput

        self.source, self.out, self.engine, self.bar = source, out, engine, bar
        self.class_names, self.options, self.cameras, self.report = class_names, options, cameras, report
        self.frame_input = FrameInput
        self.engine_outputs = list(options.outputs) + ["coverage"]
        self.keep_series = options.plot is not None
        # messages per topic so far (for --every-n); a bag piece continues the whole bag's count
        self.seen = {t: int(options.seen_offsets.get(t, 0)) for t in cameras}
        self.first_pending = dict(options.first_frames)  # piece cameras not yet seen
        self.pending: list = []                 # at most one frame per camera
        for topic, camera in cameras.items():
            report.cameras[camera] = CameraBagStats(topic)

    def run(self, topics, start_ns, end_ns) -> None:
        """Every message of ``topics`` in the window, until the end or a stop request."""
        messages = iter(self.source.messages(topics, start_ns, end_ns))
        while True:
            signal_name = self.options.should_stop()
            if signal_name:
                self.flush()  # frames already decoded still go out
                self.report.status = "interrupted"
                self.report.stopped_by = signal_name
                return
            try:
                message = next(messages)
            except StopIteration:
                break
            except Exception as error:  # chunk checksum mismatch, truncated file, I/O error
                self.flush()
                raise BagFailure("input read error", one_line(error)) from error
            self.report.last_log_ns = message.log_ns - self.source.start_ns
            self.handle(message)
        self.flush()

    def handle(self, message) -> None:
        """One recorded message of a chosen topic."""
        report, options, source = self.report, self.options, self.source
        report.messages_read += 1
        take = self.seen[message.topic] % options.every_n == 0
        self.seen[message.topic] += 1
        # rosbag2 input is ROS 2 CDR already: copy the bytes as recorded, even if corrupt.
        if options.copy_input and not source.is_ros1:
            self.out.copy_raw(message.topic, message.msgtype, message.log_ns, message.raw)
        ros1_copy = options.copy_input and source.is_ros1
        if not take and not ros1_copy:
            report.frames_skipped_every_n += 1
            return
        msg = source.deserialize(message)
        if isinstance(msg, CorruptMessage):
            self._corrupt(message.topic, msg)
            return
        if ros1_copy:  # ROS 1 input: re-encoded as the ROS 2 message
            self.out.copy_ros1_image(message.topic, message.msgtype, message.log_ns, msg)
        if not take:
            report.frames_skipped_every_n += 1
            return
        camera = self.cameras[message.topic]
        decoded = decode_image(msg, message.msgtype, getattr(self.engine, "decoder", None),
                               allow_16bit=camera in options.allow_16bit_cameras)
        if isinstance(decoded, CorruptMessage):
            self._corrupt(message.topic, decoded)
            return
        if any(p.camera == camera for p in self.pending):
            self.flush()  # this camera's previous frame must go first
        frame = self.frame_input(camera=camera, image=decoded.image, stamp_ns=decoded.stamp_ns,
                                 frame_id=decoded.frame_id, received_s=time.monotonic())
        self.pending.append(_BatchedFrame(message.topic, camera, message.log_ns, decoded, frame))

    def _corrupt(self, topic: str, problem: CorruptMessage) -> None:
        # Skipped without touching the state: the camera's next good frame continues it
        # (or resets it, if the stamps say so).
        self.report.add_corrupt(topic, problem.kind, problem.detail)
        self.bar.update(1)  # handled: the bar counts every frame it expects

    def _piece_first_frame(self, item, result) -> None:
        """A bag piece starts with a fresh state (``first_frame``); the sequential run reset
        at the same frame for another reason, which the output must carry. The split was
        planned from headers only: a frame other than the planned one (e.g. the planned one
        turned out undecodable) means the piece cannot be trusted, so it fails and the
        fleet runs the whole bag in one piece."""
        reason, stamp = self.first_pending.pop(item.camera)
        if result.reset_reason != "first_frame" or item.image.stamp_ns != stamp:
            raise BagFailure(SPLIT_CHECK, f"camera {item.camera}: first frame of the piece "
                                          f"has stamp {item.image.stamp_ns}, planned {stamp}")
        result.reset_reason = reason

    def flush(self) -> None:
        """Run the pending frames (one per camera) and write their results in input order."""
        if not self.pending:
            return
        t0 = time.perf_counter()
        try:
            results = self.engine.process([p.frame for p in self.pending], self.engine_outputs)
        except Exception as error:  # e.g. a CUDA error: this bag ends, the run goes on
            self.pending.clear()
            raise BagFailure("engine error", one_line(error)) from error
        self.report.engine_s += time.perf_counter() - t0
        by_camera = {r.camera: r for r in results}
        if len(results) != len(self.pending) or set(by_camera) != {p.camera for p in self.pending}:
            # Offline mode promises one output per input frame; never drop silently.
            raise BagFailure("engine error", f"engine returned {len(results)} results for "
                                             f"{len(self.pending)} frames")
        start_ns = self.source.start_ns
        for item in self.pending:
            result = by_camera[item.camera]
            image = item.image
            if item.camera in self.first_pending:
                self._piece_first_frame(item, result)
            header = self.out.header(image.stamp_sec, image.stamp_nanosec, image.frame_id)
            self.out.write_frame(item.camera, item.log_ns, header, result, self.class_names,
                                 self.options.outputs)
            self.report.cameras[item.camera].add(
                int(result.num_classes), _host(result.class_ids), _host(result.fraction),
                result.reset_reason or "", (item.log_ns - start_ns) / 1e9, self.keep_series)
        self.bar.update(len(self.pending))
        cameras = self.report.cameras.values()
        self.bar.set_postfix(resets=sum(sum(c.resets.values()) for c in cameras),
                             corrupt=sum(self.report.corrupt.values()), refresh=False)
        self.pending.clear()


def _host(value):
    """Coverage tables may come back as tensors; the statistics want numpy."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


class NoProgress:
    """Stand-in for tqdm when no progress bar is wanted (the runner's progress protocol)."""

    def __init__(self, total=None, desc=None):
        self.total = total
        self.n = 0

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **kwargs):
        pass

    def refresh(self):
        pass

    def close(self):
        pass


def tqdm_progress(total: int, desc: str):
    """A tqdm bar per bag: frames done, frames per second and ETA, on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, mininterval=0.5)
