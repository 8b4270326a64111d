"""``tv3s_node``: TV3S video semantic segmentation for any number of camera topics.

Data flow (see the README for topics and parameters)::

    subscription callback (executor thread): read the header, keep the newest serialized
        message per camera; an overwritten one is counted as skipped
    worker thread: take every camera's pending message -> deserialize + decode -> Engine.process
        (cameras of equal model input size in one batch, one recurrent state per camera)
        -> publish ~/<camera>/{labels,color,overlay,confidence,coverage} with the source header,
        then ~/<camera>/<image output>/compressed (PNG/JPEG) for those with subscribers

The pending slots, the worker thread and publishing are :class:`~tv3s_ros.ros.camera_worker.InferenceWorker`;
this module is the ROS plumbing around it (parameters, subscriptions, publishers, timers,
services) and the process's entry point. Callbacks never run the model and never queue more
than one frame per camera, so memory stays bounded and the newest frame wins whatever the
input rate. Bad input is rejected with one throttled log line and a diagnostics counter; the
node keeps serving every camera. After ``max_consecutive_errors`` engine failures in a row the
node logs FATAL and exits with code 3 (EXIT_ENGINE_FAILED), so that launch's ``respawn``
starts a fresh process.

Run: ``ros2 run tv3s_ros tv3s_node --ros-args --params-file config/tv3s.yaml`` or, in the pip
setup, ``.venv/bin/tv3s_node --ros-args -p weights:=model/weights/x.pth``.
"""
from __future__ import annotations

import sys
import time
import traceback
from typing import List, Optional, Sequence, Tuple

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockChange, ClockType, JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from tv3s_ros.host_memory import keep_freed_memory
from tv3s_ros.msg import ClassCoverage
from tv3s_ros.ros import convert
from tv3s_ros.ros.camera_info import CameraInfoRelay
from tv3s_ros.ros.camera_worker import EXIT_ENGINE_FAILED, CameraChannel, InferenceWorker
from tv3s_ros.ros.compressed import CompressedOutputs
from tv3s_ros.ros.diagnostics import DiagnosticsReporter, HealthLimits
from tv3s_ros.ros.label_info import publish_label_info
from tv3s_ros.ros.params import (
    PARAMETERS,
    NodeSettings,
    ParameterError,
    declare_parameters,
    read_settings,
    validate_jpeg_quality,
    validate_overlay_alpha,
)
from tv3s_ros.ros.region_coverage import make_region_channel

__all__ = ["Tv3sNodeCore", "Tv3sNode", "main", "NODE_NAME", "EXIT_ENGINE_FAILED"]

NODE_NAME = "tv3s_node"
# Exit codes: 0 stopped (SIGINT/SIGTERM), 1 cannot start or an unexpected error, 2 invalid
# parameters, 3 (EXIT_ENGINE_FAILED) the engine failed max_consecutive_errors times in a row.
_SPIN_WAKE_S = 0.25           # longest single executor wait (see _spin_until_shutdown)
_FINISH_GRACE_S = 0.5         # a finalized lifecycle node spins this long before the process exits
LIFECYCLE_SWITCH = "--lifecycle"


