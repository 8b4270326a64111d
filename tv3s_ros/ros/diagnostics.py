"""``/diagnostics`` for tv3s_node: per-camera health and node-level model information.

:class:`CameraStats` collects what only the ROS layer sees (messages received and rejected,
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
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

__all__ = ["CameraStats", "CameraSnapshot", "DiagnosticsReporter", "process_rss_mb"]

# A camera silent for this long is reported as a warning (a dead driver, a wrong topic).
_SILENT_WARN_S = 5.0


@dataclass
class CameraSnapshot:
    """Copy of a camera's node-side counters at one instant."""

    received: int = 0
    published: int = 0
    rejected: Dict[str, int] = field(default_factory=dict)
    last_rejection: str = ""
    errors: int = 0
    last_error: str = ""
    last_received_s: Optional[float] = None
    latency_s: Tuple[float, ...] = ()
    model_time_s: Tuple[float, ...] = ()

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class CameraStats:
    """Counters of one camera, updated from the subscription callback and the worker."""

    def __init__(self, name: str, topic: str, msg_type: str, window: int = 256):
        self.name, self.topic, self.msg_type = name, topic, msg_type
        self._lock = threading.Lock()
        self._snap = CameraSnapshot()
        self._rejected: Counter = Counter()
        self._latency: deque = deque(maxlen=window)     # recent frames only: p50/p95 of "now"
        self._model_time: deque = deque(maxlen=window)

    def note_received(self, now_s: float) -> None:
        with self._lock:
            self._snap.received += 1
            self._snap.last_received_s = now_s

    def note_rejected(self, reason: str, detail: str) -> None:
        with self._lock:
            self._rejected[reason] += 1
            self._snap.last_rejection = detail

    def note_published(self, latency_s: float, model_time_s: float) -> None:
        with self._lock:
            self._snap.published += 1
            self._latency.append(float(latency_s))
            self._model_time.append(float(model_time_s))

    def note_error(self, detail: str) -> None:
        with self._lock:
            self._snap.errors += 1
            self._snap.last_error = detail

    def snapshot(self) -> CameraSnapshot:
        with self._lock:
            s = self._snap
            return CameraSnapshot(
                received=s.received, published=s.published, rejected=dict(self._rejected),
                last_rejection=s.last_rejection, errors=s.errors, last_error=s.last_error,
                last_received_s=s.last_received_s, latency_s=tuple(self._latency),
                model_time_s=tuple(self._model_time))


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
    return KeyValue(key=key, value=str(value))


