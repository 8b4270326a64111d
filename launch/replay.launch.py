"""Live replay of a recorded drive through tv3s_node, on simulated time.

Plays a bag with ``ros2 bag play --clock`` and runs ``tv3s_node`` with ``use_sim_time:=true``,
so stamps, the gap reset and diagnostics follow the recording's clock, not the wall clock.
With ``loop:=true`` the bag starts over when it ends; the node sees time go backwards and
resets the state of each camera (reset reason ``time_backwards``, visible as
``frames_since_reset = 0`` in ``~/<camera>/coverage``).

The node is named ``tv3s`` (``node_name``) so its outputs have the same names as the bags
written by ``tv3s-bag`` (``/tv3s/<camera>/labels``, ``color``, ``overlay``, ``confidence``,
``coverage``): a live replay and an offline run can be compared topic by topic. Use
``node_name:=tv3s_node`` to get the names of ``tv3s.launch.py`` and ``config/tv3s.rviz``.

Live replay keeps only the newest frame per camera, as on the vehicle: when the model is
slower than the bag, frames are skipped (counted in ``skipped_frames`` and /diagnostics).
To process every frame, use the offline tool instead (``tv3s-bag INPUT OUTPUT``) or slow
the playback down with ``rate:=0.25``.

Usage:
    ros2 launch tv3s_ros replay.launch.py bag:=/data/drive_0042 weights:=/data/tv3s_b1_city.pth
    ros2 launch tv3s_ros replay.launch.py bag:=/data/drive_0042 loop:=true rate:=0.5 \\
        camera_topics:=/cam/front/image_raw,/cam/left/image_raw/compressed \\
        params_file:=/path/to/my_tv3s.yaml

Arguments:
    bag            rosbag2 directory (or file) to play. Required.
    params_file    node parameters (default: the package's config/tv3s.yaml).
    weights        checkpoint path; empty keeps the params file's value.
    camera_topics  comma-separated camera topics; empty keeps the params file's list.
    camera_names   comma-separated camera names, one per topic; empty derives them.
    loop           true: play the bag over and over (default false).
    rate           playback rate factor (default 1.0).
    delay          seconds to wait before playback starts (and before each loop), so the
                   node has loaded its model and subscribed before the first frame
                   (default 5.0; must be > 0).
    namespace      namespace for the node (default none).
    node_name      node name (default tv3s: outputs under /tv3s/<camera>/...).
    respawn        true restarts the node whenever it exits, e.g. after its FATAL exit (code 3)
                   on repeated engine failures (default false).
    respawn_delay  seconds to wait before a restart (default 2.0).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "tv3s_ros"
DEFAULT_PARAMS = os.path.join("config", "tv3s.yaml")


def _is_true(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def respawn_options(respawn: str, respawn_delay: str) -> dict:
    """``respawn`` / ``respawn_delay`` of the node action (a bad delay is an error, not a crash loop)."""
    try:
        delay = float(respawn_delay)
    except ValueError:
        raise ValueError(f"respawn_delay must be a number of seconds, got {respawn_delay!r}") from None
    if not delay >= 0.0:
        raise ValueError(f"respawn_delay must be >= 0 seconds, got {respawn_delay!r}")
    return {"respawn": _is_true(respawn), "respawn_delay": delay}


def _topic_list(text: str) -> list:  # also used for camera names
    """"/a, /b" or "[/a, /b]" -> ["/a", "/b"]."""
    return [t.strip().strip("'\"") for t in text.strip().strip("[]").split(",") if t.strip()]


def _launch_setup(context, *args, **kwargs):
    bag = LaunchConfiguration("bag").perform(context)
    rate = LaunchConfiguration("rate").perform(context)
    delay = LaunchConfiguration("delay").perform(context)
    topics = _topic_list(LaunchConfiguration("camera_topics").perform(context))
    names = _topic_list(LaunchConfiguration("camera_names").perform(context))
    weights = LaunchConfiguration("weights").perform(context).strip()

    play = ["ros2", "bag", "play", bag, "--clock", "--rate", rate, "--delay", delay]
    if _is_true(LaunchConfiguration("loop").perform(context)):
        play.append("--loop")

    # The params file first, then what was given on the command line (later entries win).
    overrides = {"use_sim_time": True}
    if topics:
        overrides["camera_topics"] = topics
    if names:
        overrides["camera_names"] = names
    if weights:
        overrides["weights"] = weights
    parameters = [LaunchConfiguration("params_file").perform(context), overrides]
    node = Node(
        package=PACKAGE,
        executable="tv3s_node",
        name=LaunchConfiguration("node_name").perform(context),
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=parameters,
        output="screen",
        emulate_tty=True,
        **respawn_options(LaunchConfiguration("respawn").perform(context),
                          LaunchConfiguration("respawn_delay").perform(context)),
    )
    return [node, ExecuteProcess(cmd=play, output="screen")]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), DEFAULT_PARAMS)
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory or file to play"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="tv3s_node parameters file"),
        DeclareLaunchArgument("weights", default_value="",
                              description="checkpoint path (empty: params file)"),
        DeclareLaunchArgument("camera_topics", default_value="",
                              description="comma-separated camera topics (empty: params file)"),
        DeclareLaunchArgument("camera_names", default_value="",
                              description="comma-separated camera names (empty: from topics)"),
        DeclareLaunchArgument("loop", default_value="false",
                              description="true: play the bag in a loop"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate factor"),
        DeclareLaunchArgument("delay", default_value="5.0",
                              description="seconds before playback starts (model loading)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("node_name", default_value="tv3s",
                              description="node name (tv3s: the topic names of tv3s-bag)"),
        DeclareLaunchArgument("respawn", default_value="false",
                              description="restart the node when it exits (code 3: repeated engine failures)"),
        DeclareLaunchArgument("respawn_delay", default_value="2.0", description="seconds before a respawn"),
        OpaqueFunction(function=_launch_setup),
    ])
