"""Static check of launch/tv3s.launch.py's lifecycle arguments (no launch / launch_ros here):
the module runs against recording stand-ins for the launch classes, as test_ros_static.py does.

lifecycle:=false keeps the plain Node; lifecycle:=true gives a launch_ros LifecycleNode running
``tv3s_node --lifecycle`` with the plain node's options; autostart:=true configures it at every
process start (respawns included) and activates it after each configure; autostart:=false
leaves it unconfigured.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "tv3s.launch.py"


class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _recorder(kind: str):
    return type(kind, (_Recorder,), {})


def _load(monkeypatch, **given):
    values = {"params_file": "", "camera_topics": "/veh/front/image_raw", "camera_names": "", "weights": "/w.pth",
              "namespace": "perception", "use_sim_time": "false", "rviz": "false", "log_level": "info",
              "respawn": "true", "respawn_delay": "2.0", "lifecycle": "false", "autostart": "true"}
    values.update(given)

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return values[self.name]

    matches_action = _recorder("matches_action")
    stubs = {
        "launch": types.SimpleNamespace(LaunchDescription=_Recorder),
        "launch.actions": types.SimpleNamespace(
            DeclareLaunchArgument=_recorder("DeclareLaunchArgument"), LogInfo=_recorder("LogInfo"),
            OpaqueFunction=_recorder("OpaqueFunction"), EmitEvent=_recorder("EmitEvent"),
            RegisterEventHandler=_recorder("RegisterEventHandler")),
        "launch.event_handlers": types.SimpleNamespace(OnProcessStart=_recorder("OnProcessStart")),
        "launch.events": types.SimpleNamespace(matches_action=matches_action),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=_recorder("Node"), LifecycleNode=_recorder("LifecycleNode")),
        "launch_ros.event_handlers": types.SimpleNamespace(OnStateTransition=_recorder("OnStateTransition")),
        "launch_ros.events": types.SimpleNamespace(),
        "launch_ros.events.lifecycle": types.SimpleNamespace(ChangeState=_recorder("ChangeState")),
        "ament_index_python": types.SimpleNamespace(),
        "ament_index_python.packages": types.SimpleNamespace(get_package_share_directory=lambda pkg: str(REPO)),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("tv3s_launch_lifecycle", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kind(action) -> str:
    return type(action).__name__


def _transition_of(emit) -> int:
    assert _kind(emit) == "EmitEvent"
    event = emit.kwargs["event"]
    assert _kind(event) == "ChangeState"
    return event.kwargs["transition_id"]


def test_lifecycle_arguments_are_declared(monkeypatch):
    module = _load(monkeypatch)
    declared = {a.args[0]: a.kwargs["default_value"] for a in module.generate_launch_description().args[0]
                if _kind(a) == "DeclareLaunchArgument"}
    assert declared["lifecycle"] == "false"     # the plain node stays the default
    assert declared["autostart"] == "true"


def test_plain_node_by_default(monkeypatch):
    actions = _load(monkeypatch)._launch_setup(context=None)
    assert [_kind(a) for a in actions] == ["Node"]
    assert "arguments" not in actions[0].kwargs


@pytest.mark.parametrize("autostart", ["true", "false"])
def test_lifecycle_node_and_autostart(monkeypatch, autostart):
    from lifecycle_msgs.msg import Transition

    from tv3s_ros.ros.node import LIFECYCLE_SWITCH

    plain = _load(monkeypatch)._launch_setup(context=None)[0]
    actions = _load(monkeypatch, lifecycle="true", autostart=autostart)._launch_setup(context=None)
    nodes = [a for a in actions if _kind(a) == "LifecycleNode"]
    assert len(nodes) == 1 and not [a for a in actions if _kind(a) == "Node"]
    node = nodes[0]
    # tv3s_node --lifecycle, with every option of the plain node (name, namespace, parameters, respawn...)
    assert node.kwargs.pop("arguments") == [LIFECYCLE_SWITCH] == ["--lifecycle"]
    assert node.kwargs == plain.kwargs
    assert node.kwargs["respawn"] is True

    handlers = [a.args[0] if a.args else a.kwargs["event_handler"] for a in actions
                if _kind(a) == "RegisterEventHandler"]
    if autostart == "false":
        assert actions == [node]
        return
    # Handlers are registered before the node starts (so its first start is seen).
    assert actions.index(node) == len(actions) - 1
    by_kind = {_kind(h): h for h in handlers}
    assert set(by_kind) == {"OnProcessStart", "OnStateTransition"}
    on_start = by_kind["OnProcessStart"].kwargs
    assert on_start["target_action"] is node
    assert [_transition_of(e) for e in on_start["on_start"]] == [Transition.TRANSITION_CONFIGURE]
    on_inactive = by_kind["OnStateTransition"].kwargs
    assert on_inactive["target_lifecycle_node"] is node
    assert (on_inactive["start_state"], on_inactive["goal_state"]) == ("configuring", "inactive")
    assert [_transition_of(e) for e in on_inactive["entities"]] == [Transition.TRANSITION_ACTIVATE]
    for emit in on_start["on_start"] + on_inactive["entities"]:
        matcher = emit.kwargs["event"].kwargs["lifecycle_node_matcher"]
        assert matcher.args == (node,)       # matches_action(node): only this node changes state
