"""Multi-process ROS graph helpers for the node tests.

- :class:`NodeProcess`: ``tv3s_node`` started as its own process (the console script of the
  venv, as a user runs it), its log captured to a file.
- :class:`Probe`: the test's own rclpy node (private context, spun in a thread): publishes
  camera frames and /clock, subscribes to the node's outputs and /diagnostics, calls services.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
NODE_EXE = Path(sys.executable).parent / "tv3s_node"


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class NodeProcess:
    """``tv3s_node --ros-args ...`` in a child process; ``stop()`` sends SIGINT and checks the exit."""

    def __init__(self, log_path: Path, params: Dict[str, object], namespace: str = "",
                 extra_args: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None,
                 node_args: Optional[List[str]] = None):
        # node_args: tv3s_node's own options (before --ros-args), e.g. ["--lifecycle"].
        args = [str(NODE_EXE), *(node_args or []), "--ros-args"]
        if namespace:
            args += ["-r", f"__ns:={namespace}"]
        for name, value in params.items():
            args += ["-p", f"{name}:={_param_text(value)}"]
        args += list(extra_args or [])
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        child_env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
        child_env.update(env or {})
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=child_env,
                                     cwd=str(REPO))
        self.namespace = namespace

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0, count: int = 1) -> str:
        """Wait until ``text`` occurs ``count`` times in the log (fails fast if the node died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if log.count(text) >= count:
                return log
            if self.proc.poll() is not None:
                raise AssertionError(f"tv3s_node exited with {self.proc.returncode}:\n{log}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the node log after {timeout} s:\n{self.log()}")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        raise AssertionError("no VmRSS")

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> int:
        """Stop the node with ``sig``; returns the exit code (the log is kept for asserts).

        10 s: ros2 launch escalates to SIGTERM 5 s after SIGINT and to SIGKILL 5 s later, so a
        node that takes longer is killed on a vehicle (an idle test node stops in about 0.5 s).
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"tv3s_node did not stop within {timeout} s:\n{self.log()}")
        self._log.close()
        return self.proc.returncode


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


class Probe:
    """The test's ROS node: records every message of the subscribed topics.

    Messages are stored per topic in arrival order; :meth:`wait_for` polls a predicate.
    """

    def __init__(self, name: str = "tv3s_probe"):
        self._clients: dict = {}   # service name -> client (see call_service)
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.messages: Dict[str, list] = defaultdict(list)
        self._publishers: Dict[str, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while not self._stop.is_set() and self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, Exception):  # noqa: BLE001 - shutting down
            pass

    def subscribe(self, msg_type, topic: str, qos=None) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = qos or QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)

        def keep(msg, topic=topic):
            with self._lock:
                self.messages[topic].append((time.time_ns(), msg))

        self.node.create_subscription(msg_type, topic, keep, qos)

    def received(self, topic: str) -> list:
        with self._lock:
            return [m for _, m in self.messages[topic]]

    def received_with_times(self, topic: str) -> list:
        """``[(wall clock ns at receipt, msg), ...]``."""
        with self._lock:
            return list(self.messages[topic])

    def clear(self, topic: Optional[str] = None) -> None:
        with self._lock:
            if topic is None:
                self.messages.clear()
            else:
                self.messages[topic].clear()

    def publisher(self, msg_type, topic: str, qos=None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if topic not in self._publishers:
            qos = qos or QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self._publishers[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self._publishers[topic]

    def publish(self, topic: str, msg) -> None:
        self.publisher(type(msg), topic).publish(msg)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.01)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_for_subscribers(self, topic: str, count: int = 1, timeout: float = 20.0) -> None:
        pub = self._publishers[topic]
        self.wait_for(lambda: pub.get_subscription_count() >= count, timeout, f"a subscriber on {topic}")

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 20.0) -> None:
        self.wait_for(lambda: self.node.count_publishers(topic) >= count, timeout, f"a publisher on {topic}")

    def call_service(self, srv_type, service: str, request, timeout: float = 20.0):
        """Call ``service`` and return its response. One client per service, kept: Fast DDS drops a
        response ("failed to send response (timeout)") when the request arrives before the server
        has matched the client's response reader, and wait_for_service only sees the request side,
        so a new client waits a moment after the service shows up."""
        client = self._clients.get(service)
        if client is None:
            client = self.node.create_client(srv_type, service)
            assert client.wait_for_service(timeout_sec=timeout), f"service {service} not available"
            time.sleep(1.0)
            self._clients[service] = client
        future = client.call_async(request)
        self.wait_for(future.done, timeout, f"response of {service}")
        return future.result()

    def call_trigger(self, service: str, timeout: float = 20.0):
        from std_srvs.srv import Trigger

        return self.call_service(Trigger, service, Trigger.Request(), timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def diagnostics_probe(name: str) -> Probe:
    """A probe node subscribed to /diagnostics (close it when done)."""
    from diagnostic_msgs.msg import DiagnosticArray

    probe = Probe(name)
    probe.subscribe(DiagnosticArray, "/diagnostics")
    return probe