class Tv3sNodeCore:
    """The set-up shared by the plain node (:class:`Tv3sNode`) and the managed one
    (:class:`tv3s_ros.ros.lifecycle_node.Tv3sLifecycleNode`); a mixin of an rclpy ``Node``.

    The steps, which the plain node runs at once in its constructor and the lifecycle node in
    its transitions:

    - :meth:`_init_core` (construction): declare the parameters, the parameter callbacks;
    - :meth:`_configure` (configure): read and validate the parameters, load the model, create
      the publishers, services, the worker (not started), diagnostics and the time-jump callback;
    - :meth:`_subscribe_cameras` (activate): the camera subscriptions; then ``worker.start()``.

    ``worker`` (an :class:`InferenceWorker`) holds the cameras, runs the engine and publishes;
    the node creates the publishers, subscriptions, services and timers it works with.
    """

    settings: Optional[NodeSettings] = None
    engine = None
    worker: Optional[InferenceWorker] = None
    _diagnostics_pub = None
    _reporter: Optional[DiagnosticsReporter] = None
    _jump_handle = None

    @property
    def cameras(self) -> List[CameraChannel]:
        return self.worker.cameras if self.worker is not None else []

    @property
    def fatal_error(self) -> Optional[str]:
        """Why the worker gave up (then the spin loop stops), else None."""
        return self.worker.fatal_error if self.worker is not None else None

    @property
    def fatal_exit_code(self) -> int:
        return self.worker.fatal_exit_code if self.worker is not None else 1

    # ------------------------------------------------------------------ start-up
    def _init_core(self) -> None:
        """Declare the parameters; validate and apply runtime changes (overlay_alpha)."""
        self._camera_subscriptions: list = []
        self._label_info_pub = None
        declare_parameters(self)
        # Validate first (a refusal leaves every parameter as it was), apply once all are set.
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    def _configure(self) -> None:
        """Read and validate the parameters (:class:`ParameterError`), load the model, create
        publishers, services, diagnostics and the worker. No camera is subscribed yet."""
        self.settings = read_settings(self)
        self.engine = self._build_engine(self.settings)
        self._setup_ros(self.settings)

    def _subscribe_cameras(self) -> None:
        """Subscribe to every camera topic (the worker takes the frames)."""
        s = self.settings
        reliability = ReliabilityPolicy.RELIABLE if s.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        # Depth 1: a vehicle needs the present frame, not a backlog.
        input_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability,
                               durability=DurabilityPolicy.VOLATILE)
        for cam in self.cameras:
            # raw=True: frames that get overwritten before the model sees them are never deserialized.
            self._camera_subscriptions.append(self.create_subscription(
                convert.camera_msg_type(cam.compressed), cam.topic,
                lambda raw, cam=cam: self.worker.offer(cam, raw), input_qos, raw=True))

    def _unsubscribe_cameras(self) -> None:
        for sub in self._camera_subscriptions:
            self.destroy_subscription(sub)
        self._camera_subscriptions = []

    def _ensure_diagnostics(self, period_s: float) -> None:
        """The /diagnostics publisher and its timer (once per node)."""
        if self._diagnostics_pub is not None:
            return
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Steady clock: health reports must go on when a simulated /clock pauses (a paused bag,
        # a dead clock source), exactly when someone needs to see what the node is doing.
        self._steady_clock = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(period_s, self._publish_diagnostics, clock=self._steady_clock)

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
        return Engine.from_settings(s.engine_settings())

    def _setup_ros(self, s: NodeSettings) -> None:
        # Reliable publishers match reliable and best-effort subscribers alike.
        image_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        coverage_qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)

        cameras = []
        for name, topic, compressed in zip(s.camera_names, s.camera_topics, s.compressed):
            cam = CameraChannel(name, topic, compressed)
            for output in s.publish:
                cam.image_publishers[output] = self.create_publisher(Image, f"~/{name}/{output}", image_qos)
            if s.publish_compressed:
                cam.compressed_publishers = CompressedOutputs.create_publishers(self, name, s.publish, image_qos)
            cam.coverage_publisher = self.create_publisher(ClassCoverage, f"~/{name}/coverage", coverage_qos)
            info_topic = s.camera_info_topics[len(cameras)] if s.camera_info_topics else ""
            if info_topic:
                cam.camera_info = CameraInfoRelay(self, name, info_topic, image_qos)
            if s.regions.get(name):
                cam.regions = make_region_channel(self, cam.name, s.regions[name], coverage_qos,
                                                  self.engine.class_names, self.engine.num_classes, s.draw_regions)
            cameras.append(cam)
        # A lifecycle node (configuring) publishes it at activation instead.
        self._label_info_pub = publish_label_info(self, self.engine.class_names,
                                                  publish=not getattr(self, "_configuring", False))
        self.worker = InferenceWorker(self.engine, cameras, self.get_logger(),
                                      allow_16bit_cameras=s.allow_16bit_cameras,
                                      max_consecutive_errors=s.max_consecutive_errors,
                                      max_state_frames=s.max_state_frames, context_ok=self.context.ok,
                                      jpeg_quality=s.jpeg_quality,
                                      clock_now_ns=lambda: self.get_clock().now().nanoseconds,
                                      max_stamp_age_s=s.max_stamp_age_s)
        for cam in cameras:
            # The camera subscriptions: _subscribe_cameras.
            self.create_service(Trigger, f"~/{cam.name}/reset",
                                lambda req, resp, cam=cam: self._on_reset(resp, cam.name))

        self.create_service(Trigger, "~/reset", lambda req, resp: self._on_reset(resp, None))
        self._ensure_diagnostics(s.diagnostics_period_s)
        self._reporter = DiagnosticsReporter(self.get_fully_qualified_name().lstrip("/"), self._hardware_id(),
                                             self._node_values(s),
                                             "RANDOM WEIGHTS: output is meaningless" if s.weights is None else None,
                                             dynamic_values=lambda: (self._engine_modes()
                                                                     + self.worker.compressed.diagnostic_values()),
                                             limits=HealthLimits(s.stall_error_s, s.skip_warn_ratio,
                                                                 max_stamp_age_s=s.max_stamp_age_s))
        # ROS time jumps (use_sim_time + /clock: a bag restarted or seeked) reset every camera.
        # Backwards: any jump; forwards: beyond max_gap_s (when the gap rule is on).
        forward = Duration(nanoseconds=int(s.max_gap_s * 1e9)) if s.max_gap_s > 0 else None
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=forward, min_backward=Duration(nanoseconds=-1), on_clock_change=True),
            post_callback=self._on_time_jump)

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
            ("regions", "; ".join(f"{cam}: {', '.join(r.name for r in regs)}" for cam, regs in s.regions.items())
             or "(none)"),
            ("max_stamp_age_s", f"{s.max_stamp_age_s:g}"),
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
            outputs = ",".join(list(cam.image_publishers) + [f"{o}/compressed" for o in cam.compressed_publishers]
                               + ["coverage"] + (["camera_info"] if cam.camera_info else [])
                               + (["region_coverage"] if cam.regions is not None else []))
            lines.append(f"  camera {cam.name}: {cam.topic} ({kind}) -> {ns}/{cam.name}/{{{outputs}}}")
            if cam.camera_info:
                lines.append(f"    camera_info from {cam.camera_info.topic}")
            if cam.regions is not None:
                lines.append(f"    regions: {', '.join(cam.regions.names)}")
        self.get_logger().info("\n".join(lines))

    # ------------------------------------------------------------------ callbacks (executor)
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

    def _validate_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Accept or refuse a set request as a whole; changes nothing (see _apply_parameters).

        Only overlay_alpha and jpeg_quality are writable (read_only descriptors reject the others
        before this).
        """
        for param in params:
            if param.name == "overlay_alpha":
                problem = validate_overlay_alpha(param.value)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
            elif param.name == "jpeg_quality":
                problem = validate_jpeg_quality(param.value)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: Sequence[Parameter]) -> None:
        """Put parameters that _validate_parameters accepted and rclpy has set into effect."""
        for param in params:
            if param.name == "overlay_alpha" and self.engine is not None:
                self.engine.postprocessor.overlay_alpha = float(param.value)
            elif param.name == "jpeg_quality":
                self.worker.compressed.jpeg_quality = int(param.value)

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = self._reporter.build([c.health for c in self.cameras], self.engine.stats())
        self._diagnostics_pub.publish(msg)



class Tv3sNode(Tv3sNodeCore, Node):
    """The plain node: configured, subscribed and processing from construction on (see the
    module docstring; ``tv3s_node --lifecycle`` runs the managed node instead)."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self._init_core()
            self._configure()
            self._subscribe_cameras()
        except BaseException:
            self.destroy_node()
            raise
        self.worker.start()
        self._log_ready()

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop and join the worker, then destroy the node (idempotent)."""
        self.worker.stop()
        self.destroy_node()


def _print_help() -> None:
    print(__doc__.strip().split("\n\n")[0])
    print("\nUsage: tv3s_node [--lifecycle] [--ros-args -p name:=value ... | --params-file file.yaml]\n\n"
          "  --lifecycle  run as a managed (lifecycle) node: it starts unconfigured and loads the model\n"
          "               at configure, processes only while active (docs/node.md, 'Lifecycle')\n\nParameters:")
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
    the worker has given up (``node.fatal_error``) or a lifecycle node reached ``finalized``
    (``node.finished``).
    """
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    finished = lambda: getattr(node, "finished", False)  # noqa: E731
    try:
        while node.context.ok() and node.fatal_error is None and not finished():
            executor.spin_once(timeout_sec=_SPIN_WAKE_S)
        if finished():
            # The shutdown transition's service response is on its way: let it leave first.
            deadline = time.monotonic() + _FINISH_GRACE_S
            while node.context.ok() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
            return
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
    unknown = [a for a in user_args if a.startswith("-") and a != LIFECYCLE_SWITCH]
    if unknown:
        # A mistyped switch (--lifecyle) must not start the other kind of node silently.
        print(f"tv3s_node: unknown option(s) {' '.join(unknown)} (known: {LIFECYCLE_SWITCH}, --help; "
              "ROS arguments follow --ros-args)", file=sys.stderr)
        return 2
    keep_freed_memory()   # no page faults per frame on the CPU path (tv3s_ros/host_memory.py)
    try:
        rclpy.init(args=argv)
    except Exception as err:  # noqa: BLE001 - rcl rejects malformed --ros-args: say so, no traceback
        print(f"tv3s_node: invalid ROS arguments: {err}\n"
              "  (a YAML mapping given with -p must be quoted as a string: -p model_overrides:=\"'{embed_dim: 64}'\")",
              file=sys.stderr)
        return 2
    logger = rclpy.logging.get_logger(NODE_NAME)
    node = None
    code = 0
    try:
        try:
            if LIFECYCLE_SWITCH in user_args:
                from tv3s_ros.ros.lifecycle_node import Tv3sLifecycleNode

                node = Tv3sLifecycleNode()
            else:
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
