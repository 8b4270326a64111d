"""``/diagnostics`` for tv3s_node: per-camera health and node-level model information.

:class:`CameraHealth` collects what only the ROS layer sees (messages received and rejected,
receipt-to-publication latency, model time); the engine's
:class:`~tv3s_ros.streams.StreamStats` adds processed and skipped frames and resets by
reason. :class:`DiagnosticsReporter` turns both into ``diagnostic_msgs/DiagnosticStatus``
entries, one per camera plus one for the node, with rates over the last period.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from tv3s_ros.streams import ResetReason

__all__ = ["CameraHealth", "CameraSnapshot", "DiagnosticsReporter", "HealthLimits", "clip_text",
           "process_rss_mb", "MAX_TEXT", "STAGES"]

# Latency stages of a frame, in order (docs/node.md, "Diagnostics"): queue (receipt until the
# worker takes the frame), decode (deserialize + decode), upload_preprocess, model, postprocess
# (the engine's, see tv3s_ros/engine/timing.py) and publish (messages built and published).
STAGES = ("queue", "decode", "upload_preprocess", "model", "postprocess", "publish")

# A camera silent for this long is reported as a warning (a dead driver, a wrong topic).
_SILENT_WARN_S = 5.0
# Skip ratio and reset storms are judged over this span of the recent past.
_WINDOW_S = 5.0
_MIN_FRAMES_SKIP = 10     # frames (processed + skipped) in the window before a skip ratio counts
_MIN_FRAMES_STORM = 4     # processed frames in the window before a reset storm counts
_STORM_SHARE = 0.5        # share of processed frames that reset for unexpected reasons
# Resets that are no sign of trouble: the first frame, and the periodic reset asked for.
# Longest text of one diagnostics value or log detail: a 1 MB encoding string or frame_id in a
# message must not become a 1 MB /diagnostics message.
MAX_TEXT = 300


def clip_text(text, limit: int = MAX_TEXT) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was (idempotent)."""
    text = str(text)
    if len(text) <= limit:
        return text
    suffix = f"... ({len(text)} characters)"
    return text[:max(0, limit - len(suffix))] + suffix


@dataclass(frozen=True)
class HealthLimits:
    """When a camera's status is raised (see :class:`DiagnosticsReporter`)."""

    stall_error_s: float = 5.0      # input flows, nothing published for this long: ERROR
    skip_warn_ratio: float = 0.8    # skipped / (skipped + processed) over the window above this: WARN
    max_stamp_age_s: float = 0.0    # a frame published with an older header stamp: WARN (0: never)


@dataclass
class CameraSnapshot:
    """Copy of a camera's :class:`CameraHealth` counters at one instant."""

    received: int = 0
    published: int = 0
    rejected: Dict[str, int] = field(default_factory=dict)
    last_rejection: str = ""
    errors: int = 0
    last_error: str = ""
    first_received_s: Optional[float] = None
    last_received_s: Optional[float] = None
    last_published_s: Optional[float] = None
    latency_s: Tuple[float, ...] = ()
    model_time_s: Tuple[float, ...] = ()
    stage_s: Dict[str, Tuple[float, ...]] = field(default_factory=dict)
    stamp_age_s: Tuple[float, ...] = ()
    stamp_age_over: int = 0               # frames published with a stamp older than max_stamp_age_s
    last_stamp_age_over_s: float = 0.0    # the age of the last of them

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class CameraHealth:
    """The node-side health counters of one camera (received, rejected, published, errors,
    latency), updated from the subscription callback and the worker."""

    def __init__(self, name: str, topic: str, msg_type: str, window: int = 256):
        self.name, self.topic, self.msg_type = name, topic, msg_type
        self._lock = threading.Lock()
        self._snap = CameraSnapshot()
        self._rejected: Counter = Counter()
        self._latency: deque = deque(maxlen=window)     # recent frames only: p50/p95 of "now"
        self._model_time: deque = deque(maxlen=window)
        self._window = window
        self._stages: Dict[str, deque] = {}
        self._stamp_age: deque = deque(maxlen=window)

    def note_received(self, now_s: float) -> None:
        with self._lock:
            self._snap.received += 1
            self._snap.last_received_s = now_s
            if self._snap.first_received_s is None:
                self._snap.first_received_s = now_s

    def note_rejected(self, reason: str, detail: str) -> None:
        with self._lock:
            self._rejected[reason] += 1
            self._snap.last_rejection = clip_text(detail)

    def note_published(self, latency_s: float, model_time_s: float, now_s: Optional[float] = None,
                       stages: Optional[Mapping[str, float]] = None, stamp_age_s: Optional[float] = None,
                       stamp_age_over: bool = False) -> None:
        with self._lock:
            self._snap.published += 1
            self._snap.last_published_s = time.monotonic() if now_s is None else now_s
            self._latency.append(float(latency_s))
            self._model_time.append(float(model_time_s))
            for name, seconds in (stages or {}).items():
                self._stages.setdefault(name, deque(maxlen=self._window)).append(float(seconds))
            if stamp_age_s is not None:
                self._stamp_age.append(float(stamp_age_s))
                if stamp_age_over:
                    self._snap.stamp_age_over += 1
                    self._snap.last_stamp_age_over_s = float(stamp_age_s)

    def note_error(self, detail: str) -> None:
        with self._lock:
            self._snap.errors += 1
            self._snap.last_error = clip_text(detail)

    def snapshot(self) -> CameraSnapshot:
        with self._lock:
            s = self._snap
            return CameraSnapshot(
                received=s.received, published=s.published, rejected=dict(self._rejected),
                last_rejection=s.last_rejection, errors=s.errors, last_error=s.last_error,
                first_received_s=s.first_received_s, last_received_s=s.last_received_s,
                last_published_s=s.last_published_s, latency_s=tuple(self._latency),
                model_time_s=tuple(self._model_time),
                stage_s={name: tuple(values) for name, values in self._stages.items()},
                stamp_age_s=tuple(self._stamp_age), stamp_age_over=s.stamp_age_over,
                last_stamp_age_over_s=s.last_stamp_age_over_s)


