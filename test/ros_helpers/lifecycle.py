"""Driving a lifecycle node from the test process: lifecycle_msgs ``~/change_state`` and
``~/get_state`` service calls, and the node's /diagnostics node status."""
from __future__ import annotations

from typing import Dict, Optional

from ros_helpers.graph import Probe

# lifecycle_msgs/msg/Transition ids by the labels `ros2 lifecycle set` takes.
TRANSITIONS = {"configure": 1, "cleanup": 2, "activate": 3, "deactivate": 4,
               "unconfigured_shutdown": 5, "inactive_shutdown": 6, "active_shutdown": 7}


def _call(probe: Probe, srv_type, service: str, request, timeout: float):
    return probe.call_service(srv_type, service, request, timeout)


def change_state(probe: Probe, node: str, transition: str, timeout: float = 60.0) -> bool:
    """Request ``transition`` (a key of TRANSITIONS) of ``node`` (its full name); the response's success."""
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request()
    request.transition.id = TRANSITIONS[transition]
    return bool(_call(probe, ChangeState, f"{node}/change_state", request, timeout).success)


def get_state(probe: Probe, node: str, timeout: float = 20.0) -> str:
    """The label of ``node``'s current state (``unconfigured``, ``inactive``, ``active``...)."""
    from lifecycle_msgs.srv import GetState

    return _call(probe, GetState, f"{node}/get_state", GetState.Request(), timeout).current_state.label


def node_status(probe: Probe, node: str, after: int = 0) -> Optional[object]:
    """The newest ``<node>: model`` status in /diagnostics among messages from index ``after`` on."""
    name = f"{node.lstrip('/')}: model"
    for msg in reversed(probe.received("/diagnostics")[after:]):
        for status in msg.status:
            if status.name == name:
                return status
    return None


def status_values(status) -> Dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def wait_node_status(probe: Probe, node: str, timeout: float = 20.0, **expected: str):
    """Wait for a fresh node status whose values include ``expected`` (e.g. model_loaded="false")."""
    start = len(probe.received("/diagnostics"))

    def matching():
        status = node_status(probe, node, start)
        if status is None:
            return None
        values = status_values(status)
        return status if all(values.get(k) == v for k, v in expected.items()) else None

    return probe.wait_for(matching, timeout, f"a /diagnostics status of {node} with {expected}")
