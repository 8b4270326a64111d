"""``tv3s_node --lifecycle``: tv3s_node as a managed (lifecycle) node.

The same set-up as the plain node (:class:`~tv3s_ros.ros.node.Tv3sNodeCore`), run in the
transitions of the ROS 2 node lifecycle instead of the constructor:

- start: ``unconfigured``; the parameters are declared (their values fixed, as in the plain
  node), ``/diagnostics`` runs, nothing else. No model is loaded.
- configure: read and validate the parameters, load the model (Engine), create the output
  publishers (lifecycle publishers: silent unless active), the reset services, the worker (not
  started) and the time-jump callback. A failure (invalid parameters, weights missing, a model
  that does not load) releases what was created, logs why once and leaves the node
  ``unconfigured``; ``/diagnostics`` then says why (ERROR) until a configure succeeds.
- activate: enable the publishers, subscribe to the cameras, start (or resume) the worker.
- deactivate: unsubscribe, pause the worker (a batch in progress is published first; pending
  frames are dropped), disable the publishers. The model stays loaded and warm; the camera
  states are kept and left to the reset policy (a pause longer than ``max_gap_s`` resets them
  at their next frame, a ROS time jump too).
- cleanup: stop the worker, destroy everything configure created, drop the model and free its
  memory (``gc.collect()``, ``torch.cuda.empty_cache()`` on CUDA, ``malloc_trim`` on glibc).
- shutdown, from any primary state: deactivate and clean up as needed; the node is then
  ``finalized`` and the process exits with code 0 (launch's ``respawn`` starts a new one).
- an unexpected exception in a transition: ``on_error`` releases the model, the node ends
  ``unconfigured``.

Reset services exist from configure to cleanup (they answer while inactive: the reset takes
effect at each camera's next frame after activation). ``/diagnostics`` is a plain publisher and
reports in every state: the node status carries ``lifecycle_state`` and ``model_loaded``; while
inactive the camera statuses are STALE ("inactive"), while unconfigured only the node status is
sent.
"""
from __future__ import annotations

import functools
import gc
import sys
import traceback
from typing import Callable, Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, LifecycleState, TransitionCallbackReturn

from tv3s_ros.host_memory import release_freed_memory
from tv3s_ros.ros.diagnostics import process_rss_mb
from tv3s_ros.ros.label_info import label_info_msg
from tv3s_ros.ros.node import NODE_NAME, Tv3sNodeCore
from tv3s_ros.ros.params import ParameterError

__all__ = ["Tv3sLifecycleNode", "release_memory"]

_ENTITY_KINDS = ("publishers", "subscriptions", "services", "clients", "timers", "guards")


def release_memory() -> None:
    """Collect garbage, empty PyTorch's CUDA cache (when CUDA is in use) and trim the C heap."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    release_freed_memory()   # the node keeps freed blocks while running (host_memory)


def _cuda_memory_mb() -> Optional[Tuple[float, float]]:
    """(allocated, reserved) CUDA memory of this process in MiB, or None without CUDA in use."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.memory_allocated() / 2**20, torch.cuda.memory_reserved() / 2**20


