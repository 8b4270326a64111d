"""``tv3s_node``: TV3S video semantic segmentation for any number of camera topics.

Data flow (see docs/INTERFACES.md and the README for topics and parameters)::

    subscription callback (executor thread): read the header, keep the newest serialized
        message per camera; an overwritten one is counted as skipped
    worker thread: take every camera's pending message -> deserialize + decode -> Engine.process
        (cameras of equal model input size in one batch, one recurrent state per camera)
        -> publish ~/<camera>/{labels,color,overlay,confidence,coverage} with the source header

Callbacks never run the model and never queue more than one frame per camera, so memory stays
bounded and the newest frame wins whatever the input rate. Bad input is rejected with one
throttled log line and a diagnostics counter; the node keeps serving every camera. After
``max_consecutive_errors`` engine failures in a row the node logs FATAL and exits with
code 3 (EXIT_ENGINE_FAILED), so that launch's ``respawn`` starts a fresh process.

Run: ``ros2 run tv3s_ros tv3s_node --ros-args --params-file config/tv3s.yaml`` or, in the pip
setup, ``.venv/bin/tv3s_node --ros-args -p weights:=model/weights/x.pth``.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockChange, ClockType, JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from tv3s_ros.msg import ClassCoverage
from tv3s_ros.ros import convert
from tv3s_ros.ros.diagnostics import CameraStats, DiagnosticsReporter, HealthLimits, clip_text
from tv3s_ros.ros.params import (IMAGE_OUTPUTS, PARAMETERS, NodeSettings, ParameterError,
                                 declare_parameters, read_settings, validate_overlay_alpha)

__all__ = ["Tv3sNode", "main", "NODE_NAME", "EXIT_ENGINE_FAILED"]

NODE_NAME = "tv3s_node"
# Exit codes: 0 stopped (SIGINT/SIGTERM), 1 cannot start or an unexpected error, 2 invalid
# parameters, 3 the engine failed max_consecutive_errors times in a row.
EXIT_ENGINE_FAILED = 3
_TRACEBACK_CHARS = 4000       # the end of a traceback in the log (its message may be huge)
_LOG_REPEAT_S = 10.0          # a repeated warning (same camera and reason) at most this often
_WORKER_JOIN_S = 30.0         # shutdown waits this long for a forward pass in progress
_SPIN_WAKE_S = 0.25           # longest single executor wait (see _spin_until_shutdown)


@dataclass
class _Pending:
    """The newest not yet processed message of a camera (still serialized)."""

    raw: bytes
    received_s: float
    stamp_ns: int
    frame_id: str


class _Camera:
    """One camera: its subscription, publishers, pending frame and counters."""

    def __init__(self, name: str, topic: str, compressed: bool):
        self.name, self.topic, self.compressed = name, topic, compressed
        msg_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        self.stats = CameraStats(name, topic, msg_type)
        self.pending: Optional[_Pending] = None
        self.image_publishers: Dict[str, object] = {}
        self.coverage_publisher = None


class Tv3sNode(Node):
    """The ROS node around :class:`tv3s_ros.engine.Engine` (see the module docstring)."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            declare_parameters(self)
            self.settings: NodeSettings = read_settings(self)
            self.engine = self._build_engine(self.settings)
            self._setup_ros(self.settings)
        except BaseException:
            self.destroy_node()
            raise
        self._worker = threading.Thread(target=self._run_worker, name="tv3s_worker", daemon=True)
        self._worker.start()
        self._log_ready()

    # ------------------------------------------------------------------ start-up
    def _build_engine(self, s: NodeSettings):
        # torch is imported only now: `--help` and parameter errors stay fast.
        import torch

        from tv3s_ros.engine import Engine

        if s.seed >= 0:
            torch.manual_seed(s.seed)
        if s.weights is None:
            for line in ("!" * 72,
                         "allow_random_weights is true and no weights are set: the model has RANDOM",
                         "weights and its segmentation output is MEANINGLESS (tests only).",
                         "!" * 72):
                self.get_logger().warning(line)
        origin = f" ({s.weights_origin})" if s.weights else ""
        self.get_logger().info(f"loading model {s.model!r}, weights {s.weights or 'random'}{origin} ...")
        return Engine.from_settings(
            model=s.model, weights=s.weights, allow_random_weights=s.allow_random_weights, device=s.device,
            precision=s.precision, input_size=s.input_size, output_resolution=s.output_resolution,
            overlay_alpha=s.overlay_alpha, max_gap_s=s.max_gap_s, max_state_frames=s.max_state_frames,
            model_overrides=s.model_overrides or None, max_pixels=s.max_pixels, max_aspect=s.max_aspect,
            graphs=s.graphs, gpu_jpeg=s.gpu_jpeg)

    def _setup_ros(self, s: NodeSettings) -> None:
        reliability = ReliabilityPolicy.RELIABLE if s.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        # Depth 1: a vehicle needs the present frame, not a backlog.
        input_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability,
                               durability=DurabilityPolicy.VOLATILE)
        # Reliable publishers match reliable and best-effort subscribers alike.
        image_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        coverage_qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)

        self._cond = threading.Condition()
        self._stopping = False
        self._consecutive_failures = 0
        # Set by the worker after max_consecutive_errors failures; the spin loop then stops.
        self.fatal_error: Optional[str] = None
        self.fatal_exit_code = 1
        self._throttle: Dict[Tuple[str, str], Tuple[float, int]] = {}
        self._logged_periodic_reset: set = set()
        self.cameras: List[_Camera] = []
        self._by_name: Dict[str, _Camera] = {}
        self._class_names = list(self.engine.class_names)
        # The engine decodes jpeg on its GPU when it can; image_codec (OpenCV) otherwise.
        self._decode = getattr(self.engine, "decode_msg", convert.decode_camera)

        for name, topic, compressed in zip(s.camera_names, s.camera_topics, s.compressed):
            cam = _Camera(name, topic, compressed)
            for kind in s.publish:
                cam.image_publishers[kind] = self.create_publisher(Image, f"~/{name}/{kind}", image_qos)
            cam.coverage_publisher = self.create_publisher(ClassCoverage, f"~/{name}/coverage", coverage_qos)
            # raw=True: frames that get overwritten before the model sees them are never deserialized.
            self.create_subscription(convert.camera_msg_type(compressed), topic,
                                     lambda raw, cam=cam: self._on_message(cam, raw), input_qos, raw=True)
            self.create_service(Trigger, f"~/{name}/reset",
                                lambda req, resp, cam=cam: self._on_reset(resp, cam.name))
            self.cameras.append(cam)
            self._by_name[name] = cam

        self.create_service(Trigger, "~/reset", lambda req, resp: self._on_reset(resp, None))
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._reporter = DiagnosticsReporter(self.get_fully_qualified_name().lstrip("/"), self._hardware_id(),
                                             self._node_values(s),
                                             "RANDOM WEIGHTS: output is meaningless" if s.weights is None else None,
                                             dynamic_values=self._engine_modes,
                                             limits=HealthLimits(s.stall_error_s, s.skip_warn_ratio))
        # Steady clock: health reports must go on when a simulated /clock pauses (a paused bag,
        # a dead clock source), exactly when someone needs to see what the node is doing.
        self._steady_clock = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(s.diagnostics_period_s, self._publish_diagnostics, clock=self._steady_clock)
        # ROS time jumps (use_sim_time + /clock: a bag restarted or seeked) reset every camera.
        # Backwards: any jump; forwards: beyond max_gap_s (when the gap rule is on).
        forward = Duration(nanoseconds=int(s.max_gap_s * 1e9)) if s.max_gap_s > 0 else None
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=forward, min_backward=Duration(nanoseconds=-1), on_clock_change=True),
            post_callback=self._on_time_jump)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _hardware_id(self) -> str:
        device = self.engine.device
        if device.type == "cuda":
            import torch

            return f"{device} ({torch.cuda.get_device_name(device)})"
        return str(device)

    def _node_values(self, s: NodeSettings) -> List[Tuple[str, str]]:
        return [
            ("device", str(self.engine.device)),
            ("precision", self.engine.precision),
            ("graphs_setting", s.graphs),
            ("gpu_jpeg_setting", s.gpu_jpeg),
            ("preset", self.engine.preset),
            ("model", s.model),
            ("weights", s.weights or "(random weights)"),
            ("num_classes", str(self.engine.num_classes)),
            ("input_size", s.input_size),
            ("output_resolution", s.output_resolution),
            ("cameras", ", ".join(f"{c.name} <- {c.topic}" for c in self.cameras)),
            ("publish", ", ".join(s.publish + ["coverage"])),
        ]

    def _engine_modes(self) -> List[Tuple[str, str]]:
        """What the engine runs with now (graphs fall back to off when a capture fails)."""
        decoder = getattr(self.engine, "decoder", None)
        return [("graphs", str(getattr(self.engine, "graphs", "off"))),
                ("gpu_jpeg", "on" if getattr(decoder, "gpu_jpeg", False) else "off")]

    def _log_ready(self) -> None:
        e, ns = self.engine, self.get_fully_qualified_name()
        modes = ", ".join(f"{k} {v}" for k, v in self._engine_modes())
        lines = [f"ready: preset {e.preset} ({e.num_classes} classes) on {e.device} {e.precision}, "
                 f"input {self.settings.input_size}, outputs at {self.settings.output_resolution} resolution "
                 f"({modes})"]
        for cam in self.cameras:
            kind = "CompressedImage" if cam.compressed else "Image"
            outputs = ",".join(list(cam.image_publishers) + ["coverage"])
            lines.append(f"  camera {cam.name}: {cam.topic} ({kind}) -> {ns}/{cam.name}/{{{outputs}}}")
        self.get_logger().info("\n".join(lines))

    # ------------------------------------------------------------------ callbacks (executor)
    def _on_message(self, cam: _Camera, raw: bytes) -> None:
        """Keep the newest message; never runs the model."""
        now = time.monotonic()
        cam.stats.note_received(now)
        try:
            stamp, frame_id = convert.peek_header(raw, cam.compressed)
        except Exception as err:  # noqa: BLE001 - a malformed message must not stop the node
            self._reject(cam, "undecodable", f"cannot read the header: {err}")
            return
        with self._cond:
            old, cam.pending = cam.pending, _Pending(raw, now, stamp, frame_id)
            if old is not None:
                # Under the lock: the engine must see the skip before the frame that replaced it.
                self.engine.note_skipped(cam.name, old.stamp_ns)
            self._cond.notify()

    def _on_reset(self, response, camera: Optional[str]):
        """``~/reset`` (all cameras) and ``~/<camera>/reset``: reset at each camera's next frame."""
        affected = self.engine.reset(camera, "service")
        response.success = True
        if affected:
            response.message = f"reset {len(affected)} camera(s) at their next frame: {', '.join(affected)}"
        else:
            response.message = "no camera has a state yet (nothing to reset)"
        self.get_logger().info(f"reset service: {response.message}")
        return response

    def _on_time_jump(self, jump: TimeJump) -> None:
        affected = self.engine.reset(None, "ros_time_jump")
        if jump.clock_change in (ClockChange.ROS_TIME_ACTIVATED, ClockChange.ROS_TIME_DEACTIVATED):
            what = "ROS time source changed"
        else:
            what = f"ROS time jumped by {jump.delta.nanoseconds / 1e9:+.3f} s"
        self.get_logger().info(f"{what}: resetting {len(affected)} camera(s) at their next frame")

    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        # Only overlay_alpha is writable (read_only descriptors reject the others before this).
        for param in params:
            if param.name == "overlay_alpha":
                problem = validate_overlay_alpha(param.value)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
        for param in params:
            if param.name == "overlay_alpha":
                self.engine.postprocessor.overlay_alpha = float(param.value)
        return SetParametersResult(successful=True)

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = self._reporter.build([c.stats for c in self.cameras], self.engine.stats())
        self._diagnostics_pub.publish(msg)

    # ------------------------------------------------------------------ worker thread
    def _run_worker(self) -> None:
        try:
            self._worker_loop()
        except BaseException:  # noqa: BLE001 - a dead worker would leave a node that serves nothing
            if self._stopping or not self.context.ok():
                return
            self.fatal_exit_code = 1
            self.fatal_error = f"the worker thread died:\n{traceback.format_exc()[-_TRACEBACK_CHARS:]}"
            self.get_logger().fatal(f"{self.fatal_error}\nexiting with code 1")

    def _worker_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not any(c.pending for c in self.cameras):
                    self._cond.wait()
                if self._stopping:
                    return
                batch = [(c, c.pending) for c in self.cameras if c.pending is not None]
                for cam, _ in batch:
                    cam.pending = None
            try:
                self._process(batch)
            except Exception as err:  # noqa: BLE001 - the worker must outlive any one frame
                if self._stopping or not self.context.ok():
                    return
                detail = clip_text(f"{type(err).__name__}: {err}")
                for cam, _ in batch:
                    cam.stats.note_error(detail)
                self._consecutive_failures += 1
                limit = self.settings.max_consecutive_errors
                if limit and self._consecutive_failures >= limit:
                    # A sticky failure (a CUDA error, memory): this process will not recover, a
                    # new one may. main() exits with EXIT_ENGINE_FAILED; launch's respawn restarts.
                    self.fatal_exit_code = EXIT_ENGINE_FAILED
                    self.fatal_error = (f"the engine failed {self._consecutive_failures} times in a row "
                                        f"(max_consecutive_errors {limit}); last: {detail}")
                    self.get_logger().fatal(f"{self.fatal_error}; exiting with code {EXIT_ENGINE_FAILED}")
                    return
                self._warn_throttled(("*", "error"), f"processing failed ({self._consecutive_failures} in a row): "
                                     f"{detail}\n{traceback.format_exc()[-_TRACEBACK_CHARS:]}")

    def _process(self, batch: List[Tuple[_Camera, _Pending]]) -> None:
        from tv3s_ros.engine import FrameInput

        frames, headers = [], {}
        for cam, pending in batch:
            try:
                msg = convert.deserialize_camera(pending.raw, cam.compressed)
                image = self._decode(msg, allow_16bit=cam.name in self.settings.allow_16bit_cameras)
            except convert.ImageDecodeError as err:
                self._reject(cam, convert.reject_reason(err), str(err))
                continue
            except Exception as err:  # noqa: BLE001 - e.g. a message that does not deserialize
                self._reject(cam, "undecodable", f"{type(err).__name__}: {err}")
                continue
            frames.append(FrameInput(cam.name, image, convert.stamp_ns(msg.header), msg.header.frame_id,
                                     pending.received_s))
            headers[cam.name] = (msg.header, pending.received_s)
        if not frames:
            return
        from tv3s_ros.engine import FrameErrors

        try:
            outputs = self.engine.process(frames, {f.camera: self._wanted(self._by_name[f.camera])
                                                   for f in frames})
        except FrameErrors as err:
            # Only the cameras whose frame failed on its own lose it; the others publish.
            outputs = [out for out in err.results if out is not None]
            if not outputs:
                raise   # nothing worked (a sticky device error?): the worker's engine-failure path
            for i, error in err.errors.items():
                cam = self._by_name[frames[i].camera]
                detail = f"{type(error).__name__}: {error}"
                cam.stats.note_error(detail)
                self._warn_throttled((cam.name, "error"), f"camera {cam.name}: processing failed: {detail}")
        if outputs:
            self._consecutive_failures = 0
        for out in outputs:
            header, received_s = headers[out.camera]
            self._publish(self._by_name[out.camera], header, received_s, out)

    def _wanted(self, cam: _Camera) -> set:
        """Coverage always; an image output only while someone subscribes to it."""
        wanted = {"coverage"}
        for kind, pub in cam.image_publishers.items():
            if pub.get_subscription_count() > 0:
                wanted.add(kind)
        return wanted

    def _publish(self, cam: _Camera, header, received_s: float, out) -> None:
        for kind in IMAGE_OUTPUTS:
            data = getattr(out, kind)
            pub = cam.image_publishers.get(kind)
            if data is None or pub is None:
                continue
            msg = convert.labels_msg(header, data) if kind == "labels" else \
                convert.image_msg(header, data, "rgb8" if data.ndim == 3 else "mono8")
            pub.publish(msg)
        latency = time.monotonic() - received_s
        cam.coverage_publisher.publish(convert.coverage_msg(header, cam.name, out, self._class_names, latency))
        cam.stats.note_published(latency, out.model_time_s)
        if out.reset_reason:
            self._log_reset(cam, out)

    def _log_reset(self, cam: _Camera, out) -> None:
        text = f"camera {cam.name}: state reset ({out.reset_reason})"
        if out.reset_reason == "non_finite":
            self._warn_throttled((cam.name, "non_finite"), text + ": its state or output held NaN/Inf")
            return
        if out.reset_reason == "max_state_frames":
            # Periodic by design: say it once per camera, then only at debug level.
            if cam.name in self._logged_periodic_reset:
                self.get_logger().debug(text)
                return
            self._logged_periodic_reset.add(cam.name)
            text += f"; further periodic resets every {self.settings.max_state_frames} frames are not logged"
            self.get_logger().info(text)
            return
        # Throttled like rejections: a size or frame_id changing every frame must not flood the log.
        self._log_throttled((cam.name, "reset:" + out.reset_reason), text, "info")

    # ------------------------------------------------------------------ rejection and logging
    def _reject(self, cam: _Camera, reason: str, detail: str) -> None:
        detail = clip_text(detail)   # e.g. a 1 MB encoding string quoted in the decoder's message
        cam.stats.note_rejected(reason, detail)
        self._warn_throttled((cam.name, reason), f"camera {cam.name}: rejected message from {cam.topic} "
                             f"({reason}): {detail}")

    def _warn_throttled(self, key: Tuple[str, str], text: str) -> None:
        self._log_throttled(key, text, "warning")

    def _log_throttled(self, key: Tuple[str, str], text: str, level: str) -> None:
        """Log ``text`` the first time for ``key``, then at most once per _LOG_REPEAT_S."""
        now = time.monotonic()
        last, suppressed = self._throttle.get(key, (None, 0))
        if last is not None and now - last < _LOG_REPEAT_S:
            self._throttle[key] = (last, suppressed + 1)
            return
        if suppressed:
            text += f" ({suppressed} more like this since the last report)"
        self._throttle[key] = (now, 0)
        # One call site per severity: rclpy refuses one call site logging at two severities.
        if level == "info":
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop and join the worker, then destroy the node (idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(_WORKER_JOIN_S)
        self.destroy_node()


def _print_help() -> None:
    print(__doc__.strip().split("\n\n")[0])
    print("\nUsage: tv3s_node [--ros-args -p name:=value ... | --params-file file.yaml]\n\nParameters:")
    for spec in PARAMETERS:
        default = "(unset)" if spec.default is None else repr(spec.default)
        mode = "" if spec.read_only else ", changeable at runtime"
        print(f"  {spec.name} ({spec.kind}, default {default}{mode})\n      {spec.description}")


def _spin_until_shutdown(node: Node) -> None:
    """Like ``rclpy.spin(node)``, but never blocks longer than _SPIN_WAKE_S in one wait.

    rclpy's SIGINT/SIGTERM handler wakes the executor and shuts the context down as two
    separate steps; when the wake-up comes first, the executor sees a live context, waits
    again and nothing wakes it any more (seen with use_sim_time, where the frozen /clock
    leaves no timer to fire). A bounded wait notices the closed context within _SPIN_WAKE_S,
    well inside launch's 5 s SIGINT-to-SIGTERM escalation. Returns (without raising) when
    the worker has given up (``node.fatal_error``).
    """
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        while node.context.ok() and node.fatal_error is None:
            executor.spin_once(timeout_sec=_SPIN_WAKE_S)
        if node.fatal_error is not None:
            return
        raise ExternalShutdownException()
    finally:
        executor.shutdown(timeout_sec=0.0)


def main(args: Optional[List[str]] = None) -> int:
    """Console entry point (``tv3s_node``, ``ros2 run tv3s_ros tv3s_node``); returns the exit code."""
    argv = list(sys.argv if args is None else args)
    user_args = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    if "-h" in user_args or "--help" in user_args:
        _print_help()
        return 0
    try:
        rclpy.init(args=argv)
    except Exception as err:  # noqa: BLE001 - rcl rejects malformed --ros-args: say so, no traceback
        print(f"tv3s_node: invalid ROS arguments: {err}\n"
              "  (a YAML mapping given with -p must be quoted as a string: -p model_overrides:=\"'{embed_dim: 64}'\")",
              file=sys.stderr)
        return 2
    logger = rclpy.logging.get_logger(NODE_NAME)
    node: Optional[Tv3sNode] = None
    code = 0
    try:
        try:
            node = Tv3sNode()
        except ParameterError as err:
            logger.fatal(str(err))
            return 2
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0
        except Exception as err:  # noqa: BLE001 - model/weights/device problems: say why, no traceback
            logger.fatal(f"cannot start: {type(err).__name__}: {err}")
            logger.debug(traceback.format_exc())
            return 1
        try:
            _spin_until_shutdown(node)
            if node.fatal_error is not None:
                code = node.fatal_exit_code
        except (KeyboardInterrupt, ExternalShutdownException):
            pass  # Ctrl-C / SIGTERM: a normal stop
        except Exception:  # noqa: BLE001 - a bug in a callback: report it fully, then stop cleanly
            if rclpy.ok():
                logger.fatal(f"stopped by an unexpected error:\n{traceback.format_exc()}")
                code = 1
            # else: a callback raced with the shutdown (SIGTERM closes the context at once): a normal stop
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return code

if __name__ == "__main__":
    sys.exit(main())
