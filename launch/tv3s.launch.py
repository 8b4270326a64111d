"""Run tv3s_node on live cameras, optionally with RViz 2 showing input and overlay per camera.

Usage:
    ros2 launch tv3s_ros tv3s.launch.py weights:=/data/tv3s_b1_city.pth
    ros2 launch tv3s_ros tv3s.launch.py weights:=/data/tv3s_b1_city.pth rviz:=true \\
        camera_topics:=/sensing/camera/front/image_raw,/sensing/camera/left/image_raw/compressed
    ros2 launch tv3s_ros tv3s.launch.py params_file:=/path/to/my_tv3s.yaml namespace:=perception
    ros2 launch tv3s_ros tv3s.launch.py weights:=/data/tv3s_b1_city.pth lifecycle:=true autostart:=false

Arguments:
    params_file    node parameters (default: the package's config/tv3s.yaml; copy and edit it).
    camera_topics  comma-separated camera topics; empty keeps the params file's list.
    camera_names   comma-separated camera names, one per topic; empty derives them from the topics.
    weights        checkpoint path; empty keeps the params file's value.
    namespace      namespace of the node (outputs: /<namespace>/tv3s_node/<camera>/...).
    use_sim_time   true when playing a bag with --clock (default false).
    rviz           true also starts RViz 2 with a config written for this run's cameras
                   (input image and segmentation overlay of each; default false).
    log_level      node log level (default info).
    respawn        true restarts the node whenever it exits, e.g. after its FATAL exit (code 3)
                   on repeated engine failures (default false).
    respawn_delay  seconds to wait before a restart (default 2.0).
    lifecycle      true runs the managed (lifecycle) node, `tv3s_node --lifecycle`, as a launch_ros
                   LifecycleNode (default false: the plain node).
    autostart      with lifecycle:=true: true (default) configures the node whenever its process
                   starts (respawns included) and activates it whenever a configure succeeds;
                   false leaves it unconfigured for a lifecycle manager or `ros2 lifecycle set`.

The shipped config/tv3s.rviz shows the default camera (front) of the default params file; with
rviz:=true this launch file writes a config for the cameras actually configured instead (to a
temporary file) and falls back to the shipped one if that fails.
"""
import os
import tempfile

import yaml
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "tv3s_ros"
EXECUTABLE = "tv3s_node"
NODE_NAME = "tv3s_node"
# Files of the package's share directory used here (installed by CMakeLists.txt).
PARAMS_FILE = os.path.join("config", "tv3s.yaml")
RVIZ_FILE = os.path.join("config", "tv3s.rviz")

ARGUMENTS = {
    "params_file": ("", "Parameters YAML of the node (empty: the package's config/tv3s.yaml)."),
    "camera_topics": ("", "Comma-separated camera topics (empty: keep the params file's list)."),
    "camera_names": ("", "Comma-separated camera names, one per topic (empty: derived from the topics)."),
    "weights": ("", "Checkpoint path (empty: keep the params file's value)."),
    "namespace": ("", "Namespace of the node."),
    "use_sim_time": ("false", "Use /clock (bag playback with --clock)."),
    "rviz": ("false", "Also start RViz 2 showing input and overlay of each camera."),
    "log_level": ("info", "Log level of the node."),
    "respawn": ("false", "Restart the node when it exits (it exits with code 3 after repeated engine failures)."),
    "respawn_delay": ("2.0", "Seconds before a respawn."),
    "lifecycle": ("false", "Run the managed (lifecycle) node, tv3s_node --lifecycle (false: the plain node)."),
    "autostart": ("true", "With lifecycle:=true: configure at process start and activate after each successful "
                          "configure (false: stay unconfigured for a lifecycle manager)."),
}
LIFECYCLE_SWITCH = "--lifecycle"   # tv3s_node's command-line switch for the managed node


def _is_true(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "on")


def respawn_options(respawn: str, respawn_delay: str) -> dict:
    """``respawn`` / ``respawn_delay`` of the node action (a bad delay is an error, not a crash loop)."""
    try:
        delay = float(respawn_delay)
    except ValueError:
        raise ValueError(f"respawn_delay must be a number of seconds, got {respawn_delay!r}") from None
    if not delay >= 0.0:
        raise ValueError(f"respawn_delay must be >= 0 seconds, got {respawn_delay!r}")
    return {"respawn": _is_true(respawn), "respawn_delay": delay}


