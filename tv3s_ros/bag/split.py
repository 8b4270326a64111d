"""Split a long bag at points where every camera's state resets anyway, and merge the pieces.

A fleet run (:mod:`tv3s_ros.tools.fleet`) may process pieces of one bag on different workers.
That keeps results identical to one sequential pass only where nothing is carried across the
cut: at a bag time where, for every camera seen before it, the first processed frame after
it resets the state in the sequential run too (gap above max_gap_s, stamp backwards, size
or frame_id change, max_state_frames). Those points are found by running the engine's own
reset policy (``StreamManager``) over the headers and image sizes alone, without decoding
or running the model. Each piece then says which reason and stamp its cameras' first frames
have (the runner checks and writes them), and how many messages per topic came before it
(so --every-n counts as in one pass). The piece bags are merged in time order into one.
"""
from __future__ import annotations

import bisect
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

from tv3s_ros.bag.source import BagSource, CorruptMessage
from tv3s_ros.bag.summary import BagReport, CameraBagStats
from tv3s_ros.bag.typestore import IMAGE
from tv3s_ros.bag.writer import BAG_VERSION, STORAGES

PIECES_SUFFIX = ".tv3s-pieces"
PIECES_MARKER = "TV3S_PIECES.txt"


@dataclass
class Piece:
    """One part of a bag: bag times [start_ns, end_ns) (None: the bag's start or end)."""

    index: int
    start_ns: Optional[int]
    end_ns: Optional[int]
    frames: int
    first_frames: dict = field(default_factory=dict)   # camera -> (reason, stamp_ns)
    seen_offsets: dict = field(default_factory=dict)   # topic -> messages before start_ns

    @property
    def window_ns(self) -> tuple:
        return (self.start_ns, self.end_ns)


def pieces_dir(target: Path) -> Path:
    """``out/a`` -> ``out/a.tv3s-pieces``: where the pieces of ``out/a`` are written."""
    return target.with_name(target.name + PIECES_SUFFIX)


def piece_path(target: Path, piece: Piece) -> Path:
    # The window is in the name: pieces of an earlier run with other split points are
    # never mistaken for this run's (a rerun resumes only matching complete pieces).
    return pieces_dir(target) / f"part_{piece.index:03d}_{piece.start_ns or 0}_{piece.end_ns or 0}"


def _image_size(msg, msgtype: str) -> Optional[tuple]:
    """(height, width) from the message alone: Image fields, or the compressed header."""
    if msgtype == IMAGE:
        return int(msg.height), int(msg.width)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(msg.data))) as image:  # reads the header only
            width, height = image.size
    except Exception:  # noqa: BLE001 - undecodable: the runner skips it as corrupt
        return None
    return height, width


def scan_frames(bag: Path, topics: Optional[Sequence[str]], camera_names, every_n: int,
                max_gap_s: float, max_state_frames: int) -> tuple:
    """The frames one sequential pass processes, with the reset reason each gets.

    Returns ``(frames, counts)``: frames as ``(log_ns, camera, reason, stamp_ns)`` in
    recording order, and per topic the log times of all its messages (for --every-n).
    """
    from tv3s_ros.bag.runner import camera_names_for
    from tv3s_ros.streams import ResetPolicy, StreamManager

    streams = StreamManager(ResetPolicy(max_gap_s=max_gap_s, max_state_frames=max_state_frames))
    frames, log_times = [], {}
    with BagSource(bag) as source:
        chosen = source.select_topics(topics)
        cameras = camera_names_for(chosen, camera_names)
        seen = dict.fromkeys(chosen, 0)
        for message in source.messages(chosen):
            log_times.setdefault(message.topic, []).append(message.log_ns)
            take = seen[message.topic] % every_n == 0
            seen[message.topic] += 1
            if not take:
                continue
            msg = source.deserialize(message)
            if isinstance(msg, CorruptMessage):
                continue
            size = _image_size(msg, message.msgtype)
            if size is None:
                continue
            stamp = msg.header.stamp
            stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
            camera = cameras[message.topic]
            reason = streams.observe(camera, stamp_ns, size[0], size[1], str(msg.header.frame_id))
            frames.append((message.log_ns, camera, reason, stamp_ns))
    return frames, log_times


def split_points(frames: list) -> list:
    """Indices into ``frames`` where a cut carries no state: every camera with frames on
    both sides resets at its first frame after the cut, and no earlier frame shares its
    bag time (the cut is a bag time)."""
    by_camera: dict = {}
    for i, (_, camera, _, _) in enumerate(frames):
        by_camera.setdefault(camera, []).append(i)
    points = []
    for i in range(1, len(frames)):
        if not frames[i][2] or frames[i - 1][0] >= frames[i][0]:
            continue
        ok = True
        for indices in by_camera.values():
            k = bisect.bisect_left(indices, i)
            if 0 < k < len(indices) and not frames[indices[k]][2]:
                ok = False
                break
        if ok:
            points.append(i)
    return points