class DiagnosticsReporter:
    """Builds the statuses of one ``/diagnostics`` message.

    Args:
        node_name: prefix of every status name (``<node>: camera front``, ``<node>: model``).
        hardware_id: the device the model runs on (``cpu``, ``cuda:0 (NVIDIA H100)``...).
        node_values: node-level key/value pairs (device, precision, preset, weights, ...).
        node_warning: when set, the node status is a WARN with this message (random weights).
    """

    def __init__(self, node_name: str, hardware_id: str, node_values: Sequence[Tuple[str, str]],
                 node_warning: Optional[str] = None):
        self.node_name = node_name
        self.hardware_id = hardware_id
        self.node_values = list(node_values)
        self.node_warning = node_warning
        self._previous: Dict[str, Tuple[float, int, int, int, int]] = {}
        self._started = time.monotonic()
        self._non_finite_seen: Dict[str, int] = {}

    def build(self, cameras: Sequence[CameraStats], streams: Mapping[str, object],
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
        status.values = [_kv(k, v) for k, v in self.node_values]
        status.values += [_kv(k, v) for k, v in backends.items()]
        status.values.append(_kv("rss_mb", f"{process_rss_mb():.1f}"))
        status.values.append(_kv("uptime_s", f"{time.monotonic() - self._started:.1f}"))
        return status

    def _camera_status(self, cam: CameraStats, snap: CameraSnapshot, stream, now_s: float) -> DiagnosticStatus:
        processed = int(getattr(stream, "processed", 0) or 0)
        skipped = int(getattr(stream, "skipped", 0) or 0)
        resets: Dict[str, int] = dict(getattr(stream, "resets", {}) or {})
        rejected = snap.rejected_total

        prev = self._previous.get(cam.name)
        self._previous[cam.name] = (now_s, snap.received, processed, rejected, snap.errors)
        if prev is None:
            elapsed, d_recv, d_proc, d_rej, d_err = now_s - self._started, snap.received, processed, rejected, snap.errors
        else:
            elapsed = now_s - prev[0]
            d_recv, d_proc = snap.received - prev[1], processed - prev[2]
            d_rej, d_err = rejected - prev[3], snap.errors - prev[4]
        elapsed = max(elapsed, 1e-6)
        input_hz, processed_hz = d_recv / elapsed, d_proc / elapsed

        status = DiagnosticStatus(name=f"{self.node_name}: camera {cam.name}", hardware_id=self.hardware_id)
        silent_s = None if snap.last_received_s is None else now_s - snap.last_received_s
        if d_err:
            status.level, status.message = DiagnosticStatus.ERROR, f"model error: {snap.last_error}"
        elif d_rej:
            status.level = DiagnosticStatus.WARN
            status.message = f"rejected {d_rej} message(s): {snap.last_rejection}"
        elif snap.received == 0:
            status.level, status.message = DiagnosticStatus.STALE, f"waiting for {cam.topic}"
        elif silent_s is not None and silent_s > _SILENT_WARN_S:
            status.level, status.message = DiagnosticStatus.WARN, f"no input for {silent_s:.0f} s"
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"{processed_hz:.1f} Hz processed of {input_hz:.1f} Hz input"

        self._warn_non_finite(cam.name, stream, status)

        values = [
            _kv("topic", cam.topic),
            _kv("message_type", cam.msg_type),
            _kv("input_rate_hz", f"{input_hz:.2f}"),
            _kv("processed_rate_hz", f"{processed_hz:.2f}"),
            _kv("received", snap.received),
            _kv("processed", processed),
            _kv("published", snap.published),
            _kv("skipped", skipped),
            _kv("rejected", rejected),
        ]
        values += [_kv(f"rejected.{reason}", n) for reason, n in sorted(snap.rejected.items())]
        if snap.last_rejection:
            values.append(_kv("last_rejection", snap.last_rejection))
        values.append(_kv("resets", sum(resets.values())))
        values += [_kv(f"resets.{reason}", n) for reason, n in resets.items()]
        values += [
            _kv("frames_since_reset", getattr(stream, "frames_since_reset", 0) if stream else 0),
            _kv("latency_p50_ms", _ms(snap.latency_s, 50)),
            _kv("latency_p95_ms", _ms(snap.latency_s, 95)),
            _kv("model_time_p50_ms", _ms(snap.model_time_s, 50)),
            _kv("model_time_p95_ms", _ms(snap.model_time_s, 95)),
            _kv("errors", snap.errors),
            _kv("non_finite", int(getattr(stream, "non_finite", 0) or 0)),
        ]
        if stream is not None and getattr(stream, "width", None):
            values.append(_kv("image_size", f"{stream.width}x{stream.height}"))
            values.append(_kv("frame_id", stream.frame_id))
        status.values = values
        return status

    def _warn_non_finite(self, name: str, stream, status: DiagnosticStatus) -> None:
        """WARN when the camera's state went NaN/Inf since the last report (it was reset)."""
        total = int(getattr(stream, "non_finite", 0) or 0)
        new = total - self._non_finite_seen.get(name, 0)
        self._non_finite_seen[name] = total
        if new > 0 and status.level in (DiagnosticStatus.OK, DiagnosticStatus.STALE):
            status.level = DiagnosticStatus.WARN
            status.message = f"non-finite state (NaN/Inf) in {new} frame(s); the camera was reset"
