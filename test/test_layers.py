"""The package's layers, enforced from the import statements (every one, including the lazy
imports inside functions): a module imports only its own layer's allowed peers and the
layers below it. The layer picture is in docs/ARCHITECTURE.md."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tv3s_ros"

# Lowest first. A unit is a top-level module or subpackage of tv3s_ros.
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("model", ("model",)),
    ("pipeline", ("outputs", "camera_names", "camera_model", "image_codec", "image_encode", "gpu_decode",
                  "preprocess", "postprocess", "streams", "regions", "host_memory")),
    ("engine", ("engine",)),
    ("applications", ("ros", "msg", "bag", "data", "eval", "train")),
    ("tools", ("tools",)),
]
# Imports between units of one layer. The pipeline's small modules use each other freely;
# the applications only as listed (the ROS layer and the ROS-free ones never meet).
PEERS: Dict[str, Set[str]] = {
    **{unit: set(LAYERS[1][1]) for unit in LAYERS[1][1]},
    "ros": {"msg"},
    "msg": set(),
    "bag": set(),
    "data": {"bag"},        # the synthetic world also writes rosbags
    "eval": {"data"},
    "train": {"data", "eval"},
}
# The ROS-free part: everything but the ROS layer and the tools. rosbags (pure Python) is fine.
ROS_PACKAGES = ("rclpy", "rosidl_runtime_py", "sensor_msgs", "std_msgs", "std_srvs", "diagnostic_msgs",
                "builtin_interfaces", "rcl_interfaces", "lifecycle_msgs", "vision_msgs", "launch",
                "launch_ros", "cv_bridge")
ROS_USERS = {"ros", "msg", "tools"}

LAYER_OF = {unit: index for index, (_, units) in enumerate(LAYERS) for unit in units}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package_dir: Path = PACKAGE) -> List[Tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved; for
    ``from tv3s_ros import x`` the module ``tv3s_ros.x``."""
    module = _module_name(path, package_dir)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "tv3s_ros":
                found += [(node.lineno, f"tv3s_ros.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _sources(package: Path = PACKAGE) -> List[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _sources()} - {""}
    assert units <= set(LAYER_OF), f"add {sorted(units - set(LAYER_OF))} to LAYERS (and docs/ARCHITECTURE.md)"


def layer_violations(package: Path = PACKAGE) -> List[str]:
    problems = []
    for path in _sources(package):
        source = _unit(_module_name(path, package))
        if not source:
            continue
        for line, target in _imports(path, package):
            if not target.startswith("tv3s_ros."):
                continue
            unit = _unit(target)
            if unit == source:
                continue
            here, there = LAYER_OF[source], LAYER_OF.get(unit)
            allowed = there is not None and (there < here or (there == here and unit in PEERS.get(source, ())))
            if not allowed:
                problems.append(f"{path.relative_to(package.parent)}:{line}: {source} "
                                f"({LAYERS[here][0]}) imports {target}")
    return problems


def test_imports_follow_the_layers():
    problems = layer_violations()
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_core_imports_no_ros():
    problems = []
    for path in _sources():
        if _unit(_module_name(path)) in ROS_USERS:
            continue
        for line, target in _imports(path):
            if target.split(".")[0] in ROS_PACKAGES or target.startswith("tv3s_ros.msg"):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target}")
    assert not problems, "ROS imports outside the ROS layer:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, statement", [
    ("model/planted.py", "from ..postprocess import Postprocessor"),          # relative, upwards
    ("engine/planted.py", "def f():\n    from tv3s_ros.ros import node"),    # lazy, inside a function
    ("bag/planted.py", "import tv3s_ros.ros.params"),                          # between applications
    ("ros/planted.py", "from tv3s_ros import bag"),                             # ROS layer -> bag
    ("streams.py", "from tv3s_ros.engine import Engine"),                      # pipeline -> engine
])
def test_a_planted_wrong_import_is_reported(tmp_path, source, statement):
    package = tmp_path / "tv3s_ros"
    for unit in ("model", "engine", "bag", "ros"):
        (package / unit).mkdir(parents=True)
        (package / unit / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / source).write_text(statement + "\n")
    assert layer_violations(package) == [
        f"tv3s_ros/{source}:{statement.count(chr(10)) + 1}: {source.split('/')[0].removesuffix('.py')} "
        f"({LAYERS[LAYER_OF[source.split('/')[0].removesuffix('.py')]][0]}) imports "
        f"{_imports(package / source, package)[0][1]}"]