def process_rss_mb() -> float:
    """Resident memory of this process in MiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    import resource

    return pages * resource.getpagesize() / 2**20


def _ms(values: Sequence[float], q: float) -> str:
    return f"{1000.0 * float(np.percentile(values, q)):.1f}" if values else "nan"


def _kv(key: str, value) -> KeyValue:
    return KeyValue(key=key, value=clip_text(value))


class DiagnosticsReporter:
    """Builds the statuses of one ``/diagnostics`` message.

    Camera levels, worst first (the message names every problem found, worst first):

    - ERROR: a model error in the last period; or input flows (a message within
      ``stall_error_s``) but no frame of the camera was published for ``stall_error_s``
      (processing stuck, far too slow, or every message rejected).
    - WARN: rejected messages in the last period; no input for 5 s; more than
      ``skip_warn_ratio`` of the frames of the last 5 s skipped; a reset storm (at least half
      of the frames processed in the last 5 s reset for a reason other than ``first_frame``
      and ``max_state_frames``: size or frame_id changing every frame, say).
    - STALE: no message received yet.

    Args:
        node_name: prefix of every status name (``<node>: camera front``, ``<node>: model``).
        hardware_id: the device the model runs on (``cpu``, ``cuda:0 (NVIDIA H100)``...).
        node_values: node-level key/value pairs (device, precision, preset, weights, ...).
        node_warning: when set, the node status is a WARN with this message (random weights).
        dynamic_values: called at every build for node-level values that can change while
            the node runs (the graphs mode falls back to off when a capture fails).
        limits: the thresholds above.
    """

    def __init__(self, node_name: str, hardware_id: str, node_values: Sequence[Tuple[str, str]],
                 node_warning: Optional[str] = None,
                 dynamic_values: Optional[Callable[[], Sequence[Tuple[str, str]]]] = None,
                 limits: Optional[HealthLimits] = None):
        self.node_name = node_name
        self.hardware_id = hardware_id
        self.node_values = list(node_values)
        self.node_warning = node_warning
        self.dynamic_values = dynamic_values
        self.limits = limits or HealthLimits()
        self._previous: Dict[str, Tuple[float, int, int, int, int]] = {}
        # Per camera: (time, processed, skipped, resets by reason) samples of the last _WINDOW_S.
        self._history: Dict[str, deque] = {}
        self._started = time.monotonic()
        self._non_finite_seen: Dict[str, int] = {}
        self._stamp_age_over_seen: Dict[str, int] = {}

    def build(self, cameras: Sequence[CameraHealth], streams: Mapping[str, object],
              now_s: Optional[float] = None) -> List[DiagnosticStatus]:
        """One status for the node, then one per camera (``streams``: engine StreamStats by camera)."""
        now_s = time.monotonic() if now_s is None else now_s
        # Engine.stats() also carries which backend serves the scan kernels (and any fallback).
        statuses = [self._node_status(getattr(streams, "backends", {}))]
        statuses += [self._camera_status(cam, cam.snapshot(), streams.get(cam.name), now_s) for cam in cameras]
        return statuses

    def _node_status(self, backends: Mapping[str, str]) -> DiagnosticStatus:
        status = DiagnosticStatus(name=f"{self.node_name}: model", hardware_id=self.hardware_id)
        fallbacks = [f"{key.split('.', 1)[1]}: {value}" for key, value in backends.items()
                     if key.startswith("scan_fallback.")]
        if self.node_warning:
            status.level, status.message = DiagnosticStatus.WARN, self.node_warning
        elif fallbacks:
            # Still serving, slower: a kernel variant failed and the fallback backend took over.
            status.level, status.message = DiagnosticStatus.WARN, "scan kernel fallback: " + "; ".join(fallbacks)
        else:
            status.level, status.message = DiagnosticStatus.OK, "model loaded"
        values = list(self.node_values)
        if self.dynamic_values is not None:
            values += list(self.dynamic_values())
        status.values = [_kv(k, v) for k, v in values]
        status.values += [_kv(k, v) for k, v in backends.items()]
        status.values.append(_kv("rss_mb", f"{process_rss_mb():.1f}"))
        status.values.append(_kv("uptime_s", f"{time.monotonic() - self._started:.1f}"))
        return status

    def _window(self, camera: str, now_s: float, processed: int, skipped: int,
                resets: Dict[str, int]) -> Tuple[int, int, Dict[str, int]]:
        """Processed, skipped and resets by reason over (about) the last _WINDOW_S."""
        history = self._history.setdefault(camera, deque([(self._started, 0, 0, {})]))
        history.append((now_s, processed, skipped, dict(resets)))
        # Keep one sample at least _WINDOW_S old as the base of the differences.
        while len(history) > 2 and now_s - history[1][0] >= _WINDOW_S:
            history.popleft()
        _, base_proc, base_skip, base_resets = history[0]
        d_resets = {r: n - base_resets.get(r, 0) for r, n in resets.items() if n - base_resets.get(r, 0) > 0}
        return processed - base_proc, skipped - base_skip, d_resets

    def _camera_status(self, cam: CameraHealth, snap: CameraSnapshot, stream,
                       now_s: float) -> DiagnosticStatus:
        processed = int(getattr(stream, "processed", 0) or 0)
        skipped = int(getattr(stream, "skipped", 0) or 0)
        resets: Dict[str, int] = dict(getattr(stream, "resets", {}) or {})
        rejected = snap.rejected_total
        limits = self.limits

        prev = self._previous.get(cam.name)
        self._previous[cam.name] = (now_s, snap.received, processed, rejected, snap.errors)
        if prev is None:
            elapsed = now_s - self._started
            d_recv, d_proc, d_rej, d_err = snap.received, processed, rejected, snap.errors
        else:
            elapsed = now_s - prev[0]
            d_recv, d_proc = snap.received - prev[1], processed - prev[2]
            d_rej, d_err = rejected - prev[3], snap.errors - prev[4]
        elapsed = max(elapsed, 1e-6)
        input_hz, processed_hz = d_recv / elapsed, d_proc / elapsed
        w_proc, w_skip, w_resets = self._window(cam.name, now_s, processed, skipped, resets)
        skip_ratio = w_skip / (w_skip + w_proc) if w_skip + w_proc else 0.0
        storm = {r: n for r, n in w_resets.items() if not ResetReason(r).routine}

        silent_s = None if snap.last_received_s is None else now_s - snap.last_received_s
        # Since the last publication, or since the first message when nothing was published yet.
        since_published = snap.last_published_s if snap.last_published_s is not None else snap.first_received_s
        unserved_s = None if since_published is None else max(0.0, now_s - since_published)

        errors: List[str] = []
        warnings: List[str] = []
        if d_err:
            errors.append(f"model error: {snap.last_error}")
        if silent_s is not None and silent_s <= limits.stall_error_s and \
                unserved_s is not None and unserved_s >= limits.stall_error_s:
            what = "no frame processed" if snap.last_published_s is None else "nothing processed"
            text = f"{what} for {unserved_s:.1f} s while input flows"
            if snap.last_error:
                text += f" (last model error: {snap.last_error})"
            elif snap.rejected_total:
                text += f" (last rejection: {snap.last_rejection})"
            errors.append(text)
        new_non_finite = self._new_non_finite(cam.name, stream)
        if new_non_finite:
            warnings.append(f"non-finite state (NaN/Inf) in {new_non_finite} frame(s); the camera was reset")
        if d_rej:
            warnings.append(f"rejected {d_rej} message(s): {snap.last_rejection}")
        new_old = snap.stamp_age_over - self._stamp_age_over_seen.get(cam.name, 0)
        self._stamp_age_over_seen[cam.name] = snap.stamp_age_over
        if new_old > 0 and limits.max_stamp_age_s > 0:
            warnings.append(f"{new_old} frame(s) published with a header stamp older than max_stamp_age_s "
                            f"{limits.max_stamp_age_s:g} s (last {snap.last_stamp_age_over_s:.3f} s): slow "
                            "transport or queueing, or the camera stamps with another clock")
        if silent_s is not None and silent_s > _SILENT_WARN_S:
            warnings.append(f"no input for {silent_s:.0f} s")
        if w_skip + w_proc >= _MIN_FRAMES_SKIP and skip_ratio > limits.skip_warn_ratio:
            warnings.append(f"skipping {100 * skip_ratio:.0f}% of frames (the model is slower than the camera)")
        if w_proc >= _MIN_FRAMES_STORM and sum(storm.values()) >= _STORM_SHARE * w_proc:
            reasons = ", ".join(f"{r} x{n}" for r, n in sorted(storm.items()))
            warnings.append(f"reset storm: {sum(storm.values())} of {w_proc} frames reset ({reasons})")

        status = DiagnosticStatus(name=f"{self.node_name}: camera {cam.name}", hardware_id=self.hardware_id)
        if errors:
            status.level = DiagnosticStatus.ERROR
        elif warnings:
            status.level = DiagnosticStatus.WARN
        elif snap.received == 0:
            status.level, status.message = DiagnosticStatus.STALE, f"waiting for {cam.topic}"
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"{processed_hz:.1f} Hz processed of {input_hz:.1f} Hz input"
        if errors or warnings:
            status.message = clip_text("; ".join(errors + warnings), 2 * MAX_TEXT)

        values = [
            _kv("topic", cam.topic),
            _kv("message_type", cam.msg_type),
            _kv("input_rate_hz", f"{input_hz:.2f}"),
            _kv("processed_rate_hz", f"{processed_hz:.2f}"),
            _kv("received", snap.received),
            _kv("processed", processed),
            _kv("published", snap.published),
            _kv("skipped", skipped),
            _kv("skip_ratio_5s", f"{skip_ratio:.2f}"),
            _kv("seconds_since_published", "nan" if unserved_s is None else f"{unserved_s:.1f}"),
            _kv("rejected", rejected),
        ]
        values += [_kv(f"rejected.{reason}", n) for reason, n in sorted(snap.rejected.items())]
        if snap.last_rejection:
            values.append(_kv("last_rejection", snap.last_rejection))
        values.append(_kv("resets", sum(resets.values())))
        values += [_kv(f"resets.{reason}", n) for reason, n in resets.items()]
        values.append(_kv("unexpected_resets_5s", sum(storm.values())))
        values += [
            _kv("frames_since_reset", getattr(stream, "frames_since_reset", 0) if stream else 0),
            _kv("latency_p50_ms", _ms(snap.latency_s, 50)),
            _kv("latency_p95_ms", _ms(snap.latency_s, 95)),
            _kv("model_time_p50_ms", _ms(snap.model_time_s, 50)),
            _kv("model_time_p95_ms", _ms(snap.model_time_s, 95)),
        ]
        for stage in STAGES:
            samples = snap.stage_s.get(stage, ())
            values += [_kv(f"stage_{stage}_p50_ms", _ms(samples, 50)), _kv(f"stage_{stage}_p95_ms", _ms(samples, 95))]
        values += [
            _kv("stamp_age_p50_ms", _ms(snap.stamp_age_s, 50)),
            _kv("stamp_age_p95_ms", _ms(snap.stamp_age_s, 95)),
            _kv("stamp_age_over_max", snap.stamp_age_over),
            _kv("errors", snap.errors),
            _kv("non_finite", int(getattr(stream, "non_finite", 0) or 0)),
        ]
        if snap.last_error:
            values.append(_kv("last_error", snap.last_error))
        if stream is not None and getattr(stream, "width", None):
            values.append(_kv("image_size", f"{stream.width}x{stream.height}"))
            values.append(_kv("frame_id", stream.frame_id))
        status.values = values
        return status

    def _new_non_finite(self, name: str, stream) -> int:
        """Frames of the camera whose state went NaN/Inf since the last report (each was reset)."""
        total = int(getattr(stream, "non_finite", 0) or 0)
        new = total - self._non_finite_seen.get(name, 0)
        self._non_finite_seen[name] = total
        return max(new, 0)