def split_list(text: str) -> list:
    """"/a, /b" or "[/a, /b]" -> ["/a", "/b"]; "" -> []."""
    return [t.strip().strip("'\"") for t in str(text).strip().strip("[]").split(",") if t.strip()]


def node_parameters(params_file: str, camera_topics: str, camera_names: str, weights: str,
                    use_sim_time: str) -> list:
    """The node's ``parameters``: the params file, then the launch arguments that were given."""
    overrides = {"use_sim_time": _is_true(use_sim_time)}
    if split_list(camera_topics):
        overrides["camera_topics"] = split_list(camera_topics)
    if split_list(camera_names):
        overrides["camera_names"] = split_list(camera_names)
    if weights.strip():
        overrides["weights"] = weights.strip()
    return [params_file, overrides]


def _file_parameters(params_file: str) -> dict:
    """The node's ros__parameters in ``params_file`` (keys /**, /**/tv3s_node, tv3s_node...)."""
    from tv3s_ros.ros.rviz_config import file_parameters

    try:
        return file_parameters(params_file)
    except (OSError, yaml.YAMLError):
        return {}


def rviz_config_for_run(params_file: str, camera_topics: str, camera_names: str, namespace: str) -> str:
    """Write an RViz config for this run's cameras; returns its path."""
    from tv3s_ros.ros.rviz_config import camera_views, region_names, rviz_config_text

    from_file = _file_parameters(params_file)
    topics = split_list(camera_topics) or list(from_file.get("camera_topics", []))
    names = split_list(camera_names) or list(from_file.get("camera_names", []) or [])
    views = camera_views(topics, names, namespace, NODE_NAME)
    # Overlay displays name the regions outlined in them (the params file's `regions`).
    regions = region_names(str(from_file.get("regions", "") or ""), [view[0] for view in views])
    text = rviz_config_text(views, regions)
    handle, path = tempfile.mkstemp(prefix="tv3s_", suffix=".rviz")
    with os.fdopen(handle, "w") as f:
        f.write(text)
    return path


def lifecycle_node_actions(node_options: dict, autostart: bool) -> list:
    """The managed node as a launch_ros LifecycleNode; with ``autostart``, configure it whenever its
    process starts (a respawn too) and activate it whenever a configure succeeds."""
    # Imported here: the plain node's launch needs none of these.
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.event_handlers import OnProcessStart
    from launch.events import matches_action
    from launch_ros.actions import LifecycleNode
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState
    from lifecycle_msgs.msg import Transition

    node = LifecycleNode(arguments=[LIFECYCLE_SWITCH], **node_options)
    if not autostart:
        return [node]

    def change_state(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

    return [
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                               goal_state="inactive",
                                               entities=[change_state(Transition.TRANSITION_ACTIVATE)])),
        RegisterEventHandler(OnProcessStart(target_action=node,
                                            on_start=[change_state(Transition.TRANSITION_CONFIGURE)])),
        node,
    ]


def _launch_setup(context, *args, **kwargs):
    share = get_package_share_directory(PACKAGE)
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    params_file = arg["params_file"] or os.path.join(share, PARAMS_FILE)

    node_options = dict(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=arg["namespace"],
        parameters=node_parameters(params_file, arg["camera_topics"], arg["camera_names"], arg["weights"],
                                   arg["use_sim_time"]),
        ros_arguments=["--log-level", arg["log_level"]],
        output="screen",
        emulate_tty=True,
        **respawn_options(arg["respawn"], arg["respawn_delay"]),
    )
    if _is_true(arg["lifecycle"]):
        actions = lifecycle_node_actions(node_options, _is_true(arg["autostart"]))
    else:
        actions = [Node(**node_options)]
    if _is_true(arg["rviz"]):
        try:
            rviz_config = rviz_config_for_run(params_file, arg["camera_topics"], arg["camera_names"],
                                              arg["namespace"])
        except Exception as err:  # noqa: BLE001 - RViz is a convenience: fall back, never block the node
            rviz_config = os.path.join(share, RVIZ_FILE)
            actions.append(LogInfo(msg=f"tv3s: using {rviz_config} ({err})"))
        actions.append(Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", rviz_config],
            parameters=[{"use_sim_time": _is_true(arg["use_sim_time"])}],
            output="screen",
        ))
    return actions


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, (default, text) in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_launch_setup)])