def _transition(name: str) -> Callable:
    """Wrap a transition callback: an unexpected exception is logged (with its traceback) and
    returns ERROR, so that ``on_error`` releases the model (rclpy would swallow it silently)."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, state: LifecycleState) -> TransitionCallbackReturn:
            try:
                return method(self, state)
            except Exception as err:  # noqa: BLE001 - a failed transition must leave a defined state
                self.get_logger().error(f"{name} failed: {type(err).__name__}: {err}\n"
                                        f"{traceback.format_exc()}")
                return TransitionCallbackReturn.ERROR
        return wrapper
    return decorate


class Tv3sLifecycleNode(Tv3sNodeCore, LifecycleNode):
    """tv3s_node as a managed node (see the module docstring for the states)."""

    def __init__(self, **node_kwargs):
        self._configuring = False
        self.finished = False          # finalized: the spin loop ends, the process exits
        self._configured_entities: Dict[str, set] = {}
        self._configure_error: Optional[str] = None
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self._guard_change_state()
            self._init_core()
            # /diagnostics from the start (a plain publisher: it reports in every state).
            self._ensure_diagnostics(float(self.get_parameter("diagnostics_period_s").value))
        except BaseException:
            self.destroy_node()
            raise
        self.get_logger().info(
            f"lifecycle node {self.get_fully_qualified_name()} is unconfigured; configure loads the model, "
            "activate starts processing (e.g. ros2 lifecycle set "
            f"{self.get_fully_qualified_name()} configure)")

    def _guard_change_state(self) -> None:
        """A transition the current state does not have (activate while unconfigured) answers
        success=false; rclpy would raise out of the service callback and stop the node."""
        service = self._service_change_state
        handle = service.callback

        def change_state(request, response):
            try:
                return handle(request, response)
            except _rclpy.RCLError:
                transition = request.transition.label or f"id {request.transition.id}"
                self.get_logger().warning(f"refused transition {transition}: not possible from "
                                          f"{self.lifecycle_state}")
                response.success = False
                return response

        service.callback = change_state

    # ------------------------------------------------------------------ publishers
    def create_publisher(self, *args, **kwargs):
        """While configuring, every publisher is a lifecycle publisher: no output unless active.

        Publishers created at other times (rclpy's own, /diagnostics) stay plain publishers."""
        if getattr(self, "_configuring", False):
            return self.create_lifecycle_publisher(*args, **kwargs)
        return super().create_publisher(*args, **kwargs)

    # ------------------------------------------------------------------ state
    @property
    def lifecycle_state(self) -> str:
        """The current state's label (``unconfigured``, ``inactive``, ``active``, ``finalized``...)."""
        try:
            return str(self._state_machine.current_state[1])
        except AttributeError:   # during construction
            return "unconfigured"

    @property
    def model_loaded(self) -> bool:
        return self.engine is not None

    def _entities(self) -> Dict[str, set]:
        return {kind: set(getattr(self, kind)) for kind in _ENTITY_KINDS}

    # ------------------------------------------------------------------ transitions
    @_transition("configure")
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        before = self._entities()
        self._configuring = True
        try:
            self._configure()
        except ParameterError as err:
            return self._configure_failed(str(err), before)
        except Exception as err:  # noqa: BLE001 - weights, model, device: say why, stay unconfigured
            self.get_logger().debug(traceback.format_exc())
            return self._configure_failed(f"cannot load the model: {type(err).__name__}: {err}", before)
        finally:
            self._configuring = False
        after = self._entities()
        self._configured_entities = {kind: after[kind] - before[kind] for kind in _ENTITY_KINDS}
        self._configure_error = None
        e = self.engine
        self.get_logger().info(f"configured: preset {e.preset} ({e.num_classes} classes) on {e.device} "
                               f"{e.precision}, {len(self.cameras)} camera(s); inactive until activate")
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, why: str, before: Dict[str, set]) -> TransitionCallbackReturn:
        after = self._entities()
        self._configured_entities = {kind: after[kind] - before[kind] for kind in _ENTITY_KINDS}
        self._release()
        self._configure_error = why
        self.get_logger().error(f"configure failed, the node stays unconfigured: {why}")
        return TransitionCallbackReturn.FAILURE

    @_transition("activate")
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)     # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        if self._label_info_pub is not None:    # latched: late subscribers get it while active
            self._label_info_pub.publish(label_info_msg(self.engine.class_names, self.get_clock().now().to_msg()))
        self._subscribe_cameras()
        self.worker.start()                     # or resume after a deactivate
        self._log_ready()
        return TransitionCallbackReturn.SUCCESS

    @_transition("deactivate")
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing(state)
        self.get_logger().info("deactivated: not processing; the model stays loaded")
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self, state: LifecycleState) -> None:
        """Unsubscribe, pause the worker (a batch in progress is published), disable the publishers."""
        self._unsubscribe_cameras()
        if self.worker is not None:
            self.worker.pause()
        super().on_deactivate(state)

    @_transition("cleanup")
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info(f"cleaned up: model released (rss {process_rss_mb():.0f} MiB); unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            if state.label == "active":
                self._stop_processing(state)
            self._release()
        except Exception as err:  # noqa: BLE001 - shutting down whatever happens
            self.get_logger().error(f"shutdown: releasing failed: {type(err).__name__}: {err}")
        self.finished = True
        self.get_logger().info(f"shut down from {state.label}: finalized, exiting")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            if self._camera_subscriptions:
                self._stop_processing(state)
            self._release()
        except Exception as err:  # noqa: BLE001 - the node must end in a defined state
            self.get_logger().error(f"error processing: releasing failed: {type(err).__name__}: {err}")
        self.get_logger().error(f"a transition from {state.label} failed: model released, back to unconfigured")
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ release
    def _release(self) -> None:
        """Stop the worker, destroy what configure created, drop the model, free its memory."""
        if self.worker is not None:
            self.worker.stop()
        self._unsubscribe_cameras()
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        created = self._configured_entities
        for pub in created.get("publishers", ()):
            if isinstance(pub, LifecyclePublisher):
                self.destroy_lifecycle_publisher(pub)
            else:
                self.destroy_publisher(pub)
        for sub in created.get("subscriptions", ()):
            self.destroy_subscription(sub)
        for srv in created.get("services", ()):
            self.destroy_service(srv)
        for client in created.get("clients", ()):
            self.destroy_client(client)
        for timer in created.get("timers", ()):
            self.destroy_timer(timer)
        for guard in created.get("guards", ()):
            self.destroy_guard_condition(guard)
        self._configured_entities = {}
        self.worker = None
        self._reporter = None
        self._label_info_pub = None
        self.engine = None
        self.settings = None
        release_memory()

    def close(self) -> None:
        """Stop the worker and destroy the node (idempotent; SIGINT/SIGTERM in any state)."""
        if self.worker is not None:
            self.worker.stop()
        self.destroy_node()

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        state = self.lifecycle_state
        if self._reporter is None:
            statuses = [self._unconfigured_status()]
        else:
            statuses = self._reporter.build([c.health for c in self.cameras], self.engine.stats())
            if state != "active":
                for status in statuses[1:]:
                    status.level = DiagnosticStatus.STALE
                    status.message = f"{state}: not subscribed, not processing"
        statuses[0].values += self._lifecycle_values(state)
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = statuses
        self._diagnostics_pub.publish(msg)

    def _unconfigured_status(self) -> DiagnosticStatus:
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name().lstrip('/')}: model", hardware_id="")
        if self._configure_error:
            status.level = DiagnosticStatus.ERROR
            status.message = f"configure failed: {self._configure_error}"[:600]
        else:
            status.level, status.message = DiagnosticStatus.OK, "unconfigured: no model loaded"
        status.values = [KeyValue(key="rss_mb", value=f"{process_rss_mb():.1f}")]
        return status

    def _lifecycle_values(self, state: str) -> List[KeyValue]:
        values = [KeyValue(key="lifecycle_state", value=state),
                  KeyValue(key="model_loaded", value="true" if self.model_loaded else "false")]
        cuda = _cuda_memory_mb()
        if cuda is not None:
            values += [KeyValue(key="cuda_allocated_mb", value=f"{cuda[0]:.1f}"),
                       KeyValue(key="cuda_reserved_mb", value=f"{cuda[1]:.1f}")]
        return values