def plan_pieces(frames: list, log_times: dict, min_frames: int) -> list:
    """Cut at split points into pieces of at least ``min_frames`` frames (the last may be
    shorter); one piece when the bag has no more than ``min_frames`` frames."""
    if min_frames <= 0 or len(frames) <= min_frames:
        return [Piece(0, None, None, len(frames))]
    cuts, start = [], 0
    for i in split_points(frames):
        if i - start >= min_frames and len(frames) - i >= 1:
            cuts.append(i)
            start = i
    bounds = [0] + cuts + [len(frames)]
    pieces = []
    for index, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        start_ns = frames[lo][0] if lo else None
        end_ns = frames[hi][0] if hi < len(frames) else None
        first = {}
        for log_ns, camera, reason, stamp_ns in frames[lo:hi]:
            first.setdefault(camera, (reason, stamp_ns))
        offsets = {topic: bisect.bisect_left(times, start_ns) if start_ns else 0
                   for topic, times in log_times.items()}
        pieces.append(Piece(index, start_ns, end_ns, hi - lo, first, offsets))
    return pieces


# ---------------------------------------------------------------------------------- merge
def _custom_data(bag: Path) -> dict:
    meta = yaml.safe_load((bag / "metadata.yaml").read_text(encoding="utf-8"))
    return dict(meta["rosbag2_bagfile_information"].get("custom_data") or {})


def is_complete_bag(bag: Path) -> bool:
    """A finished tv3s-bag output: a rosbag2 directory whose metadata says complete."""
    try:
        return _custom_data(bag).get("tv3s.status") == "complete"
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return False


def merge_pieces(parts: Sequence[Path], target: Path, storage: str, overwrite: bool,
                 extra_custom: Optional[dict] = None) -> None:
    """Write the complete piece bags ``parts`` (in time order) as one bag at ``target``,
    staged and moved into place like any output, then remove the pieces."""
    from rosbags.rosbag2 import Reader, Writer

    from tv3s_ros.bag.writer import begin_output, finish_output

    bag_path = begin_output(target, overwrite)
    custom = _custom_data(parts[0])
    custom.pop("tv3s.piece", None)
    custom.update({k: str(v) for k, v in (extra_custom or {}).items()})
    writer = Writer(bag_path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
    for key, value in custom.items():
        writer.set_custom_data(str(key), str(value))
    writer.open()
    connections: dict = {}
    try:
        for part in parts:
            with Reader(part) as reader:
                for conn, log_ns, raw in reader.messages():
                    key = (conn.topic, conn.msgtype)
                    if key not in connections:
                        connections[key] = writer.add_connection(
                            conn.topic, conn.msgtype, msgdef=conn.msgdef.data,
                            rihs01=conn.digest,
                            serialization_format=conn.ext.serialization_format)
                    writer.write(connections[key], log_ns, raw)
    finally:
        writer.close()
    finish_output(target, overwrite)
    shutil.rmtree(pieces_dir(target), ignore_errors=True)


def merge_reports(reports: Sequence[BagReport], input_path: str, output_path: str) -> BagReport:
    """One bag's report from its pieces' (counts summed, coverage sums added)."""
    merged = BagReport(input_path, output_path)
    for report in reports:
        for name, stats in report.cameras.items():
            into = merged.cameras.setdefault(name, CameraBagStats(stats.topic))
            into.frames += stats.frames
            into.resets.update(stats.resets)
            if stats.coverage_sum is not None:
                if into.coverage_sum is None:
                    into.coverage_sum = stats.coverage_sum.copy()
                else:
                    into.coverage_sum = into.coverage_sum + stats.coverage_sum
            into.times_s += stats.times_s
            into.fractions += stats.fractions
            into.reset_times_s += stats.reset_times_s
        merged.corrupt.update(report.corrupt)
        for key, detail in report.corrupt_examples.items():
            merged.corrupt_examples.setdefault(key, detail)
        merged.messages_read += report.messages_read
        merged.frames_skipped_every_n += report.frames_skipped_every_n
        merged.wall_s += report.wall_s
        merged.engine_s += report.engine_s
        merged.last_log_ns = max(merged.last_log_ns, report.last_log_ns)
        merged.duration_s = max(merged.duration_s, report.duration_s)
    bad = [r for r in reports if r.status != "complete"]
    if bad:
        merged.status, merged.error = bad[0].status, bad[0].error
        merged.stopped_by = bad[0].stopped_by
    return merged
