"""Static checks of the files a real ROS install uses but these machines cannot run:
launch files (no `launch`/`launch_ros` here), the RViz config (no RViz) and the params file."""
from __future__ import annotations

import ast
import importlib.util
import py_compile
import sys
import types
from pathlib import Path

import pytest
import yaml

from tv3s_ros.ros.params import PARAMETER_NAMES, PARAMETERS

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PARAMS_YAML = REPO / "config" / "tv3s.yaml"
RVIZ_FILE = REPO / "config" / "tv3s.rviz"
NODE_PARAMS = set(PARAMETER_NAMES) | {"use_sim_time"}


# ---------------------------------------------------------------------------------------------
# launch files: every one compiles, names existing files and declared parameters only


def _parameter_dict_keys(tree: ast.AST):
    """String keys of the dict literals that end up in a Node's ``parameters``.

    Followed: dicts written inside ``parameters=...``, and dicts assigned to, stored into or
    appended to a variable that is passed as ``parameters=<name>`` (or named ``parameters``,
    ``params`` or ``overrides``).
    """
    containers = {"parameters", "params", "overrides"}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "parameters" and isinstance(node.value, ast.Name):
            containers.add(node.value.id)

    def dict_keys(expr):
        return [k.value for sub in ast.walk(expr) if isinstance(sub, ast.Dict)
                for k in sub.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]

    keys = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "parameters":
            keys += dict_keys(node.value)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in containers
                                                  for t in node.targets):
            keys += dict_keys(node.value)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                                                  and t.value.id in containers for t in node.targets):
            for t in node.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant):
                    keys.append(t.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("append", "extend", "update") and \
                isinstance(node.func.value, ast.Name) and node.func.value.id in containers:
            for arg in node.args:
                keys += dict_keys(arg)
    return keys


def _package_paths(tree: ast.AST):
    """Relative package paths a launch file names: os.path.join("config", "x.yaml") / "config/x.yaml"."""
    paths = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "join":
            parts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if len(parts) == len(node.args) and parts and parts[0] in ("config", "launch", "model", "rviz"):
                paths.append("/".join(parts))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.split("/")[0] in ("config", "rviz") and "." in node.value.split("/")[-1]:
            paths.append(node.value)
    return paths


def test_there_is_a_launch_file():
    assert (REPO / "launch" / "tv3s.launch.py") in LAUNCH_FILES


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles_and_names_existing_files_and_parameters(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    for rel in _package_paths(tree):
        assert (REPO / rel).is_file(), f"{path.name} names {rel}, which does not exist"
    keys = _parameter_dict_keys(tree)
    unknown = sorted(set(keys) - NODE_PARAMS)
    assert not unknown, f"{path.name} sets parameters tv3s_node does not declare: {unknown}"
    executables = [kw.value.value for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "executable"
                   for kw in [n] if isinstance(kw.value, ast.Constant)]
    for exe in executables:
        if exe.startswith("tv3s"):
            assert (REPO / "scripts" / exe).is_file(), f"{path.name} runs {exe}, not in scripts/"


class _Recorder:
    """Stand-in for launch / launch_ros classes: records constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _load_launch_module(monkeypatch, share: Path, values: dict, filename: str = "tv3s.launch.py"):
    """Import launch/<filename> against stub launch modules; LaunchConfiguration returns ``values``."""

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return values[self.name]

    stubs = {
        "launch": types.SimpleNamespace(LaunchDescription=_Recorder),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=_Recorder, LogInfo=_Recorder,
                                                OpaqueFunction=_Recorder, ExecuteProcess=_Recorder),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=_Recorder),
        "ament_index_python": types.SimpleNamespace(),
        "ament_index_python.packages": types.SimpleNamespace(get_package_share_directory=lambda pkg: str(share)),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("tv3s_launch", REPO / "launch" / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch_values(**given):
    values = {"params_file": "", "camera_topics": "", "camera_names": "", "weights": "", "namespace": "",
              "use_sim_time": "false", "rviz": "false", "log_level": "info", "respawn": "false",
              "respawn_delay": "2.0", "lifecycle": "false", "autostart": "true"}
    values.update(given)
    return values


def test_launch_arguments_and_node_parameters(monkeypatch):
    module = _load_launch_module(monkeypatch, REPO, _launch_values(
        camera_topics="/veh/front/image_raw, /veh/left/image_raw/compressed", weights="/data/w.pth",
        use_sim_time="true", namespace="perception"))
    description = module.generate_launch_description()
    declared = [a.args[0] for a in description.args[0] if a.args]
    assert {"params_file", "camera_topics", "namespace", "use_sim_time", "weights", "rviz"} <= set(declared)

    actions = module._launch_setup(context=None)
    assert len(actions) == 1
    node = actions[0].kwargs
    assert (node["package"], node["executable"], node["namespace"]) == ("tv3s_ros", "tv3s_node", "perception")
    params_file, overrides = node["parameters"]
    assert Path(params_file) == PARAMS_YAML
    assert overrides == {"use_sim_time": True, "camera_topics": ["/veh/front/image_raw", "/veh/left/image_raw/compressed"],
                         "weights": "/data/w.pth"}
    assert set(overrides) <= NODE_PARAMS


@pytest.mark.parametrize("name", ["tv3s.launch.py", "replay.launch.py"])
def test_launch_respawn_arguments(monkeypatch, name):
    """respawn / respawn_delay reach the node action (the node exits with code 3 after repeated
    engine failures; launch restarts it); off by default; a bad delay is refused."""
    values = _launch_values(bag="/data/drive", rate="1.0", delay="5.0", loop="false", node_name="tv3s")
    values["params_file"] = str(PARAMS_YAML)
    module = _load_launch_module(monkeypatch, REPO, values, name)
    description = module.generate_launch_description()
    declared = {a.args[0]: a.kwargs.get("default_value") for a in description.args[0] if a.args}
    assert declared["respawn"] == "false" and float(declared["respawn_delay"]) > 0

    def node_action(**given):
        module = _load_launch_module(monkeypatch, REPO, dict(values, **given), name)
        actions = module._launch_setup(context=None)
        nodes = [a for a in actions if a.kwargs.get("executable") == "tv3s_node"]
        assert len(nodes) == 1
        return nodes[0].kwargs

    node = node_action()
    assert (node["respawn"], node["respawn_delay"]) == (False, 2.0)
    node = node_action(respawn="true", respawn_delay="0.5")
    assert (node["respawn"], node["respawn_delay"]) == (True, 0.5)
    with pytest.raises(ValueError, match="respawn_delay"):
        node_action(respawn="true", respawn_delay="soon")


def test_launch_rviz_config_matches_the_run(monkeypatch):
    """rviz:=true writes a config showing input and overlay of exactly this run's cameras."""
    module = _load_launch_module(monkeypatch, REPO, _launch_values(
        camera_topics="/veh/front/image_raw,/veh/left/image_raw/compressed", namespace="perception", rviz="true"))
    node, rviz = module._launch_setup(context=None)
    assert rviz.kwargs["executable"] == "rviz2"
    config = Path(rviz.kwargs["arguments"][1])
    try:
        topics = _rviz_image_topics(config)
    finally:
        config.unlink()
    assert topics == ["/veh/front/image_raw", "/perception/tv3s_node/front/overlay",
                      "/veh/left/image_raw/compressed", "/perception/tv3s_node/left/overlay"]

    # Without camera_topics the params file decides (its default camera: front).
    module = _load_launch_module(monkeypatch, REPO, _launch_values(rviz="true"))
    config = Path(module._launch_setup(context=None)[1].kwargs["arguments"][1])
    try:
        assert _rviz_image_topics(config) == _rviz_image_topics(RVIZ_FILE)
    finally:
        config.unlink()


# ---------------------------------------------------------------------------------------------
# RViz config


def _rviz_image_topics(path: Path):
    config = yaml.safe_load(path.read_text())
    displays = config["Visualization Manager"]["Displays"]
    return [d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"]


def _default_params():
    return yaml.safe_load(PARAMS_YAML.read_text())["/**"]["ros__parameters"]


def test_shipped_rviz_config_shows_input_and_overlay_of_the_default_camera():
    from tv3s_ros.camera_names import resolve_camera_names
    from tv3s_ros.ros.rviz_config import camera_views, rviz_config_text

    params = _default_params()
    topics = params["camera_topics"]
    names = resolve_camera_names(topics)
    assert "overlay" in params["publish"]
    expected = []
    for name, topic in zip(names, topics):
        expected += [topic, f"/tv3s_node/{name}/overlay"]
    assert _rviz_image_topics(RVIZ_FILE) == expected
    # The shipped file is the generator's output (regenerate: python -m tv3s_ros.ros.rviz_config).
    assert RVIZ_FILE.read_text() == rviz_config_text(camera_views(topics))


def test_shipped_regions_example_and_its_rviz_config():
    """config/tv3s_regions.yaml parses into valid regions for its camera, and
    config/tv3s_regions.rviz is the generator's view of it: the overlay display names them."""
    from tv3s_ros.camera_names import resolve_camera_names
    from tv3s_ros.regions import parse_regions
    from tv3s_ros.ros.rviz_config import main as rviz_main

    params = yaml.safe_load((REPO / "config" / "tv3s_regions.yaml").read_text())["/**"]["ros__parameters"]
    names = resolve_camera_names(params["camera_topics"])
    regions = parse_regions(params["regions"], names)
    assert sorted(r.name for r in regions["front"]) == ["bottom_third", "ego_lane"]
    shipped = REPO / "config" / "tv3s_regions.rviz"
    displays = yaml.safe_load(shipped.read_text())["Visualization Manager"]["Displays"]
    assert [d["Name"] for d in displays] == ["front input",
                                             "front segmentation overlay + regions bottom_third, ego_lane"]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert rviz_main(["--params", str(REPO / "config" / "tv3s_regions.yaml")]) == 0
    assert shipped.read_text() == out.getvalue()   # regenerate with the command in the file's header


# ---------------------------------------------------------------------------------------------
# params file


def test_params_file_documents_every_parameter_and_only_declared_ones():
    data = yaml.safe_load(PARAMS_YAML.read_text())
    assert list(data) == ["/**"], "use '/**:' so the file also matches a namespaced or renamed node"
    params = data["/**"]["ros__parameters"]
    assert set(params) <= NODE_PARAMS, sorted(set(params) - NODE_PARAMS)
    # camera_names and allow_16bit_cameras have no value by default (rclpy cannot type an
    # empty list): documented in a comment.
    unset = {p.name for p in PARAMETERS if p.default is None}
    missing = {p.name for p in PARAMETERS} - set(params) - unset
    assert not missing, missing
    for name in unset:
        assert name in PARAMS_YAML.read_text(), name
    for spec in PARAMETERS:
        if spec.name in params and spec.default is not None:
            assert params[spec.name] == spec.default, f"{spec.name}: yaml {params[spec.name]!r} != {spec.default!r}"


@pytest.mark.ros
def test_params_file_loads_into_a_namespaced_node():
    """The file's types match the declarations, and '/**' reaches a node in a namespace."""
    import rclpy

    from tv3s_ros.ros.params import ParameterError, declare_parameters, read_settings

    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(PARAMS_YAML),
                                      "-p", "allow_random_weights:=true"])
    try:
        node = rclpy.create_node("tv3s_node", namespace="/vehicle_7", context=context)
        declare_parameters(node)
        settings = read_settings(node)
        assert settings.camera_topics == _default_params()["camera_topics"]
        assert settings.camera_names == ["front"]
        node.destroy_node()
    finally:
        context.try_shutdown()
    with pytest.raises(ParameterError):  # sanity: the same file without weights refuses to start
        context = rclpy.Context()
        rclpy.init(context=context, args=["--ros-args", "--params-file", str(PARAMS_YAML)])
        try:
            node = rclpy.create_node("tv3s_node", namespace="/vehicle_7", context=context)
            declare_parameters(node)
            read_settings(node)
        finally:
            node.destroy_node()
            context.try_shutdown()
