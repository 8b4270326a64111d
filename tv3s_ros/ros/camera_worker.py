"""The inference worker of ``tv3s_node``: per-camera pending slots, the worker thread, publishing.

:class:`InferenceWorker` is not a Node. The node that wraps it owns the ROS plumbing
(parameters, subscriptions, publishers, timers, services) and hands every serialized camera
message to :meth:`InferenceWorker.offer`; the worker runs the engine on its own thread and
publishes through the publishers the node created (:class:`CameraChannel`). The plain node
(:mod:`tv3s_ros.ros.node`) starts it at construction and stops it on close; a lifecycle node
can map its transitions onto the same calls: configure builds it, activate :meth:`~InferenceWorker.start`
(or :meth:`~InferenceWorker.resume`), deactivate :meth:`~InferenceWorker.pause`, cleanup and
shutdown :meth:`~InferenceWorker.stop`.

Data flow::

    offer() (executor thread): read the header, keep the newest serialized message per
        camera; an overwritten one is counted as skipped
    worker thread: take every camera's pending message -> deserialize + decode -> Engine.process
        (cameras of equal model input size in one batch, one recurrent state per camera)
        -> publish <camera>/{labels,color,overlay,confidence,coverage} with the source header,
        then <camera>/<image output>/compressed for those with subscribers (ros/compressed.py)

:meth:`~InferenceWorker.offer` never runs the model and never keeps more than one frame per
camera, so memory stays bounded and the newest frame wins whatever the input rate. Bad input
is rejected with one throttled log line and a diagnostics counter; the worker keeps serving
every camera. After ``max_consecutive_errors`` engine failures in a row it gives up: it logs
FATAL, sets :attr:`~InferenceWorker.fatal_error` and :attr:`~InferenceWorker.fatal_exit_code`
and ends its thread; the wrapping node decides what happens next (tv3s_node exits).
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from tv3s_ros.outputs import IMAGE_OUTPUTS, image_encoding
from tv3s_ros.ros import convert
from tv3s_ros.ros.compressed import CompressedOutputs
from tv3s_ros.ros.diagnostics import CameraHealth, clip_text
from tv3s_ros.streams import ResetReason

__all__ = ["InferenceWorker", "CameraChannel", "PendingMessage", "ThrottledLog", "EXIT_ENGINE_FAILED"]

# Exit code a node reports when the engine failed max_consecutive_errors times in a row.
EXIT_ENGINE_FAILED = 3
_TRACEBACK_CHARS = 4000       # the end of a traceback in the log (its message may be huge)
_LOG_REPEAT_S = 10.0          # a repeated warning (same camera and reason) at most this often
_WORKER_JOIN_S = 30.0         # stop() and pause() wait this long for a forward pass in progress


@dataclass
class PendingMessage:
    """The newest not yet processed message of a camera (still serialized)."""

    raw: bytes
    received_s: float
    stamp_ns: int
    frame_id: str


class CameraChannel:
    """One camera as the worker sees it: its input, publishers, pending message and health counters.

    The wrapping node fills ``image_publishers`` (output name -> publisher),
    ``compressed_publishers`` (output name -> its ``<output>/compressed`` publisher) and
    ``coverage_publisher``; the worker only publishes through them.
    """

    def __init__(self, name: str, topic: str, compressed: bool):
        self.name, self.topic, self.compressed = name, topic, compressed
        msg_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        self.health = CameraHealth(name, topic, msg_type)
        self.pending: Optional[PendingMessage] = None
        self.image_publishers: Dict[str, object] = {}
        self.compressed_publishers: Dict[str, object] = {}
        self.coverage_publisher = None
        self.camera_info = None          # a CameraInfoRelay (ros/camera_info.py), or None
        self.input_size = (0, 0)         # (h, w) of the frame being processed
        # A ros.region_coverage.RegionChannel when the camera has regions of interest.
        self.regions = None


class ThrottledLog:
    """Log lines keyed by (camera, reason): the first at once, then at most one per _LOG_REPEAT_S,
    saying how many were held back in between."""

    def __init__(self, logger):
        self.logger = logger
        self._last: Dict[Tuple[str, str], Tuple[float, int]] = {}

    def warning(self, key: Tuple[str, str], text: str) -> None:
        self.log(key, text, "warning")

    def log(self, key: Tuple[str, str], text: str, level: str) -> None:
        """Log ``text`` the first time for ``key``, then at most once per _LOG_REPEAT_S."""
        now = time.monotonic()
        last, suppressed = self._last.get(key, (None, 0))
        if last is not None and now - last < _LOG_REPEAT_S:
            self._last[key] = (last, suppressed + 1)
            return
        if suppressed:
            text += f" ({suppressed} more like this since the last report)"
        self._last[key] = (now, 0)
        # One call site per severity: rclpy refuses one call site logging at two severities.
        if level == "info":
            self.logger.info(text)
        else:
            self.logger.warning(text)


class InferenceWorker:
    """The cameras' pending slots, the worker thread that runs the engine, and publishing.

    Args:
        engine: a :class:`tv3s_ros.engine.Engine` (``process``, ``note_skipped``, ``class_names``;
            ``decode_msg`` when it decodes on its own device).
        cameras: the cameras, their publishers already created.
        logger: an rclpy logger (``info``, ``warning``, ``debug``, ``fatal``).
        allow_16bit_cameras: names of the cameras whose 16-bit images are accepted.
        max_consecutive_errors: engine failures in a row before the worker gives up (0: never).
        max_state_frames: the engine's periodic reset (only for the wording of its log line).
        context_ok: False once the ROS context is shut down; an error during shutdown is then
            a normal end, not a failure.
        jpeg_quality: of the JPEG ``<output>/compressed`` topics (``compressed.jpeg_quality``
            may change it later).
        clock_now_ns: the node clock's now in nanoseconds (ROS time, simulated with
            use_sim_time): the age of each frame's header stamp is measured with it at
            publication. None: not measured.
        max_stamp_age_s: a frame published with an older stamp is logged (throttled) and
            counted for /diagnostics (0: never).

    Thread safety: :meth:`offer` is called from the executor, the worker thread does the
    rest; :meth:`start`, :meth:`stop`, :meth:`pause` and :meth:`resume` are called by the
    wrapping node (never from the worker thread).
    """

    def __init__(self, engine, cameras: Iterable[CameraChannel], logger, *,
                 allow_16bit_cameras: Sequence[str] = (), max_consecutive_errors: int = 0,
                 max_state_frames: int = 0, context_ok: Callable[[], bool] = lambda: True,
                 jpeg_quality: int = 90, clock_now_ns: Optional[Callable[[], int]] = None,
                 max_stamp_age_s: float = 0.0):
        self.engine = engine
        self.cameras: List[CameraChannel] = list(cameras)
        self._by_name: Dict[str, CameraChannel] = {c.name: c for c in self.cameras}
        self.logger = logger
        self.allow_16bit_cameras = frozenset(allow_16bit_cameras)
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.max_state_frames = int(max_state_frames)
        self._context_ok = context_ok
        self._clock_now_ns = clock_now_ns
        self.max_stamp_age_s = float(max_stamp_age_s)
        self._class_names = list(engine.class_names)
        # The engine decodes jpeg on its GPU when it can; image_codec (OpenCV) otherwise.
        self._decode = getattr(engine, "decode_msg", convert.decode_camera)
        self._throttled = ThrottledLog(logger)
        self.compressed = CompressedOutputs(jpeg_quality, warn=self._throttled.warning)
        self._logged_periodic_reset: set = set()

        self._cond = threading.Condition()
        self._stopping = False
        self._paused = False
        self._busy = False            # a batch is being processed (taken, not yet published)
        self._thread: Optional[threading.Thread] = None
        self._consecutive_failures = 0
        # Set when the worker gives up (max_consecutive_errors failures, or the thread died).
        self.fatal_error: Optional[str] = None
        self.fatal_exit_code = 1

    # ------------------------------------------------------------------ control (wrapping node)
    def start(self) -> None:
        """Start the worker thread (no-op while it runs); also ends a pause."""
        with self._cond:
            self._stopping = False
            self._paused = False
            if self._thread is not None and self._thread.is_alive():
                self._cond.notify_all()
                return
            self._thread = threading.Thread(target=self._run, name="tv3s_worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = _WORKER_JOIN_S) -> None:
        """Stop and join the worker thread (idempotent); a forward pass in progress finishes."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        self.compressed.close()

    def pause(self, timeout: float = _WORKER_JOIN_S) -> None:
        """Stop taking frames: pending messages are dropped, and so are those offered until
        :meth:`resume` (neither counted). Returns once a batch in progress has been published
        (or after ``timeout``). The camera states are kept."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._paused = True
            for cam in self.cameras:
                cam.pending = None
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)

    def resume(self) -> None:
        """Take frames again after :meth:`pause`."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        """The worker thread is alive (it may be paused)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def paused(self) -> bool:
        return self._paused

    def camera(self, name: str) -> CameraChannel:
        return self._by_name[name]

    # ------------------------------------------------------------------ input (executor thread)
    def offer(self, cam: CameraChannel, raw: bytes) -> None:
        """Keep ``raw`` as the camera's newest message; never runs the model."""
        if self._paused:
            return
        now = time.monotonic()
        cam.health.note_received(now)
        try:
            stamp, frame_id = convert.peek_header(raw, cam.compressed)
        except Exception as err:  # noqa: BLE001 - a malformed message must not stop the node
            self.reject(cam, convert.DecodeErrorKind.UNDECODABLE, f"cannot read the header: {err}")
            return
        with self._cond:
            if self._paused:
                return
            old, cam.pending = cam.pending, PendingMessage(raw, now, stamp, frame_id)
            if old is not None:
                # Under the lock: the engine must see the skip before the frame that replaced it.
                self.engine.note_skipped(cam.name, old.stamp_ns)
            self._cond.notify()

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # noqa: BLE001 - a dead worker would leave a node that serves nothing
            if self._stopping or not self._context_ok():
                return
            self.fatal_exit_code = 1
            self.fatal_error = f"the worker thread died:\n{traceback.format_exc()[-_TRACEBACK_CHARS:]}"
            self.logger.fatal(f"{self.fatal_error}\nexiting with code 1")
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()   # a pause() waiting for the batch to be published
                while not self._stopping and (self._paused or not any(c.pending for c in self.cameras)):
                    self._cond.wait()
                if self._stopping:
                    return
                batch = [(c, c.pending) for c in self.cameras if c.pending is not None]
                for cam, _ in batch:
                    cam.pending = None
                self._busy = True
            try:
                self._process(batch)
            except Exception as err:  # noqa: BLE001 - the worker must outlive any one frame
                if self._stopping or not self._context_ok():
                    return
                detail = clip_text(f"{type(err).__name__}: {err}")
                for cam, _ in batch:
                    cam.health.note_error(detail)
                self._consecutive_failures += 1
                limit = self.max_consecutive_errors
                if limit and self._consecutive_failures >= limit:
                    # A sticky failure (a CUDA error, memory): this process will not recover, a
                    # new one may. main() exits with EXIT_ENGINE_FAILED; launch's respawn restarts.
                    self.fatal_exit_code = EXIT_ENGINE_FAILED
                    self.fatal_error = (f"the engine failed {self._consecutive_failures} times in a row "
                                        f"(max_consecutive_errors {limit}); last: {detail}")
                    self.logger.fatal(f"{self.fatal_error}; exiting with code {EXIT_ENGINE_FAILED}")
                    return
                self._throttled.warning(("*", "error"), f"processing failed ({self._consecutive_failures} in a row): "
                                        f"{detail}\n{traceback.format_exc()[-_TRACEBACK_CHARS:]}")

    def _process(self, batch: List[Tuple[CameraChannel, PendingMessage]]) -> None:
        from tv3s_ros.engine import FrameInput

        frames, headers = [], {}
        front_stages: Dict[str, Dict[str, float]] = {}   # queue and decode, per camera
        for cam, pending in batch:
            decode_start = time.monotonic()
            try:
                msg = convert.deserialize_camera(pending.raw, cam.compressed)
                image = self._decode(msg, allow_16bit=cam.name in self.allow_16bit_cameras)
            except convert.ImageDecodeError as err:
                self.reject(cam, convert.reject_reason(err), str(err))
                continue
            except Exception as err:  # noqa: BLE001 - e.g. a message that does not deserialize
                self.reject(cam, convert.DecodeErrorKind.UNDECODABLE, f"{type(err).__name__}: {err}")
                continue
            frames.append(FrameInput(cam.name, image, convert.stamp_ns(msg.header), msg.header.frame_id,
                                     pending.received_s))
            cam.input_size = (int(image.shape[0]), int(image.shape[1]))
            headers[cam.name] = (msg.header, pending.received_s)
            front_stages[cam.name] = {"queue": max(0.0, decode_start - pending.received_s),
                                      "decode": time.monotonic() - decode_start}
        if not frames:
            return
        from tv3s_ros.engine import FrameErrors

        try:
            outputs = self.engine.process(frames, {f.camera: self._outputs(self._by_name[f.camera])
                                                   for f in frames})
        except FrameErrors as err:
            # Only the cameras whose frame failed on its own lose it; the others publish.
            outputs = [out for out in err.results if out is not None]
            if not outputs:
                raise   # nothing worked (a sticky device error?): the worker's engine-failure path
            for i, error in err.errors.items():
                cam = self._by_name[frames[i].camera]
                detail = f"{type(error).__name__}: {error}"
                cam.health.note_error(detail)
                self._throttled.warning((cam.name, "error"), f"camera {cam.name}: processing failed: {detail}")
        if outputs:
            self._consecutive_failures = 0
        for out in outputs:
            header, received_s = headers[out.camera]
            self._publish(self._by_name[out.camera], header, received_s, out, front_stages.get(out.camera, {}))
        # After every raw topic and coverage of the batch: their consumers never wait for an encoder.
        self.compressed.publish([(self._by_name[out.camera], headers[out.camera][0], out) for out in outputs])

    def _outputs(self, cam: CameraChannel) -> set:
        """Coverage always; an image output only while someone subscribes to it (raw or compressed)."""
        outputs = {"coverage"}
        for name, pub in cam.image_publishers.items():
            if pub.get_subscription_count() > 0:
                outputs.add(name)
        if cam.regions is not None:
            outputs.add("labels")     # region coverage is counted on the published label image
        return outputs | self.compressed.wanted(cam.compressed_publishers)

    def _publish(self, cam: CameraChannel, header, received_s: float, out,
                 front_stages: Optional[Dict[str, float]] = None) -> None:
        publish_start = time.monotonic()
        if cam.regions is not None and out.overlay is not None:
            # Drawn once into the result: the raw and the compressed overlay both show the regions.
            out.result.overlay = cam.regions.draw_on(out.overlay)
        for name in IMAGE_OUTPUTS:
            data = out.output(name)
            pub = cam.image_publishers.get(name)
            # Computed for a compressed subscriber or the region coverage only: no raw copy for nobody.
            if data is None or pub is None or pub.get_subscription_count() == 0:
                continue
            pub.publish(convert.image_msg(header, data, image_encoding(name, data)))
        if cam.camera_info is not None:
            cam.camera_info.publish(header, cam.input_size, (out.height, out.width))
        latency = time.monotonic() - received_s
        cam.coverage_publisher.publish(convert.coverage_msg(header, cam.name, out, self._class_names, latency))
        if cam.regions is not None and out.labels is not None:
            cam.regions.publish(header, out.labels)
        done = time.monotonic()
        stages = dict(front_stages or {})
        stages.update(out.stage_s or {})
        stages["publish"] = done - publish_start
        cam.health.note_published(done - received_s, out.model_time_s, now_s=done, stages=stages,
                                  **self._stamp_age(cam, header))
        if out.reset_reason:
            self._log_reset(cam, out)

    def _stamp_age(self, cam: CameraChannel, header) -> dict:
        """Age of ``header``'s stamp on the node clock now (transport and queueing included),
        with a throttled warning past max_stamp_age_s; keyword arguments for note_published."""
        if self._clock_now_ns is None:
            return {}
        age = (self._clock_now_ns() - convert.stamp_ns(header)) / 1e9
        over = self.max_stamp_age_s > 0 and age > self.max_stamp_age_s
        if over:
            self._throttled.warning((cam.name, "stamp_age"), (
                f"camera {cam.name}: header stamp {age:.3f} s old at publication (max_stamp_age_s "
                f"{self.max_stamp_age_s:g}): slow transport or queueing, or the camera stamps with another "
                "clock (bags need use_sim_time and a /clock)"))
        return {"stamp_age_s": age, "stamp_age_over": over}

    def _log_reset(self, cam: CameraChannel, out) -> None:
        text = f"camera {cam.name}: state reset ({out.reset_reason})"
        if out.reset_reason == ResetReason.NON_FINITE:
            self._throttled.warning((cam.name, "non_finite"), text + ": its state or output held NaN/Inf")
            return
        if out.reset_reason == ResetReason.MAX_STATE_FRAMES:
            # Periodic by design: say it once per camera, then only at debug level.
            if cam.name in self._logged_periodic_reset:
                self.logger.debug(text)
                return
            self._logged_periodic_reset.add(cam.name)
            text += f"; further periodic resets every {self.max_state_frames} frames are not logged"
            self.logger.info(text)
            return
        # Throttled like rejections: a size or frame_id changing every frame must not flood the log.
        self._throttled.log((cam.name, "reset:" + out.reset_reason), text, "info")

    # ------------------------------------------------------------------ rejection
    def reject(self, cam: CameraChannel, reason: str, detail: str) -> None:
        """Count a rejected message of ``cam`` under ``reason`` and log it (throttled)."""
        reason = str(reason)          # a DecodeErrorKind: its value is the counter's name
        detail = clip_text(detail)    # e.g. a 1 MB encoding string quoted in the decoder's message
        cam.health.note_rejected(reason, detail)
        self._throttled.warning((cam.name, reason), f"camera {cam.name}: rejected message from {cam.topic} "
                                f"({reason}): {detail}")
