"""Per-camera stream bookkeeping: when a camera's recurrent state must be reset, and counters.

ROS-free and model-free: the engine asks :meth:`StreamManager.observe` before each frame it
processes and resets that camera's TV3S state when a reason comes back. The node and the
bag tool share this one policy.

Reset reasons, checked in this order (the first that applies is reported):

``first_frame``       the camera has never been processed (or was forgotten);
``size_changed``      image height or width differs from the previous processed frame;
``frame_id_changed``  header frame_id differs (another camera behind the same topic);
``time_backwards``    stamp older than the previous frame of this camera (bag loop, replay);
``gap``               more than ``max_gap_s`` since the previous frame of this camera;
``service`` / ``ros_time_jump``  requested with :meth:`StreamManager.request_reset`,
                      applied at that camera's next processed frame;
``max_state_frames``  the state has accumulated ``max_state_frames`` frames.
``non_finite``        the engine found NaN/Inf in the camera's state or logits after the
                      previous frame (:meth:`StreamManager.note_non_finite`);
``error``             the camera's previous frame failed inside the model (its state may be
                      half-updated, so it starts afresh).

Frames dropped because the model was busy are reported with :meth:`note_skipped`: they are
counted and move the camera's clock forward (so a slow model does not look like a gap) but
never reset the state by themselves; a jump backwards or a gap seen on a skipped frame is
remembered and resets the next processed frame.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Dict, List, Optional

__all__ = [
    "ResetReason",
    "RESET_REASONS",
    "ResetPolicy",
    "Observation",
    "StreamStats",
    "StreamManager",
]

class ResetReason(str, Enum):
    """Why a camera's state was reset at a frame (``NONE``: it was not). A ``str``, so it
    compares, formats and serialises as its value (``"gap"``)."""

    NONE = ""
    FIRST_FRAME = "first_frame"
    SIZE_CHANGED = "size_changed"
    FRAME_ID_CHANGED = "frame_id_changed"
    TIME_BACKWARDS = "time_backwards"
    GAP = "gap"
    MAX_STATE_FRAMES = "max_state_frames"
    ROS_TIME_JUMP = "ros_time_jump"
    SERVICE = "service"
    NON_FINITE = "non_finite"
    ERROR = "error"

    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def new_state(self) -> bool:
        """The state must be created anew (no earlier state, or its buffers have the wrong
        shape); every other reason zeroes the existing state."""
        return self in (ResetReason.FIRST_FRAME, ResetReason.SIZE_CHANGED)

    @property
    def routine(self) -> bool:
        """Expected in normal running, or reported by a warning of its own (non_finite; error,
        a model error): many of these are no "reset storm" in the diagnostics."""
        return self in (ResetReason.FIRST_FRAME, ResetReason.MAX_STATE_FRAMES, ResetReason.NON_FINITE,
                        ResetReason.ERROR)

    @property
    def requestable(self) -> bool:
        """Callers may ask for it with :meth:`StreamManager.request_reset`."""
        return self in (ResetReason.SERVICE, ResetReason.ROS_TIME_JUMP, ResetReason.ERROR)


RESET_REASONS = tuple(r.value for r in ResetReason if r)  # counter keys, in the order above


@dataclass(frozen=True)
class ResetPolicy:
    """When a camera's state is reset besides first frame, size and frame_id changes.

    Attributes:
        max_gap_s: reset when the stamp advances by more than this since the camera's
            previous frame; ``<= 0`` or ``inf`` disables the check.
        max_state_frames: reset so that one state spans at most this many frames
            (``frames_since_reset`` runs 0 .. max_state_frames - 1; 1 = no temporal
            context, 4 = the training clip length); 0 = never.
    """

    max_gap_s: float = 1.0
    max_state_frames: int = 0

    def __post_init__(self):
        if isinstance(self.max_gap_s, bool) or not isinstance(self.max_gap_s, (int, float)) \
                or math.isnan(self.max_gap_s):
            raise ValueError(f"max_gap_s must be a number of seconds, got {self.max_gap_s!r}")
        if isinstance(self.max_state_frames, bool) or not isinstance(self.max_state_frames, int) \
                or self.max_state_frames < 0:
            raise ValueError(f"max_state_frames must be an integer >= 0, got {self.max_state_frames!r}")

    @property
    def max_gap_ns(self) -> Optional[int]:
        """The gap limit in nanoseconds, None when disabled."""
        if self.max_gap_s <= 0 or math.isinf(self.max_gap_s):
            return None
        return int(round(self.max_gap_s * 1e9))


@dataclass(frozen=True)
class Observation:
    """What :meth:`StreamManager.observe_frame` decided for one processed frame."""

    reason: ResetReason        # NONE (falsy) = keep the state
    frames_since_reset: int    # 0 on a reset frame, then 1, 2, ...
    skipped_frames: int        # frames noted as skipped since this camera's previous processed frame


@dataclass
class StreamStats:
    """Counters of one camera (a snapshot when returned by the manager)."""

    camera: str
    processed: int = 0
    skipped: int = 0
    frames_since_reset: int = 0
    resets: Dict[str, int] = field(default_factory=lambda: {r: 0 for r in RESET_REASONS})
    last_reset_reason: str = ""              # a ResetReason value
    height: Optional[int] = None
    width: Optional[int] = None
    frame_id: Optional[str] = None
    last_stamp_ns: Optional[int] = None       # stamp of the latest frame (processed or skipped)
    non_finite: int = 0                       # frames whose state/logits held NaN or Inf

    @property
    def total_resets(self) -> int:
        return sum(self.resets.values())


@dataclass
class _Stream:
    stats: StreamStats
    started: bool = False                 # processed at least one frame since (re)creation
    pending: ResetReason = ResetReason.NONE   # requested or skipped-frame reason for the next frame
    skipped_since_processed: int = 0


class StreamManager:
    """Reset decisions and counters for any number of cameras; all methods are thread-safe."""

    def __init__(self, policy: Optional[ResetPolicy] = None):
        self.policy = policy or ResetPolicy()
        self._streams: Dict[str, _Stream] = {}
        self._lock = threading.Lock()

    # -- per frame -----------------------------------------------------------------------

    def observe(self, camera: str, stamp_ns: int, height: int, width: int, frame_id: str) -> ResetReason:
        """Record a frame about to be processed; return the reset reason (NONE = keep state)."""
        return self.observe_frame(camera, stamp_ns, height, width, frame_id).reason

    def observe_frame(self, camera: str, stamp_ns: int, height: int, width: int,
                      frame_id: str) -> Observation:
        """Like :meth:`observe`, also returning frames_since_reset and the skipped count."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            stream = self._stream(camera)
            st = stream.stats
            reason = self._decide(stream, stamp_ns, int(height), int(width), frame_id)
            if reason:
                st.frames_since_reset = 0
                st.resets[reason] += 1
                st.last_reset_reason = reason
            else:
                st.frames_since_reset += 1
            stream.started = True
            stream.pending = ResetReason.NONE
            st.processed += 1
            st.height, st.width, st.frame_id = int(height), int(width), frame_id
            st.last_stamp_ns = stamp_ns
            skipped, stream.skipped_since_processed = stream.skipped_since_processed, 0
            return Observation(reason, st.frames_since_reset, skipped)

    def _decide(self, stream: _Stream, stamp_ns: int, height: int, width: int, frame_id: str) -> ResetReason:
        st = stream.stats
        if not stream.started:
            return ResetReason.FIRST_FRAME
        if (height, width) != (st.height, st.width):
            return ResetReason.SIZE_CHANGED
        if frame_id != st.frame_id:
            return ResetReason.FRAME_ID_CHANGED
        time_reason = self._time_reason(st.last_stamp_ns, stamp_ns)
        if time_reason:
            return time_reason
        if stream.pending:
            return stream.pending
        limit = self.policy.max_state_frames
        if limit and st.frames_since_reset + 1 >= limit:
            return ResetReason.MAX_STATE_FRAMES
        return ResetReason.NONE

    def _time_reason(self, previous_ns: Optional[int], stamp_ns: int) -> ResetReason:
        if previous_ns is None:
            return ResetReason.NONE
        if stamp_ns < previous_ns:
            return ResetReason.TIME_BACKWARDS
        gap_ns = self.policy.max_gap_ns
        if gap_ns is not None and stamp_ns - previous_ns > gap_ns:
            return ResetReason.GAP
        return ResetReason.NONE

    def note_skipped(self, camera: str, stamp_ns: int) -> None:
        """Record a frame of ``camera`` dropped without processing (live mode, model busy)."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            stream = self._stream(camera)
            st = stream.stats
            st.skipped += 1
            stream.skipped_since_processed += 1
            # A loop or gap hidden in skipped frames still resets the next processed frame;
            # a request already pending keeps priority.
            if stream.started and not stream.pending:
                stream.pending = self._time_reason(st.last_stamp_ns, stamp_ns)
            st.last_stamp_ns = stamp_ns

    # -- requests and queries ------------------------------------------------------------

    def request_reset(self, camera: Optional[str] = None,
                      reason: ResetReason = ResetReason.SERVICE) -> List[str]:
        """Reset ``camera`` (None = every known camera) at its next processed frame.

        Returns the cameras that will reset; an unknown camera gives ``[]`` (its first frame
        resets anyway). ``reason`` is ``"service"``, ``"ros_time_jump"`` or ``"error"``.
        """
        known = reason in set(ResetReason)
        if not known or not ResetReason(reason).requestable:
            choices = tuple(r.value for r in ResetReason if r.requestable)
            raise ValueError(f"reset reason must be one of {choices}, got {reason!r}")
        reason = ResetReason(reason)
        with self._lock:
            names = list(self._streams) if camera is None else [camera] if camera in self._streams else []
            for name in names:
                # A reset already requested keeps its (first) reason.
                self._streams[name].pending = self._streams[name].pending or reason
            return names

    def note_non_finite(self, camera: str) -> None:
        """``camera``'s last frame left NaN/Inf in its state: count it and reset at its next frame.

        ``non_finite`` replaces a pending request: the poisoned state is the news worth reporting.
        """
        with self._lock:
            stream = self._stream(camera)
            stream.stats.non_finite += 1
            stream.pending = ResetReason.NON_FINITE

    def forget(self, camera: str) -> None:
        """Drop a camera; its next frame is a first_frame again."""
        with self._lock:
            self._streams.pop(camera, None)

    def cameras(self) -> List[str]:
        with self._lock:
            return list(self._streams)

    def stats(self, camera: str) -> StreamStats:
        """Snapshot of one camera's counters (KeyError when unknown)."""
        with self._lock:
            st = self._streams[camera].stats
            return replace(st, resets=dict(st.resets))

    def all_stats(self) -> Dict[str, StreamStats]:
        """Snapshot of every camera's counters."""
        with self._lock:
            return {name: replace(s.stats, resets=dict(s.stats.resets)) for name, s in self._streams.items()}

    def _stream(self, camera: str) -> _Stream:
        stream = self._streams.get(camera)
        if stream is None:
            stream = self._streams[camera] = _Stream(StreamStats(camera))
        return stream
